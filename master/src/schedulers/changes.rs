//! The branch schedulers, `single-branch` and `any-branch`: they read new
//! changes after a watermark and build each branch once its tree has been
//! stable for `tree_stable_timer` (a new change on the branch restarts the
//! timer, so quick successive changes make one buildset).
//!
//! With `files` patterns, only a change touching a matching file is
//! important: others never start a build on their own but ride along with
//! the next important one. Everything — the watermark, the pending changes
//! per branch, their deadline — lives in the scheduler's database state, so
//! a master that takes the scheduler over continues where the last stopped.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::buildsets::{Firing, StateMove};
use super::{SchedCtx, buildsets, object_name};
use crate::config::SchedulerConfig;
use crate::db::{ChangeRow, DbError, SourceStamp};

/// Changes read per tick.
const BATCH: i64 = 500;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct State {
    /// Every change up to this id has been seen (the settled watermark).
    last_change: i64,
    /// Changes above the watermark already seen. Ids are handed out when a
    /// change is inserted, not when it commits: a change with a lower id can
    /// appear after a higher one (two webhooks or pollers at once), so the
    /// watermark moves only past changes older than a look-back window, and
    /// the newer ones are remembered here so each is seen exactly once.
    #[serde(default)]
    seen: std::collections::BTreeSet<i64>,
    /// Branch (empty for none) to the changes waiting there.
    pending: BTreeMap<String, Pending>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Pending {
    changes: Vec<i64>,
    important: bool,
    stable_at: Option<DateTime<Utc>>,
    latest: ChangeRow,
}

fn key_of(c: &ChangeRow) -> String {
    c.branch.clone().unwrap_or_default()
}

fn wants_branch(s: &SchedulerConfig, branch: Option<&str>) -> bool {
    match s.kind.as_str() {
        "single-branch" => s.branch.as_deref() == branch && branch.is_some(),
        _ => s.branches.is_empty() || branch.is_some_and(|b| s.branches.iter().any(|x| x == b)),
    }
}

fn important(s: &SchedulerConfig, c: &ChangeRow) -> bool {
    s.files.is_empty()
        || c.files
            .iter()
            .any(|f| s.files.iter().any(|p| glob_match(p, f)))
}

/// `*` any run of characters, `?` one; a pattern ending in `/` matches
/// everything below that folder.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    if let Some(dir) = pattern.strip_suffix('/') {
        return text.starts_with(&format!("{dir}/"));
    }
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// One pass of a branch scheduler; returns the buildsets created.
pub async fn tick(ctx: &SchedCtx, s: &SchedulerConfig) -> Result<usize, DbError> {
    let store = &ctx.store;
    let object = object_name(s);
    let now = ctx.clock.now(store).await?;
    let old = store.get_state(&object, "state").await?;
    let mut st: State = match &old {
        Some(v) => serde_json::from_value(v.clone())
            .map_err(|e| DbError::Other(format!("state of scheduler {}: {e}", s.name)))?,
        None => State {
            // A scheduler that never ran looks back one master timeout, so
            // changes sent while the cluster started are not missed.
            last_change: store
                .last_change_id_before(ctx.config.cluster.master_timeout.get())
                .await?,
            seen: Default::default(),
            pending: BTreeMap::new(),
        },
    };
    // How long an insert may take to commit after its id was handed out.
    let look_back = ctx.config.cluster.master_timeout.get();
    let timer = s.tree_stable_timer.map(|d| d.get()).unwrap_or_default();
    let timer = chrono::Duration::from_std(timer).unwrap_or_default();
    let mut fired: Vec<Pending> = Vec::new();
    // Everything up to here has committed, by the look-back window (asked
    // before reading, so the read sees all of it).
    let settled = store.last_change_id_before(look_back).await?;
    let read = store
        .changes_after(st.last_change, BATCH + st.seen.len() as i64)
        .await?;
    let full = read.len() as i64 >= BATCH + st.seen.len() as i64;
    let newest_read = read.last().map(|c| c.id);
    for c in read {
        if !st.seen.insert(c.id) {
            continue;
        }
        if !wants_branch(s, c.branch.as_deref()) {
            continue;
        }
        let imp = important(s, &c);
        let key = key_of(&c);
        let p = st.pending.entry(key.clone()).or_insert_with(|| Pending {
            changes: Vec::new(),
            important: false,
            stable_at: None,
            latest: c.clone(),
        });
        p.changes.push(c.id);
        p.latest = c;
        if imp {
            p.important = true;
            p.stable_at = Some(now + timer);
            if timer.is_zero() {
                // No tree-stable timer: every important change builds on its own.
                fired.extend(st.pending.remove(&key));
            }
        }
    }
    // Move the watermark past what has settled and was read in full.
    let mut watermark = settled.max(st.last_change);
    if full {
        watermark = watermark.min(newest_read.unwrap_or(st.last_change));
    }
    st.last_change = st.last_change.max(watermark);
    let last = st.last_change;
    st.seen.retain(|id| *id > last);
    let ready: Vec<String> = st
        .pending
        .iter()
        .filter(|(_, p)| p.important && p.stable_at.is_some_and(|t| t <= now))
        .map(|(b, _)| b.clone())
        .collect();
    fired.extend(ready.iter().filter_map(|b| st.pending.remove(b)));
    let new = serde_json::to_value(&st).map_err(|e| DbError::Other(e.to_string()))?;
    if fired.is_empty() {
        // Nothing to build: only the watermark and pending changes move on.
        if old.as_ref() != Some(&new)
            && !store
                .cas_state(&object, "state", old.as_ref(), &new)
                .await?
        {
            tracing::debug!(scheduler = %s.name, "state changed under us; another master acted");
        }
        return Ok(0);
    }
    let firings = fired.iter().map(|p| firing(s, p)).collect();
    let state = StateMove {
        object: &object,
        name: "state",
        expected: old.as_ref(),
        new: &new,
    };
    match buildsets::create_with_state(ctx, s, firings, state).await? {
        Some(created) => Ok(created.len()),
        None => {
            tracing::debug!(scheduler = %s.name, "state changed under us; another master acted");
            Ok(0)
        }
    }
}

/// The buildset for the changes `p` waiting on one branch: its latest change.
fn firing(s: &SchedulerConfig, p: &Pending) -> Firing {
    let c = &p.latest;
    Firing {
        reason: format!(
            "scheduler {}: {} change(s) on branch {}, last {}",
            s.name,
            p.changes.len(),
            c.branch.as_deref().unwrap_or("-"),
            c.id
        ),
        sourcestamps: vec![SourceStamp {
            repository: c.repository.clone(),
            branch: c.branch.clone(),
            revision: c.revision.clone(),
            project: c.project.clone(),
            codebase: c.codebase.clone(),
            patch: None,
        }],
        properties: c.properties.clone(),
        change_ids: p.changes.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    #[test]
    fn globs() {
        assert!(glob_match("*.rs", "src/main.rs"));
        assert!(glob_match("src/", "src/a/b.c"));
        assert!(!glob_match("src/", "docs/src"));
        assert!(glob_match("docs/?.md", "docs/a.md"));
        assert!(!glob_match("*.rs", "README.md"));
        assert!(glob_match("README.md", "README.md"));
    }
}
