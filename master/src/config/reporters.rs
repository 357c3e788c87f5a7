//! `[[reporters]]`: where build starts and ends are reported — commit
//! statuses on GitHub or GitLab, or a signed JSON document to any URL. The
//! delivery itself lives in `crate::reporters`; this is the shape of the
//! section and its checks.

use std::collections::BTreeSet;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::duration::Dur;
use super::{ClusterConfig, ConfigError};

/// The reporter kinds the cluster file may name.
pub const REPORTER_KINDS: &[&str] = &["github", "gitlab", "http"];

/// The build events a reporter may want.
pub const REPORTER_EVENTS: &[&str] = &["started", "finished"];

pub const GITHUB_API: &str = "https://api.github.com";
pub const GITLAB_API: &str = "https://gitlab.com/api/v4";

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ReporterConfig {
    /// Names the reporter in the database, the API and the metrics; unique.
    pub name: String,
    /// `github`, `gitlab` or `http`.
    pub kind: String,
    /// Builders whose builds are reported; empty means every builder.
    #[serde(default)]
    pub builders: Vec<String>,
    /// `started`, `finished` (default both).
    #[serde(default = "all_events")]
    pub events: Vec<String>,
    /// github/gitlab: the environment variable holding the API token.
    #[serde(default)]
    pub token_env: Option<String>,
    /// github/gitlab: the API token as a secret of `[secrets]` (instead of
    /// `token_env`).
    #[serde(default)]
    pub token_secret: Option<String>,
    /// github/gitlab: the API's base URL (GitHub Enterprise, self-hosted GitLab).
    #[serde(default)]
    pub api_url: Option<String>,
    /// github/gitlab: the status context (GitLab: its name); `{builder}`
    /// and `{branch}` are replaced. Default `{builder}`.
    #[serde(default = "default_context")]
    pub context: String,
    /// http: where the JSON documents are posted.
    #[serde(default)]
    pub url: Option<String>,
    /// http: the environment variable holding the HMAC-SHA256 key; the
    /// body's signature goes in `X-Flotilla-Signature: sha256=<hex>`.
    #[serde(default)]
    pub secret_env: Option<String>,
    /// http: the HMAC-SHA256 key as a secret of `[secrets]` (instead of
    /// `secret_env`).
    #[serde(default)]
    pub signing_secret: Option<String>,
    /// The dashboard's public address, for links to a build's page
    /// (default `http://` + `api.listen`).
    #[serde(default)]
    pub dashboard_url: Option<String>,
    /// Longest wait for one HTTP request (capped at a quarter of
    /// `cluster.master_timeout`).
    #[serde(default = "default_timeout")]
    pub timeout: Dur,
    /// A delivery still failing this long after its event is given up.
    #[serde(default = "default_horizon")]
    pub retry_horizon: Dur,
}

fn all_events() -> Vec<String> {
    REPORTER_EVENTS.iter().map(|s| (*s).to_owned()).collect()
}

fn default_context() -> String {
    "{builder}".to_owned()
}

fn default_timeout() -> Dur {
    Dur::secs(10)
}

fn default_horizon() -> Dur {
    Dur::secs(3600)
}

impl ReporterConfig {
    /// The API base URL without a trailing slash.
    pub fn api_base(&self) -> String {
        let default = if self.kind == "gitlab" {
            GITLAB_API
        } else {
            GITHUB_API
        };
        self.api_url
            .as_deref()
            .unwrap_or(default)
            .trim_end_matches('/')
            .to_owned()
    }

    /// Whether builds of `builder` are reported.
    pub fn wants_builder(&self, builder: &str) -> bool {
        self.builders.is_empty() || self.builders.iter().any(|b| b == builder)
    }

    /// Whether `event` (`started` / `finished`) is reported.
    pub fn wants_event(&self, event: &str) -> bool {
        self.events.iter().any(|e| e == event)
    }

    /// The context for a build of `builder` on `branch`.
    pub fn context_for(&self, builder: &str, branch: &str) -> String {
        self.context
            .replace("{builder}", builder)
            .replace("{branch}", branch)
    }
}

impl ClusterConfig {
    pub fn reporter(&self, name: &str) -> Option<&ReporterConfig> {
        self.reporters.iter().find(|r| r.name == name)
    }

