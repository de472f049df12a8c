//! `config_load`: see `lb_userspace::fuzzing::config_load` (the invariants it asserts).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| lb_userspace::fuzzing::config_load(data));
