//! Turning a scheduler's decision into a buildset: source stamps, the
//! properties (the source's, then the scheduler's own, then `scheduler`),
//! one request per builder at the scheduler's priority, and collapsing of
//! the requests the new ones supersede on builders that ask for it. The
//! schedulers that fire by time, changes or upstream builds create theirs
//! with [`create_with_state`], in one transaction with the move of their
//! state that records the firing.
//!
//! Also the two schedulers that are started from outside rather than by
//! time or changes: `try` (a patch from `flotilla try`) and `triggerable`
//! (a `trigger` step of another build).

use std::collections::BTreeMap;

use serde_json::Value;

use super::SchedCtx;
use crate::config::SchedulerConfig;
use crate::db::{DbError, NewBuildset, Patch, SourceStamp};

/// A buildset that was created.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Created {
    pub buildset_id: i64,
    pub buildrequest_ids: Vec<i64>,
}

/// The scheduler's own properties as JSON.
fn scheduler_properties(s: &SchedulerConfig) -> BTreeMap<String, Value> {
    s.properties
        .iter()
        .map(|(k, v)| (k.clone(), serde_json::to_value(v).unwrap_or(Value::Null)))
        .collect()
}

/// One buildset a scheduler decided on: why, what to build, and the
/// properties of its source.
#[derive(Clone, Debug, Default)]
pub struct Firing {
    pub reason: String,
    pub sourcestamps: Vec<SourceStamp>,
    pub properties: BTreeMap<String, Value>,
    /// The changes behind it.
    pub change_ids: Vec<i64>,
}

/// The move of a scheduler's `object_state` row that records its decision:
/// from `expected` (`None`: absent) to `new`.
#[derive(Clone, Copy, Debug)]
pub struct StateMove<'a> {
    pub object: &'a str,
    pub name: &'a str,
    pub expected: Option<&'a Value>,
    pub new: &'a Value,
}

/// The (name, id) of the builders a buildset of scheduler `s` is for.
type Builders = Vec<(String, i64)>;

/// The buildset for scheduler `s` on its builders, not yet created.
fn plan(
    ctx: &SchedCtx,
    s: &SchedulerConfig,
    reason: String,
    sourcestamps: Vec<SourceStamp>,
    base_properties: BTreeMap<String, Value>,
    parent_buildid: Option<i64>,
    change_ids: Vec<i64>,
) -> (NewBuildset, Builders) {
    let mut properties = base_properties;
    properties.extend(scheduler_properties(s));
    properties.insert("scheduler".into(), Value::String(s.name.clone()));
    let builders: Builders = s
        .builders
        .iter()
        .filter_map(|b| ctx.builder_ids.get(b).map(|id| (b.clone(), *id)))
        .collect();
    let bs = NewBuildset {
        reason,
        scheduler: Some(s.name.clone()),
        sourcestamps,
        properties,
        builders: builders.iter().map(|(_, id)| (*id, s.priority)).collect(),
        parent_buildid,
        change_ids,
        ..Default::default()
    };
    (bs, builders)
}

/// After `bs` was created as `buildset_id` with requests `ids` (one per
/// entry of `builders`): count it and collapse the requests its new ones
/// supersede.
async fn created(
    ctx: &SchedCtx,
    s: &SchedulerConfig,
    bs: &NewBuildset,
    builders: &Builders,
    buildset_id: i64,
    ids: Vec<i64>,
) -> Result<Created, DbError> {
    tracing::info!(scheduler = %s.name, buildset = buildset_id, requests = ?ids, "buildset created");
    metrics::counter!(crate::metrics::SCHEDULER_BUILDSETS, "scheduler" => s.name.clone())
        .increment(1);
    // A triggered buildset is waited for by its parent: never collapse for it.
    let collapsible = bs.parent_buildid.is_none();
    if let Some(ss) = bs
        .sourcestamps
        .first()
        .filter(|ss| collapsible && ss.patch.is_none())
    {
        for ((name, builder_id), request) in builders.iter().zip(&ids) {
            let collapse = ctx
                .config
                .builder(name)
                .is_some_and(|b| b.collapse_requests);
            if collapse {
                let gone = ctx
                    .store
                    .collapse_pending(*builder_id, *request, ss)
                    .await?;
                if !gone.is_empty() {
                    tracing::info!(builder = %name, superseded_by = request, collapsed = ?gone, "collapsed pending requests");
                }
            }
        }
    }
    Ok(Created {
        buildset_id,
        buildrequest_ids: ids,
    })
}

/// Creates a buildset for scheduler `s` on its builders.
pub async fn create(
    ctx: &SchedCtx,
    s: &SchedulerConfig,
    reason: String,
    sourcestamps: Vec<SourceStamp>,
    base_properties: BTreeMap<String, Value>,
    parent_buildid: Option<i64>,
) -> Result<Created, DbError> {
    create_with_changes(
        ctx,
        s,
        reason,
        sourcestamps,
        base_properties,
        parent_buildid,
        Vec::new(),
    )
    .await
}

