//! The cluster file: one TOML file that every master and the gateway load.
//!
//! Layers, lowest first: built-in defaults, the file, then environment
//! variables `FLOTILLA_<SECTION>__<KEY>` (e.g. `FLOTILLA_DATABASE__URL`), then
//! [`ClusterConfig::validate`]. Every error names the file and the key, and
//! for TOML errors the line, so the CLI can exit 78 with one clear message.

mod duration;
mod model;
mod reporters;
mod scheduling;
pub mod secret_refs;
mod secrets;

use std::path::{Path, PathBuf};

pub use duration::Dur;
pub use model::*;
pub use reporters::*;

/// Why a cluster file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: environment variable {var}: {message}")]
    Env {
        path: PathBuf,
        var: String,
        message: String,
    },
    #[error("{path}: key `{key}`: {message}")]
    Invalid {
        path: PathBuf,
        key: String,
        message: String,
    },
}

const ENV_PREFIX: &str = "FLOTILLA_";
const SECTIONS: &[&str] = &[
    "database",
    "cluster",
    "gateway",
    "api",
    "hooks",
    "retention",
];

impl ClusterConfig {
    /// Loads `path`, applies environment overrides from the process
    /// environment, and validates.
    pub fn load(path: &Path) -> Result<ClusterConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text, path, std::env::vars())
    }

    /// Parses `text` (which came from `path`) with the given environment.
    pub fn from_toml(
        text: &str,
        path: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<ClusterConfig, ConfigError> {
        // Parse the text as written first: its errors carry line and column.
        let parsed: ClusterConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: as_written(&e),
        })?;
        let overrides = env_overrides(env);
        let config = if overrides.is_empty() {
            parsed
        } else {
            apply_overrides(text, path, &overrides)?
        };
        config.validate_secrets(path, text)?;
        config.validate(path)?;
        Ok(config)
    }

    /// Defaults only, as if the file were empty (used by `db` commands given `--database-url`).
    pub fn with_database_url(url: &str) -> ClusterConfig {
        let mut c = ClusterConfig::default();
        c.database.url = url.to_owned();
        c
    }

    /// Checks what serde cannot: references between sections, sane timings.
    pub fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |key: String, message: String| ConfigError::Invalid {
            path: path.to_owned(),
            key,
            message,
        };
        let t = &self.cluster;
        if t.heartbeat_interval.get().is_zero() {
            return Err(invalid(
                "cluster.heartbeat_interval".into(),
                "must be more than 0".into(),
            ));
        }
        if t.master_timeout.get() < t.heartbeat_interval.get() * 2 {
            return Err(invalid(
                "cluster.master_timeout".into(),
                format!(
                    "must be at least twice cluster.heartbeat_interval ({})",
                    t.heartbeat_interval
                ),
            ));
        }
        // A renewal that fails is retried at the next heartbeat, so one
        // missed renewal never costs a claim; the lease also outlasts a
        // master's own fence by a whole `master_timeout`.
        if t.claim_lease.get() < t.claim_renew_interval.get() * 2 + t.master_timeout.get() {
            return Err(invalid(
                "cluster.claim_lease".into(),
                format!(
                    "must be at least 2 x cluster.claim_renew_interval ({}) + cluster.master_timeout ({})",
                    t.claim_renew_interval, t.master_timeout
                ),
            ));
        }
        if t.claim_renew_interval.get().is_zero() || t.poll_interval.get().is_zero() {
            return Err(invalid(
                "cluster.claim_renew_interval".into(),
                "claim_renew_interval and poll_interval must be more than 0".into(),
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for (i, w) in self.workers.iter().enumerate() {
            if w.name.trim().is_empty() {
                return Err(invalid(
                    format!("workers[{i}].name"),
                    "must not be empty".into(),
                ));
            }
            if !seen.insert(w.name.as_str()) {
                return Err(invalid(
                    format!("workers[{i}].name"),
                    format!("worker {:?} is defined twice", w.name),
                ));
            }
            if w.password.is_some() == w.password_env.is_some() {
                return Err(invalid(
                    format!("workers[{i}]"),
                    format!(
                        "worker {:?} needs exactly one of `password` or `password_env`",
                        w.name
                    ),
                ));
            }
        }
        let mut builders = std::collections::HashSet::new();
        for (i, b) in self.builders.iter().enumerate() {
            if b.name.trim().is_empty() {
                return Err(invalid(
                    format!("builders[{i}].name"),
                    "must not be empty".into(),
                ));
            }
            if !builders.insert(b.name.as_str()) {
                return Err(invalid(
                    format!("builders[{i}].name"),
                    format!("builder {:?} is defined twice", b.name),
                ));
            }
            for w in &b.workers {
                if !seen.contains(w.as_str()) {
                    return Err(invalid(
                        format!("builders[{i}].workers"),
                        format!(
                            "builder {:?} names worker {w:?}, which no [[workers]] entry defines",
                            b.name
                        ),
                    ));
                }
            }
            for (j, s) in b.steps.iter().enumerate() {
                if s.kind == "shell" && s.command.is_empty() {
                    return Err(invalid(
                        format!("builders[{i}].steps[{j}].command"),
                        "must not be empty".into(),
                    ));
                }
            }
        }
        let mut schedulers = std::collections::HashSet::new();
        for (i, s) in self.schedulers.iter().enumerate() {
            if !schedulers.insert(s.name.as_str()) {
                return Err(invalid(
                    format!("schedulers[{i}].name"),
                    format!("scheduler {:?} is defined twice", s.name),
                ));
            }
            if !SCHEDULER_KINDS.contains(&s.kind.as_str()) {
                return Err(invalid(
                    format!("schedulers[{i}].kind"),
                    format!(
                        "unknown kind {:?}; expected one of {}",
                        s.kind,
                        SCHEDULER_KINDS.join(", ")
                    ),
                ));
            }
            for b in &s.builders {
                if !builders.contains(b.as_str()) {
                    return Err(invalid(
                        format!("schedulers[{i}].builders"),
                        format!(
                            "scheduler {:?} names builder {b:?}, which no [[builders]] entry defines",
                            s.name
                        ),
                    ));
                }
            }
        }
        self.validate_scheduling(path)?;
        self.validate_reporters(path)?;
        self.validate_secrets(path, "")
    }

    pub fn builder(&self, name: &str) -> Option<&BuilderConfig> {
        self.builders.iter().find(|b| b.name == name)
    }

    pub fn worker(&self, name: &str) -> Option<&WorkerConfig> {
        self.workers.iter().find(|w| w.name == name)
    }
}

impl WorkerConfig {
    /// The password a master checks this worker against, read from the
    /// file or from the named environment variable.
    pub fn resolve_password(&self) -> Result<String, String> {
        if let Some(p) = &self.password {
            return Ok(p.clone());
        }
        let var = self.password_env.as_deref().unwrap_or_default();
        std::env::var(var).map_err(|_| {
            format!(
                "worker {:?}: environment variable {var} (its password_env) is not set",
                self.name
            )
        })
    }
}

/// `(section, key, raw value, variable name)` for every `FLOTILLA_<SECTION>__<KEY>`.
fn env_overrides(
    env: impl IntoIterator<Item = (String, String)>,
) -> Vec<(String, String, String, String)> {
    let mut out = Vec::new();
    for (var, value) in env {
        let Some(rest) = var.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        let Some((section, key)) = rest.split_once("__") else {
            continue;
        };
        let section = section.to_ascii_lowercase();
        if SECTIONS.contains(&section.as_str()) && !key.is_empty() {
            out.push((section, key.to_ascii_lowercase(), value, var));
        }
    }
    out.sort();
    out
}

fn apply_overrides(
    text: &str,
    path: &Path,
    overrides: &[(String, String, String, String)],
) -> Result<ClusterConfig, ConfigError> {
    let mut doc: toml::Table = toml::from_str(text).map_err(|e| ConfigError::Parse {
        path: path.to_owned(),
        message: as_written(&e),
    })?;
    for (section, key, raw, _) in overrides {
        // A value that reads as TOML (a number, a list) is taken as such; anything else is a string.
        let value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(raw.clone()));
        let table = doc
            .entry(section.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        match table {
            toml::Value::Table(t) => {
                t.insert(key.clone(), value);
            }
            _ => {
                return Err(ConfigError::Invalid {
                    path: path.to_owned(),
                    key: section.clone(),
                    message: "must be a table".into(),
                });
            }
        }
    }
    toml::Value::Table(doc)
        .try_into()
        .map_err(|e: toml::de::Error| {
            let message = one_line(&e.to_string());
            let var = overrides
                .iter()
                .find(|(_, key, _, _)| message.contains(&format!("`{key}`")))
                .map(|o| o.3.clone())
                .unwrap_or_else(|| {
                    overrides
                        .iter()
                        .map(|o| o.3.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                });
            ConfigError::Env {
                path: path.to_owned(),
                var,
                message,
            }
        })
}

/// A TOML error about the file as the parser writes it: the line and column,
/// the offending line with a caret under it, then what is wrong. Its line
/// breaks are kept, since the caret only points at the column on its own line.
fn as_written(e: &toml::de::Error) -> String {
    e.to_string().trim_end().to_owned()
}

/// An error about environment overrides has no file text to show: one line.
fn one_line(s: &str) -> String {
    s.lines()
        .map(str::trim)
        .filter(|l| {
            !l.is_empty()
                && *l != "|"
                && !l.starts_with('^')
                && !l.chars().all(|c| c == '|' || c == '^' || c == ' ')
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests;
