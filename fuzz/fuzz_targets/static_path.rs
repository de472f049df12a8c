//! `static_path`: see `lb_userspace::fuzzing::static_path` (the invariants it asserts).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| lb_userspace::fuzzing::static_path(data));
