//! `location_rewrite`: see `lb_userspace::fuzzing::location_rewrite` (the invariants it asserts).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| lb_userspace::fuzzing::location_rewrite(data));
