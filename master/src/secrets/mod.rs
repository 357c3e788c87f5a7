//! Secrets: values a build needs (tokens, passwords) that the cluster file
//! names but never holds.
//!
//! Steps refer to a secret as `${secret:NAME}` ([`refs`]). The master
//! resolves references through the `[secrets]` providers of the cluster
//! file, in order — environment variables of the master's process, or files
//! in a directory (as Docker and Kubernetes mount secrets) — just before it
//! sends a command to a worker. The value travels in that command only: it
//! is never written to the database, and the step definition that is stored
//! or shown keeps the reference. The step's log is masked on its way to the
//! database by a [`Masker`] that knows every value the build resolved.
//!
//! The API is small on purpose, so anything else that needs a token (e.g.
//! a status reporter) resolves it the same way: [`Secrets::resolve`].

pub mod masker;
pub use crate::config::secret_refs as refs;
pub mod step;

use std::path::PathBuf;

pub use masker::{MASK, Masker};
pub use refs::RefError;
pub use step::{ResolvedStep, resolve_step};

use crate::config::{SecretProvider, SecretsConfig};

/// Why a secret could not be resolved. Messages name the secret and where
/// it was looked for, never its value.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("secret {name:?} is not set (looked in: {tried})")]
    Missing { name: String, tried: String },
    #[error("secret {name:?}: cannot read {path}: {reason}")]
    Unreadable {
        name: String,
        path: PathBuf,
        reason: String,
    },
    #[error(transparent)]
    Reference(#[from] RefError),
}

impl SecretError {
    /// The secret at fault, when one is named.
    pub fn name(&self) -> Option<&str> {
        match self {
            SecretError::Missing { name, .. } | SecretError::Unreadable { name, .. } => Some(name),
            SecretError::Reference(_) => None,
        }
    }
}

/// The secret providers of a cluster file. Cheap to build; nothing is read
/// until a secret is asked for, so a rotated value is picked up by the next
/// command.
#[derive(Clone, Debug, Default)]
pub struct Secrets {
    providers: Vec<SecretProvider>,
}

impl Secrets {
    pub fn new(config: &SecretsConfig) -> Secrets {
        Secrets {
            providers: config.providers.clone(),
        }
    }

    /// The value of secret `name` from the first provider that has it.
    pub fn resolve(&self, name: &str) -> Result<String, SecretError> {
        if !refs::valid_name(name) {
            return Err(RefError::BadName(name.to_owned()).into());
        }
        let mut tried = Vec::new();
        for p in &self.providers {
            match p {
                SecretProvider::Env { prefix } => {
                    let var = format!("{prefix}{name}");
                    if let Some(v) = std::env::var_os(&var) {
                        return v.into_string().map_err(|_| SecretError::Unreadable {
                            name: name.to_owned(),
                            path: PathBuf::from(format!("${var}")),
                            reason: "not valid UTF-8".into(),
                        });
                    }
                    tried.push(format!("environment variable {var}"));
                }
                SecretProvider::Files { path } => {
                    let file = PathBuf::from(path).join(name);
                    match std::fs::read(&file) {
                        Ok(bytes) => return file_value(name, &file, bytes),
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                            tried.push(format!("file {}", file.display()));
                        }
                        Err(e) => {
                            return Err(SecretError::Unreadable {
                                name: name.to_owned(),
                                path: file,
                                reason: e.to_string(),
                            });
                        }
                    }
                }
            }
        }
        if tried.is_empty() {
            tried.push("no [secrets] provider is configured".into());
        }
        Err(SecretError::Missing {
            name: name.to_owned(),
            tried: tried.join(", "),
        })
    }

    /// `text` with every `${secret:NAME}` replaced by its value; each value
    /// used is added to `used` (for masking).
    pub fn substitute(&self, text: &str, used: &mut Vec<String>) -> Result<String, SecretError> {
        refs::substitute(text, |name| {
            let v = self.resolve(name)?;
            if !used.contains(&v) {
                used.push(v.clone());
            }
            Ok(v)
        })
    }
}

/// A secret file's content: UTF-8, without the one line break editors and
/// `kubectl create secret --from-file` often leave at the end.
fn file_value(name: &str, file: &std::path::Path, bytes: Vec<u8>) -> Result<String, SecretError> {
    let mut s = String::from_utf8(bytes).map_err(|_| SecretError::Unreadable {
        name: name.to_owned(),
        path: file.to_owned(),
        reason: "not valid UTF-8".into(),
    })?;
    if s.ends_with('\n') {
        s.pop();
        if s.ends_with('\r') {
            s.pop();
        }
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secrets(providers: Vec<SecretProvider>) -> Secrets {
        Secrets::new(&SecretsConfig { providers })
    }

    #[test]
    fn files_and_environment_in_order() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("deploy_token"), "from-file\n").unwrap();
        std::fs::write(dir.path().join("TH"), "file-wins").unwrap();
        let files = SecretProvider::Files {
            path: dir.path().display().to_string(),
        };
        // `PATH` is set in every test process: prefix `PA`, name `TH`.
        let env = SecretProvider::Env {
            prefix: "PA".into(),
        };
        let path = std::env::var("PATH").unwrap();
        let s = secrets(vec![files.clone(), env.clone()]);
        assert_eq!(s.resolve("deploy_token").unwrap(), "from-file");
        assert_eq!(s.resolve("TH").unwrap(), "file-wins");
        let s = secrets(vec![env, files]);
        assert_eq!(s.resolve("TH").unwrap(), path);
        assert_eq!(s.resolve("deploy_token").unwrap(), "from-file");
        let err = s.resolve("nowhere").unwrap_err();
        assert_eq!(err.name(), Some("nowhere"));
        let msg = err.to_string();
        assert!(msg.contains("\"nowhere\""), "{msg}");
        assert!(msg.contains("environment variable PAnowhere"), "{msg}");
        assert!(msg.contains("/nowhere"), "{msg}");
        // A name cannot climb out of the directory.
        assert!(s.resolve("../x").is_err());

        let mut used = Vec::new();
        let text = s
            .substitute(
                "Bearer ${secret:deploy_token} ${secret:deploy_token}",
                &mut used,
            )
            .unwrap();
        assert_eq!(text, "Bearer from-file from-file");
        assert_eq!(used, ["from-file"]);
        let err = s.substitute("${secret:absent}", &mut used).unwrap_err();
        assert!(!err.to_string().contains("from-file"));
    }

    #[test]
    fn without_providers_every_secret_is_missing() {
        let err = secrets(Vec::new()).resolve("x").unwrap_err();
        assert!(err.to_string().contains("no [secrets] provider"), "{err}");
    }
}