/// As [`create`], recording `change_ids` as the changes behind the buildset.
pub async fn create_with_changes(
    ctx: &SchedCtx,
    s: &SchedulerConfig,
    reason: String,
    sourcestamps: Vec<SourceStamp>,
    base_properties: BTreeMap<String, Value>,
    parent_buildid: Option<i64>,
    change_ids: Vec<i64>,
) -> Result<Created, DbError> {
    let (bs, builders) = plan(
        ctx,
        s,
        reason,
        sourcestamps,
        base_properties,
        parent_buildid,
        change_ids,
    );
    let (buildset_id, ids) = ctx.store.add_buildset(&bs).await?;
    created(ctx, s, &bs, &builders, buildset_id, ids).await
}

/// Creates the buildsets of `firings` for scheduler `s` in the same
/// transaction that makes `state` move, so a firing is recorded exactly when
/// its buildset is: a master that dies half-way has done both or neither.
/// `None` (and nothing created) when the state had already moved: another
/// owner acted. Collapsing superseded requests follows the commit.
pub async fn create_with_state(
    ctx: &SchedCtx,
    s: &SchedulerConfig,
    firings: Vec<Firing>,
    state: StateMove<'_>,
) -> Result<Option<Vec<Created>>, DbError> {
    let (buildsets, builders): (Vec<NewBuildset>, Vec<Builders>) = firings
        .into_iter()
        .map(|f| {
            plan(
                ctx,
                s,
                f.reason,
                f.sourcestamps,
                f.properties,
                None,
                f.change_ids,
            )
        })
        .unzip();
    let Some(ids) = ctx
        .store
        .add_buildsets_with_state(
            &buildsets,
            state.object,
            state.name,
            state.expected,
            state.new,
        )
        .await?
    else {
        return Ok(None);
    };
    let mut out = Vec::with_capacity(ids.len());
    for ((bs, builders), (buildset_id, requests)) in buildsets.iter().zip(&builders).zip(ids) {
        out.push(created(ctx, s, bs, builders, buildset_id, requests).await?);
    }
    Ok(Some(out))
}

/// What `flotilla try` sends.
#[derive(Clone, Debug, Default)]
pub struct TryRequest {
    pub builders: Vec<String>,
    pub diff: Vec<u8>,
    pub patch_level: i32,
    pub baserev: Option<String>,
    pub branch: Option<String>,
    pub repository: Option<String>,
    pub author: String,
    pub comment: String,
    pub properties: BTreeMap<String, Value>,
}

/// Why a try or trigger could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    BadRequest(String),
    #[error(transparent)]
    Db(#[from] DbError),
}

/// Creates the buildset of a try: the patch on top of its base revision, on
/// the requested builders, through the `try` scheduler that lists them all.
pub async fn start_try(ctx: &SchedCtx, t: TryRequest) -> Result<Created, StartError> {
    if t.builders.is_empty() {
        return Err(StartError::BadRequest("name at least one builder".into()));
    }
    if t.diff.is_empty() {
        return Err(StartError::BadRequest("the patch is empty".into()));
    }
    for b in &t.builders {
        if !ctx.builder_ids.contains_key(b) {
            return Err(StartError::BadRequest(format!("no builder named {b:?}")));
        }
    }
    let Some(s) = ctx
        .config
        .schedulers
        .iter()
        .find(|s| s.kind == "try" && t.builders.iter().all(|b| s.builders.contains(b)))
    else {
        return Err(StartError::BadRequest(format!(
            "no `try` scheduler lists every builder of {:?}",
            t.builders
        )));
    };
    // Only the builders asked for, not every builder of the scheduler.
    let mut s = s.clone();
    s.builders.retain(|b| t.builders.contains(b));
    let ss = SourceStamp {
        repository: t
            .repository
            .filter(|r| !r.is_empty())
            .or_else(|| s.repository.clone())
            .unwrap_or_default(),
        branch: t.branch.or_else(|| s.branch.clone()),
        revision: t.baserev,
        patch: Some(Patch {
            body: t.diff,
            level: t.patch_level,
            subdir: None,
            author: t.author.clone(),
            comment: t.comment.clone(),
        }),
        ..Default::default()
    };
    let reason = format!(
        "try by {}",
        if t.author.is_empty() {
            "someone"
        } else {
            &t.author
        }
    );
    Ok(create(ctx, &s, reason, vec![ss], t.properties, None).await?)
}

/// Starts triggerable scheduler `name` for build `parent_buildid`, with the
/// parent's source stamps, properties and changes.
pub async fn trigger(
    ctx: &SchedCtx,
    name: &str,
    parent_buildid: i64,
    sourcestamps: Vec<SourceStamp>,
    properties: BTreeMap<String, Value>,
    change_ids: Vec<i64>,
) -> Result<Created, StartError> {
    let Some(s) = ctx
        .config
        .schedulers
        .iter()
        .find(|s| s.name == name && s.kind == "triggerable")
    else {
        return Err(StartError::BadRequest(format!(
            "no triggerable scheduler named {name:?}"
        )));
    };
    let reason = format!("triggered by build {parent_buildid}");
    Ok(create_with_changes(
        ctx,
        s,
        reason,
        sourcestamps,
        properties,
        Some(parent_buildid),
        change_ids,
    )
    .await?)
}
