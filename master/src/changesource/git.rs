//! The git poller: asks a repository (a local path or any URL `git` can
//! fetch from) for its branch heads, and records one change per new commit
//! on the branches it follows.
//!
//! Its state (`object_state` `changesource:<name>` / `revs`) is the head it
//! last saw on each branch. The first poll only records the heads. Later
//! polls fetch the moved branches into a bare cache repository on this
//! master, list the commits between the old and the new head, and record
//! them together with the new heads in one transaction that also checks the
//! heads are still the ones this poll started from: a crash, a restart or a
//! move to another master can neither lose nor repeat a change.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::config::ChangeSourceConfig;
use crate::db::{DbError, NewChange, Store};

/// Commits recorded per branch and poll at most (the newest ones).
const MAX_COMMITS: usize = 200;
const GIT_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum PollError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("git: {0}")]
    Git(String),
}

/// Where pollers keep their bare cache repositories on this machine: a
/// cache (lost, it is fetched again), so under the first of
/// `$FLOTILLA_CACHE_DIR`, systemd's `$CACHE_DIRECTORY` (`CacheDirectory=`),
/// `$XDG_CACHE_HOME/flotilla`, `$HOME/.cache/flotilla`, else the system
/// temporary directory.
pub fn cache_root() -> PathBuf {
    cache_root_from(|k| std::env::var_os(k).filter(|v| !v.is_empty()))
}

