//! `request_head`: see `lb_userspace::fuzzing::request_head` (the invariants it asserts).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| lb_userspace::fuzzing::request_head(data));
