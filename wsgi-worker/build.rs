//! Embedding links libpython; record its directory as an rpath so the test binaries find it
//! without LD_LIBRARY_PATH (pyenv and venv layouts keep it outside the loader's default paths).
fn main() {
    let cfg = pyo3_build_config::get();
    if let Some(dir) = &cfg.lib_dir {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
    println!("cargo:rerun-if-env-changed=PYO3_PYTHON");
}
