use which::which;

/// Building a BPF object needs bpf-linker; say how to get it instead of a linker error.
fn main() {
    println!("cargo:rerun-if-env-changed=PATH");
    if which("bpf-linker").is_err() {
        panic!(
            "bpf-linker not found on PATH: run `cargo xtask setup` (installs bpf-linker 0.10.4 and rust-src for nightly)"
        );
    }
}