fn cache_root_from(var: impl Fn(&str) -> Option<std::ffi::OsString>) -> PathBuf {
    let base = var("FLOTILLA_CACHE_DIR")
        .map(PathBuf::from)
        // systemd may list several directories, separated by colons.
        .or_else(|| {
            var("CACHE_DIRECTORY").and_then(|v| {
                v.to_str()
                    .and_then(|s| s.split(':').next())
                    .map(PathBuf::from)
            })
        })
        .or_else(|| var("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("flotilla")))
        .or_else(|| var("HOME").map(|h| PathBuf::from(h).join(".cache").join("flotilla")))
        .unwrap_or_else(|| std::env::temp_dir().join("flotilla"));
    base.join("gitpoller")
}

fn object_name(cs: &ChangeSourceConfig) -> String {
    format!("changesource:{}", cs.name)
}

async fn git(dir: Option<&Path>, args: &[&str]) -> Result<String, PollError> {
    let mut cmd = tokio::process::Command::new("git");
    if let Some(d) = dir {
        cmd.arg("-C").arg(d);
    }
    cmd.args(args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(GIT_TIMEOUT, cmd.output())
        .await
        .map_err(|_| PollError::Git(format!("git {} timed out", args.join(" "))))?
        .map_err(|e| PollError::Git(format!("cannot run git: {e}")))?;
    if !out.status.success() {
        return Err(PollError::Git(format!(
            "git {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Branch name to head revision.
async fn heads(repository: &str) -> Result<BTreeMap<String, String>, PollError> {
    let out = git(None, &["ls-remote", "--heads", repository]).await?;
    Ok(out
        .lines()
        .filter_map(|l| {
            let (sha, r) = l.split_once('\t')?;
            Some((r.strip_prefix("refs/heads/")?.to_owned(), sha.to_owned()))
        })
        .collect())
}

fn cache_dir(root: &Path, cs: &ChangeSourceConfig) -> PathBuf {
    let safe: String = cs
        .name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    // Two sources of the same name in different clusters on one machine
    // must not share a cache: key it by repository too.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in cs.repository.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    root.join(format!("{safe}-{h:016x}"))
}

async fn commit_change(
    dir: &Path,
    cs: &ChangeSourceConfig,
    branch: &str,
    sha: &str,
) -> Result<NewChange, PollError> {
    let meta = git(
        Some(dir),
        &["show", "-s", "--format=%an <%ae>%x00%ct%x00%B", sha],
    )
    .await?;
    let mut parts = meta.splitn(3, '\0');
    let author = parts.next().unwrap_or_default().to_owned();
    let when = parts
        .next()
        .and_then(|t| t.trim().parse::<i64>().ok())
        .and_then(|t| DateTime::<Utc>::from_timestamp(t, 0));
    let comments = parts.next().unwrap_or_default().trim_end().to_owned();
    let files = git(
        Some(dir),
        &[
            "diff-tree",
            "--root",
            "--no-commit-id",
            "--name-only",
            "-r",
            sha,
        ],
    )
    .await?;
    Ok(NewChange {
        author,
        comments,
        branch: Some(branch.to_owned()),
        revision: Some(sha.to_owned()),
        repository: cs.repository.clone(),
        project: cs.project.clone(),
        codebase: cs.codebase.clone(),
        files: files.lines().map(str::to_owned).collect(),
        properties: BTreeMap::new(),
        category: cs.category.clone(),
        when,
    })
}

/// One poll; returns the ids of the changes recorded.
pub async fn poll(
    store: &Store,
    cs: &ChangeSourceConfig,
    cache: &Path,
) -> Result<Vec<i64>, PollError> {
    let mut now = heads(&cs.repository).await?;
    if !cs.branches.is_empty() {
        now.retain(|b, _| cs.branches.contains(b));
    }
    let object = object_name(cs);
    let old = store.get_state(&object, "revs").await?;
    let new = serde_json::to_value(&now).map_err(|e| PollError::Git(e.to_string()))?;
    let Some(old_value) = old else {
        // First poll: remember where the branches are; what came before is history.
        store.cas_state(&object, "revs", None, &new).await?;
        return Ok(Vec::new());
    };
    if old_value == new {
        return Ok(Vec::new());
    }
    let seen: BTreeMap<String, String> = serde_json::from_value(old_value.clone())
        .map_err(|e| PollError::Git(format!("state of {}: {e}", cs.name)))?;
    let moved: Vec<(&String, &String)> = now
        .iter()
        .filter(|(b, sha)| seen.get(*b) != Some(*sha))
        .collect();
    let mut changes = Vec::new();
    if !moved.is_empty() {
        let dir = cache_dir(cache, cs);
        if !dir.join("HEAD").exists() {
            tokio::fs::create_dir_all(&dir)
                .await
                .map_err(|e| PollError::Git(format!("cannot create {}: {e}", dir.display())))?;
            git(Some(&dir), &["init", "--bare", "-q"]).await?;
        }
        let mut args = vec![
            "fetch".to_owned(),
            "-q".to_owned(),
            "--no-tags".to_owned(),
            cs.repository.clone(),
        ];
        for (b, _) in &moved {
            args.push(format!("+refs/heads/{b}:refs/heads/{b}"));
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        git(Some(&dir), &args).await?;
        for (branch, sha) in moved {
            let commits = match seen.get(branch) {
                Some(old_sha) => {
                    let max = format!("--max-count={MAX_COMMITS}");
                    let range = format!("^{old_sha}");
                    match git(Some(&dir), &["rev-list", "--reverse", &max, sha, &range]).await {
                        Ok(out) => out.lines().map(str::to_owned).collect(),
                        // The old head is gone (history rewritten): the new head alone.
                        Err(_) => vec![sha.clone()],
                    }
                }
                // A new branch: its head commit.
                None => vec![sha.clone()],
            };
            for c in commits {
                changes.push(commit_change(&dir, cs, branch, &c).await?);
            }
        }
    }
    let ids = store
        .add_changes_with_state(&changes, &object, "revs", Some(&old_value), &new)
        .await?;
    Ok(ids.unwrap_or_default())
}

#[cfg(test)]
mod cache_root_tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<std::ffi::OsString> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| {
            pairs
                .iter()
                .find(|(name, _)| name == k)
                .map(|(_, v)| v.into())
        }
    }

    #[test]
    fn the_first_configured_cache_wins() {
        let all = [
            ("FLOTILLA_CACHE_DIR", "/srv/cache"),
            ("CACHE_DIRECTORY", "/var/cache/flotilla:/var/cache/other"),
            ("XDG_CACHE_HOME", "/home/ci/.xdg"),
            ("HOME", "/home/ci"),
        ];
        assert_eq!(
            cache_root_from(vars(&all)),
            PathBuf::from("/srv/cache/gitpoller")
        );
        assert_eq!(
            cache_root_from(vars(&all[1..])),
            PathBuf::from("/var/cache/flotilla/gitpoller")
        );
        assert_eq!(
            cache_root_from(vars(&all[2..])),
            PathBuf::from("/home/ci/.xdg/flotilla/gitpoller")
        );
        assert_eq!(
            cache_root_from(vars(&all[3..])),
            PathBuf::from("/home/ci/.cache/flotilla/gitpoller")
        );
        assert_eq!(
            cache_root_from(vars(&[])),
            std::env::temp_dir().join("flotilla").join("gitpoller")
        );
    }
}