    /// The checks of `[[reporters]]`.
    pub(super) fn validate_reporters(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |key: String, message: String| ConfigError::Invalid {
            path: path.to_owned(),
            key,
            message,
        };
        let builders: BTreeSet<&str> = self.builders.iter().map(|b| b.name.as_str()).collect();
        let mut names = BTreeSet::new();
        for (i, r) in self.reporters.iter().enumerate() {
            let key = |k: &str| format!("reporters[{i}].{k}");
            if r.name.is_empty() || r.name.len() > 100 {
                return Err(invalid(key("name"), "must be 1 to 100 characters".into()));
            }
            if !names.insert(r.name.as_str()) {
                return Err(invalid(
                    key("name"),
                    format!("two reporters are named {:?}", r.name),
                ));
            }
            if !REPORTER_KINDS.contains(&r.kind.as_str()) {
                return Err(invalid(
                    key("kind"),
                    format!(
                        "unknown kind {:?}; expected one of {}",
                        r.kind,
                        REPORTER_KINDS.join(", ")
                    ),
                ));
            }
            for b in &r.builders {
                if !builders.contains(b.as_str()) {
                    return Err(invalid(
                        key("builders"),
                        format!(
                            "reporter {:?} names builder {b:?}, which no [[builders]] entry defines",
                            r.name
                        ),
                    ));
                }
            }
            for e in &r.events {
                if !REPORTER_EVENTS.contains(&e.as_str()) {
                    return Err(invalid(
                        key("events"),
                        format!(
                            "unknown event {e:?}; expected {}",
                            REPORTER_EVENTS.join(", ")
                        ),
                    ));
                }
            }
            if r.timeout.get().is_zero() {
                return Err(invalid(key("timeout"), "must be more than 0".into()));
            }
            let url_ok = |u: &str| u.starts_with("http://") || u.starts_with("https://");
            if r.kind == "http" {
                match r.url.as_deref() {
                    Some(u) if url_ok(u) => {}
                    Some(u) => {
                        return Err(invalid(
                            key("url"),
                            format!("{u:?} is not an http:// or https:// URL"),
                        ));
                    }
                    None => {
                        return Err(invalid(key("url"), "an http reporter needs a url".into()));
                    }
                }
                for k in ["token_env", "token_secret", "api_url"] {
                    let set = match k {
                        "token_env" => r.token_env.is_some(),
                        "token_secret" => r.token_secret.is_some(),
                        _ => r.api_url.is_some(),
                    };
                    if set {
                        return Err(invalid(
                            key(k),
                            "applies to github and gitlab reporters only".into(),
                        ));
                    }
                }
            } else {
                match (r.token_env.as_deref(), r.token_secret.as_deref()) {
                    (Some(v), None) if !v.is_empty() => {}
                    (None, Some(_)) => {}
                    (Some(_), Some(_)) => {
                        return Err(invalid(
                            key("token_secret"),
                            "set token_env or token_secret, not both".into(),
                        ));
                    }
                    _ => {
                        return Err(invalid(
                            key("token_env"),
                            format!("a {} reporter needs token_env or token_secret", r.kind),
                        ));
                    }
                }
                if let Some(u) = r.api_url.as_deref().filter(|u| !url_ok(u)) {
                    return Err(invalid(
                        key("api_url"),
                        format!("{u:?} is not an http:// or https:// URL"),
                    ));
                }
                for (k, set) in [
                    ("url", r.url.is_some()),
                    ("secret_env", r.secret_env.is_some()),
                    ("signing_secret", r.signing_secret.is_some()),
                ] {
                    if set {
                        return Err(invalid(key(k), "applies to http reporters only".into()));
                    }
                }
            }
            if r.secret_env.is_some() && r.signing_secret.is_some() {
                return Err(invalid(
                    key("signing_secret"),
                    "set secret_env or signing_secret, not both".into(),
                ));
            }
            for (k, name) in [
                ("token_secret", r.token_secret.as_deref()),
                ("signing_secret", r.signing_secret.as_deref()),
            ] {
                let Some(name) = name else { continue };
                if !super::secret_refs::valid_name(name) {
                    return Err(invalid(key(k), format!("{name:?} is not a secret name")));
                }
                if self.secrets.providers.is_empty() {
                    return Err(invalid(
                        key(k),
                        "names a secret, but no [[secrets.providers]] is configured".into(),
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    const BUILDER: &str = "[[builders]]\nname = \"unit\"\n\n";

    fn load(reporters: &str) -> Result<ClusterConfig, ConfigError> {
        ClusterConfig::from_toml(
            &format!("{BUILDER}{reporters}"),
            Path::new("cluster.toml"),
            std::iter::empty::<(String, String)>(),
        )
    }

    fn error_of(reporters: &str) -> String {
        load(reporters).unwrap_err().to_string()
    }

    #[test]
    fn a_github_reporter_has_its_defaults() {
        let c =
            load("[[reporters]]\nname = \"gh\"\nkind = \"github\"\ntoken_env = \"T\"\n").unwrap();
        let r = c.reporter("gh").unwrap();
        assert_eq!(r.api_base(), GITHUB_API);
        assert_eq!(r.context_for("unit", "main"), "unit");
        assert!(r.wants_builder("unit") && r.wants_event("started") && r.wants_event("finished"));
    }

    #[test]
    fn credentials_may_come_from_the_secret_providers() {
        let c = load(
            "[[secrets.providers]]\nkind = \"files\"\npath = \"/run/secrets\"\n\n\
             [[reporters]]\nname = \"gh\"\nkind = \"github\"\ntoken_secret = \"gh_token\"\n\n\
             [[reporters]]\nname = \"hook\"\nkind = \"http\"\nurl = \"http://h\"\nsigning_secret = \"hook_key\"\n",
        )
        .unwrap();
        assert_eq!(
            c.reporter("gh").unwrap().token_secret.as_deref(),
            Some("gh_token")
        );
        assert_eq!(
            c.reporter("hook").unwrap().signing_secret.as_deref(),
            Some("hook_key")
        );
    }

    #[test]
    fn mistakes_name_their_key() {
        for (toml, key) in [
            ("name = \"x\"\nkind = \"jira\"\n", "reporters[0].kind"),
            (
                "name = \"x\"\nkind = \"github\"\n",
                "reporters[0].token_env",
            ),
            ("name = \"x\"\nkind = \"http\"\n", "reporters[0].url"),
            (
                "name = \"x\"\nkind = \"http\"\nurl = \"ftp://h\"\n",
                "reporters[0].url",
            ),
            (
                "name = \"x\"\nkind = \"gitlab\"\ntoken_env = \"T\"\nbuilders = [\"nope\"]\n",
                "reporters[0].builders",
            ),
            (
                "name = \"x\"\nkind = \"gitlab\"\ntoken_env = \"T\"\nevents = [\"queued\"]\n",
                "reporters[0].events",
            ),
            (
                "name = \"x\"\nkind = \"http\"\nurl = \"http://h\"\ntoken_env = \"T\"\n",
                "reporters[0].token_env",
            ),
            (
                "name = \"x\"\nkind = \"github\"\ntoken_env = \"T\"\ntoken_secret = \"t\"\n",
                "reporters[0].token_secret",
            ),
            (
                // A secret needs a provider to come from.
                "name = \"x\"\nkind = \"github\"\ntoken_secret = \"t\"\n",
                "reporters[0].token_secret",
            ),
            (
                "name = \"x\"\nkind = \"http\"\nurl = \"http://h\"\nsigning_secret = \"../k\"\n",
                "reporters[0].signing_secret",
            ),
            (
                "name = \"x\"\nkind = \"gitlab\"\ntoken_env = \"T\"\nsigning_secret = \"k\"\n",
                "reporters[0].signing_secret",
            ),
        ] {
            let e = error_of(&format!("[[reporters]]\n{toml}"));
            assert!(e.contains(key), "{toml}: {e}");
        }
        let twice = "[[reporters]]\nname = \"x\"\nkind = \"http\"\nurl = \"http://h\"\n";
        assert!(error_of(&format!("{twice}{twice}")).contains("reporters[1].name"));
        assert!(
            error_of(
                "[[reporters]]\nname = \"x\"\nkind = \"http\"\nurl = \"http://h\"\nsecret = \"s\"\n"
            )
            .contains("secret")
        );
    }
}
