//! `chunked_body`: see `lb_userspace::fuzzing::chunked_body` (the invariants it asserts).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| lb_userspace::fuzzing::chunked_body(data));
