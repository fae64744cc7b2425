//! sessiongate's configuration.
//!
//! One TOML file, every key defaulted ([`file`]). Loading parses it into the file model, then
//! [`validate`]s it into [`Config`], the form the gateway runs on. Validation collects every
//! problem with its key path rather than stopping at the first.

mod egress;
mod endpoints;
pub mod file;
mod identity;
mod masked;
mod model;
mod streams;
mod suspend;
mod validate;

pub use egress::{
    Egress, EgressCredential, EgressMode, FileCredential, FileEgress, Rule, ValueFrom, Verdict,
};
pub use endpoints::{AllowedPorts, FilePort, FileSessionEndpoints, SessionEndpoints};
pub use identity::{FileIdentity, Identity};
pub use masked::masked;
pub use model::*;
pub use streams::{FileResumableStreams, ResumableStreams};
pub use suspend::Suspend;
pub use validate::valid_region;

use std::fmt;
use std::path::Path;

/// One problem in a config file, pointing at the key that holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted key path, e.g. `runtimes[0].backend.endpoints[1].http`; `.` for the whole file.
    pub path: String,
    /// 1-based line in the file, where the TOML parser gives one.
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{} (line {line}): {}", self.path, self.message),
            None => write!(f, "{}: {}", self.path, self.message),
        }
    }
}

/// Every problem found in one config file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl ConfigErrors {
    fn one(path: impl Into<String>, line: Option<usize>, message: impl Into<String>) -> Self {
        Self(vec![ConfigError {
            path: path.into(),
            line,
            message: message.into(),
        }])
    }
}

/// Reads and validates the config file at `path`. Relative paths inside it are relative to
/// its directory.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors::one(".", None, format!("cannot read {}: {e}", path.display()))
    })?;
    let base = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    validate::validate(parse_file(&text)?, base)
}

/// Reads a SigV4 credentials file on its own (what a reload of it needs).
pub fn load_credentials(path: &Path) -> Result<Vec<Credential>, ConfigErrors> {
    let mut errs = validate::Errors::default();
    let creds = validate::load_credentials(&mut errs, "credentials_file", path);
    match creds {
        Some(c) if errs.0.is_empty() => Ok(c),
        _ => Err(ConfigErrors(errs.0)),
    }
}

/// Parses and validates config text.
pub fn parse(text: &str) -> Result<Config, ConfigErrors> {
    let file = parse_file(text)?;
    Config::try_from(file)
}

/// Parses config text into the file model: TOML syntax and types only.
pub fn parse_file(text: &str) -> Result<file::FileConfig, ConfigErrors> {
    parse_toml(text)
}

/// Parses TOML text into any serde model, errors with key path and line.
pub(crate) fn parse_toml<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, ConfigErrors> {
    let line_of = |span: Option<std::ops::Range<usize>>| {
        span.map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1)
    };
    let de = toml::de::Deserializer::parse(text)
        .map_err(|e| ConfigErrors::one(".", line_of(e.span()), e.message().trim()))?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.inner();
        ConfigErrors::one(path, line_of(inner.span()), inner.message().trim())
    })
}

impl Config {
    /// The embedded default: every key at its default, one `process` runtime named `default`
    /// that spawns `sessiongate agent` per session.
    pub fn embedded_default() -> Config {
        // The defaults are valid by construction; `validate` has a unit test that proves it.
        Config::try_from(file::FileConfig::default())
            .unwrap_or_else(|e| unreachable!("the embedded default config is invalid: {e}"))
    }
}

#[cfg(test)]
mod tests;
