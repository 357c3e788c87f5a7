//! The step kinds beyond a plain shell command.
//!
//! - `git`: the master writes a small shell script that checks out the
//!   source stamp's repository and revision (or branch) into the step's
//!   workdir and applies a try patch, which travels with the command as a
//!   file (`RunCommand.files`). A patch that does not apply fails the step
//!   with git's message in the log.
//! - `trigger`: runs on the master, not the worker: it creates a buildset
//!   for each named triggerable scheduler (with this build as the parent)
//!   and, with `wait_for_finish`, waits for them and fails when they fail.

use std::time::Duration;

use flotilla_proto::v1::FileUpload;
use tokio_util::sync::CancellationToken;

use super::build_log::BuildLog;
use crate::config::StepConfig;
use crate::db::{DbError, RequestDetails, Results};
use crate::schedulers::{SchedCtx, StartError, buildsets};
use crate::state::MasterState;

/// Where the try patch lands, relative to the step's workdir.
pub const PATCH_FILE: &str = ".flotilla-try.patch";

const GIT_SCRIPT: &str = r#"set -e
repo="$1"; rev="$2"; branch="$3"; level="$4"; patch="$5"
if [ -z "$repo" ]; then
  echo "git step: no repository to check out (the source stamp names none)" >&2
  exit 2
fi
# These come from changes and webhooks: never let one pass for a git option.
for arg in "$repo" "$rev" "$branch"; do
  case "$arg" in -*) echo "git step: refusing $arg (looks like an option)" >&2; exit 2;; esac
done
[ -d .git ] || git init -q .
echo "fetching $repo"
git fetch -q --no-tags "$repo" "+refs/heads/*:refs/remotes/source/*"
target="$rev"
if [ -n "$target" ] && ! git cat-file -e "$target^{commit}" 2>/dev/null; then
  git fetch -q "$repo" "$target"
fi
if [ -z "$target" ] && [ -n "$branch" ]; then target="refs/remotes/source/$branch"; fi
if [ -z "$target" ]; then git fetch -q "$repo" HEAD; target=FETCH_HEAD; fi
git -c advice.detachedHead=false checkout -q -f --detach "$target"
git clean -q -ffdx -e "$patch"
echo "checked out $(git rev-parse HEAD)"
if [ -s "$patch" ]; then
  echo "applying the try patch (-p$level)"
  if ! git apply --verbose -p"$level" "$patch"; then
    rm -f "$patch"
    echo "the try patch does not apply" >&2
    exit 1
  fi
fi
rm -f "$patch"
"#;

/// The command and files a worker runs for a `shell` or `git` step.
pub fn command_for(step: &StepConfig, req: &RequestDetails) -> (Vec<String>, Vec<FileUpload>) {
    if step.kind != "git" {
        return (step.command.clone(), Vec::new());
    }
    let ss = req.sourcestamps.first().cloned().unwrap_or_default();
    let repository = step.repository.clone().unwrap_or(ss.repository);
    let level = ss.patch.as_ref().map_or(1, |p| p.level);
    let argv = vec![
        "sh".to_owned(),
        "-c".to_owned(),
        GIT_SCRIPT.to_owned(),
        "flotilla-git".to_owned(),
        repository,
        ss.revision.unwrap_or_default(),
        ss.branch.unwrap_or_default(),
        level.to_string(),
        PATCH_FILE.to_owned(),
    ];
    // Always sent, empty without a patch, so a leftover from an earlier
    // build in the same workdir is never applied.
    let files = vec![FileUpload {
        path: PATCH_FILE.to_owned(),
        content: ss.patch.map(|p| p.body).unwrap_or_default(),
    }];
    (argv, files)
}

/// How a step is shown in its log before it runs.
pub fn describe(step: &StepConfig) -> Option<String> {
    match step.kind.as_str() {
        "git" => Some(format!(
            "git checkout{}",
            step.repository
                .as_deref()
                .map(|r| format!(" of {r}"))
                .unwrap_or_default()
        )),
        _ => None,
    }
}

const WAIT_POLL: Duration = Duration::from_millis(300);

/// Runs a `trigger` step; returns its result and state string.
pub async fn trigger(
    state: &MasterState,
    step: &StepConfig,
    req: &RequestDetails,
    build_id: i64,
    log: &mut BuildLog,
    cancel: &CancellationToken,
) -> Result<(Results, String), DbError> {
    let ctx = SchedCtx::of(state);
    let mut started = Vec::new();
    for name in &step.schedulers {
        match buildsets::trigger(
            &ctx,
            name,
            build_id,
            req.sourcestamps.clone(),
            req.properties.clone(),
            req.change_ids.clone(),
        )
        .await
        {
            Ok(c) => {
                log.note(&format!(
                    "triggered {name}: buildset {} with build request(s) {:?}",
                    c.buildset_id, c.buildrequest_ids
                ))
                .await?;
                started.push((name.clone(), c.buildset_id));
            }
            Err(StartError::BadRequest(m)) => {
                log.note(&format!("cannot trigger {name}: {m}")).await?;
                return Ok((Results::Exception, "trigger failed".into()));
            }
            Err(StartError::Db(e)) => return Err(e),
        }
    }
    state.work_submitted(&[]);
    if !step.wait_for_finish {
        return Ok((Results::Success, format!("triggered {}", started.len())));
    }
    log.flush().await?;
    let mut overall = Results::Success;
    for (name, bs) in started {
        let results = loop {
            if let Some(s) = state.store.buildset_status(bs).await?
                && s.complete
            {
                break s.results.unwrap_or(Results::Exception);
            }
            tokio::select! {
                _ = tokio::time::sleep(WAIT_POLL) => {}
                _ = cancel.cancelled() => {
                    log.note("interrupted while waiting for triggered builds").await?;
                    return Ok((Results::Cancelled, "interrupted".into()));
                }
            }
        };
        log.note(&format!("{name}: buildset {bs} finished: {results}"))
            .await?;
        log.flush().await?;
        overall = overall.worst(results);
    }
    let results = match overall {
        Results::Success | Results::Warnings | Results::Skipped => overall,
        _ => Results::Failure,
    };
    Ok((results, format!("triggered builds: {overall}")))
}
