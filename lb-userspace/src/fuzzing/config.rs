//! `config_load`: a configuration file's text through the lenient parser and `validate()`.
use crate::config::Config;

/// Any text: problems come back as errors (never a panic), and a configuration that passes
/// survives the trip to a cell (JSON in `PORTICO_CELL_CONFIG`) unchanged.
pub fn config_load(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (mut cfg, errors) = Config::parse_lenient(text, "fuzz.toml");
    for e in &errors {
        assert!(!e.message.is_empty(), "{e:?}");
    }
    if cfg.validate().is_err() || !errors.is_empty() {
        return;
    }
    let json = serde_json::to_string(&cfg).expect("a valid configuration serializes");
    let back: Config = serde_json::from_str(&json)
        .unwrap_or_else(|e| panic!("the cell cannot read its configuration: {e}\n{json}"));
    assert_eq!(back, cfg, "{json}");
}
