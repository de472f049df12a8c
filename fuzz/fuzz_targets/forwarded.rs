//! `forwarded`: see `lb_userspace::fuzzing::forwarded` (the invariants it asserts).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| lb_userspace::fuzzing::forwarded(data));
