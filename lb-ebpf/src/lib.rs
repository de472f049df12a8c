#![no_std]
// Only the binaries (one per program) carry code; this library target keeps cargo's
// build-dependency tracking working for aya-build.
