//! Config validation (stub).
use super::{Config, ConfigError};
use std::path::Path;

/// Load and validate.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        problems: vec![format!("{}: cannot read: {e}", path.display())],
    })?;
    toml::from_str(&text).map_err(|e| ConfigError {
        problems: vec![format!("{}: {e}", path.display())],
    })
}
