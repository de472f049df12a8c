//! Fuzz targets for every parser Portico owns, one function per target: `fuzz/` runs each under
//! libFuzzer (`cargo xtask fuzz`), and the unit tests below replay every file of
//! `fuzz/corpus/<target>/` (seeds and minimized finds) and `fuzz/artifacts/<target>/` through
//! the same function on stable, so a fixed crash stays fixed. A target panics when an
//! invariant breaks; returning is a pass.
mod config;
mod http1;
mod proxy;
mod static_files;

pub use config::config_load;
pub use http1::{chunked_body, request_head};
pub use proxy::{forwarded, location_rewrite};
pub use static_files::{conditional, range, static_path};

/// A target: the whole input, panicking when an invariant breaks.
pub type Target = fn(&[u8]);

/// Every target by name (the name of its `fuzz/fuzz_targets/<name>.rs` and corpus folder).
pub const TARGETS: &[(&str, Target)] = &[
    ("request_head", request_head),
    ("chunked_body", chunked_body),
    ("static_path", static_path),
    ("range", range),
    ("conditional", conditional),
    ("forwarded", forwarded),
    ("location_rewrite", location_rewrite),
    ("config_load", config_load),
];

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::TARGETS;

    fn files(dir: &Path) -> Vec<PathBuf> {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Vec::new();
        };
        let mut out: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file())
            .collect();
        out.sort();
        out
    }

    /// Runs every corpus and artifact file of `name` through its target; the corpus must have
    /// seeds. A failing file is named before its panic.
    fn replay(name: &str) {
        let (_, target) = TARGETS
            .iter()
            .find(|(n, _)| *n == name)
            .expect("a target of that name");
        let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
        let seeds = files(&fuzz.join("corpus").join(name));
        assert!(!seeds.is_empty(), "fuzz/corpus/{name}/ has no seeds");
        for file in seeds
            .iter()
            .chain(&files(&fuzz.join("artifacts").join(name)))
        {
            let data = std::fs::read(file).expect("readable corpus file");
            eprintln!("replay {name}: {}", file.display());
            target(&data);
        }
    }

    #[test]
    fn replay_request_head() {
        replay("request_head");
    }

    #[test]
    fn replay_chunked_body() {
        replay("chunked_body");
    }

    #[test]
    fn replay_static_path() {
        replay("static_path");
    }

    #[test]
    fn replay_range() {
        replay("range");
    }

    #[test]
    fn replay_conditional() {
        replay("conditional");
    }

    #[test]
    fn replay_forwarded() {
        replay("forwarded");
    }

    #[test]
    fn replay_location_rewrite() {
        replay("location_rewrite");
    }

    #[test]
    fn replay_config_load() {
        replay("config_load");
    }

    #[test]
    fn every_target_has_a_fuzz_binary() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/fuzz_targets");
        for (name, _) in TARGETS {
            assert!(dir.join(format!("{name}.rs")).is_file(), "{name}");
        }
    }
}
