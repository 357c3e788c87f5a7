//! Validation of `[secrets]` and of the `${secret:NAME}` references in
//! builders and steps: each reference must read well, and a file that uses
//! one must configure a provider. Errors name the key and, when the file's
//! text is at hand, its line.

use std::path::Path;

use super::secret_refs as refs;
use super::{ClusterConfig, ConfigError, SecretProvider};

/// The 1-based line of the first occurrence of `needle` in `text`.
fn line_of(text: &str, needle: &str) -> Option<usize> {
    let at = text.find(needle)?;
    Some(text[..at].matches('\n').count() + 1)
}

impl ClusterConfig {
    /// Every place of the file that may hold a secret reference, as
    /// (key, value).
    fn secret_fields(&self) -> Vec<(String, &str)> {
        let mut out = Vec::new();
        for (i, b) in self.builders.iter().enumerate() {
            for (k, v) in &b.env {
                out.push((format!("builders[{i}].env.{k}"), v.as_str()));
            }
            for (j, s) in b.steps.iter().enumerate() {
                let key = format!("builders[{i}].steps[{j}]");
                for (n, a) in s.command.iter().enumerate() {
                    out.push((format!("{key}.command[{n}]"), a.as_str()));
                }
                for (k, v) in &s.env {
                    out.push((format!("{key}.env.{k}"), v.as_str()));
                }
                if let Some(r) = &s.repository {
                    out.push((format!("{key}.repository"), r.as_str()));
                }
            }
        }
        out
    }

    /// Checks `[secrets]` and the references to it. `text` is the file as
    /// written (empty when unknown), to name the line at fault.
    pub fn validate_secrets(&self, path: &Path, text: &str) -> Result<(), ConfigError> {
        let invalid = |key: String, needle: &str, message: String| {
            let message = match line_of(text, needle).filter(|_| !needle.is_empty()) {
                Some(line) => format!("line {line}: {message}"),
                None => message,
            };
            ConfigError::Invalid {
                path: path.to_owned(),
                key,
                message,
            }
        };
        for (i, p) in self.secrets.providers.iter().enumerate() {
            if let SecretProvider::Files { path: dir } = p
                && dir.trim().is_empty()
            {
                return Err(invalid(
                    format!("secrets.providers[{i}].path"),
                    "[[secrets.providers]]",
                    "a `files` provider needs the directory that holds the secret files".into(),
                ));
            }
        }
        for (key, value) in self.secret_fields() {
            let names = refs::names(value)
                .map_err(|e| invalid(key.clone(), value, format!("secret reference: {e}")))?;
            if let Some(name) = names.first()
                && self.secrets.providers.is_empty()
            {
                return Err(invalid(
                    key,
                    &format!("${{secret:{name}}}"),
                    format!(
                        "refers to secret {name:?}, but [secrets] has no provider to look it up in"
                    ),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::{ClusterConfig, SecretProvider};

    const FILE: &str = r#"
[[workers]]
name = "w1"
password = "pw"

[[builders]]
name = "deploy"
workers = ["w1"]
  [[builders.steps]]
  name = "push"
  command = ["sh", "-c", "push --token ${secret:deploy_token}"]
  env = { API_KEY = "${secret:api.key}" }
"#;

    fn load(text: &str) -> Result<ClusterConfig, String> {
        ClusterConfig::from_toml(text, Path::new("cluster.toml"), Vec::new())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn providers_load_in_order() {
        let text = format!(
            "{FILE}\n[[secrets.providers]]\nkind = \"files\"\npath = \"/run/secrets\"\n\n\
             [[secrets.providers]]\nkind = \"env\"\nprefix = \"CI_\"\n"
        );
        let c = load(&text).unwrap();
        assert_eq!(
            c.secrets.providers,
            vec![
                SecretProvider::Files {
                    path: "/run/secrets".into()
                },
                SecretProvider::Env {
                    prefix: "CI_".into()
                },
            ]
        );
    }

    #[test]
    fn a_reference_without_a_provider_is_named_with_its_line() {
        let err = load(FILE).unwrap_err();
        assert!(err.contains("builders[0].steps[0].command[2]"), "{err}");
        assert!(err.contains("line 11"), "{err}");
        assert!(err.contains("deploy_token"), "{err}");
    }

    #[test]
    fn a_bad_reference_is_named_with_its_line() {
        let text = format!(
            "{}\n[secrets]\nproviders = [{{ kind = \"env\" }}]\n",
            FILE.replace("${secret:api.key}", "${secret:api key}")
        );
        let err = load(&text).unwrap_err();
        assert!(err.contains("builders[0].steps[0].env.API_KEY"), "{err}");
        assert!(err.contains("line 12"), "{err}");
        assert!(err.contains("bad secret name"), "{err}");
    }

    #[test]
    fn an_unknown_provider_kind_or_key_is_named_with_its_line() {
        let text = format!("{FILE}\n[[secrets.providers]]\nkind = \"vault\"\n");
        let err = load(&text).unwrap_err();
        assert!(err.contains("vault"), "{err}");
        assert!(err.contains("line 15"), "{err}");
        let text = format!("{FILE}\n[[secrets.providers]]\nkind = \"env\"\nprefx = \"A\"\n");
        let err = load(&text).unwrap_err();
        assert!(err.contains("prefx"), "{err}");
        let text = format!("{FILE}\n[[secrets.providers]]\nkind = \"files\"\npath = \"\"\n");
        let err = load(&text).unwrap_err();
        assert!(err.contains("secrets.providers[0].path"), "{err}");
    }
}
