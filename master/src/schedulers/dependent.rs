//! The `dependent` scheduler: when a buildset of its `upstream` scheduler
//! completes with success (or warnings), it builds the same source stamps
//! on its own builders. Upstream buildsets are taken in id order; the
//! watermark (the last one handled) is its database state, so each upstream
//! buildset is considered exactly once, whichever master owns the scheduler.
//! The watermark moves in the same transaction that creates the buildsets it
//! decided on, so a master that dies mid-tick loses none of them.

use serde_json::json;

use super::buildsets::{Firing, StateMove};
use super::{SchedCtx, buildsets, object_name};
use crate::config::SchedulerConfig;
use crate::db::{DbError, RequestFilter, Results};

pub async fn tick(ctx: &SchedCtx, s: &SchedulerConfig) -> Result<usize, DbError> {
    let Some(upstream) = s.upstream.as_deref() else {
        return Ok(0);
    };
    let store = &ctx.store;
    let object = object_name(s);
    let old = store.get_state(&object, "state").await?;
    let mut after = match old.as_ref().and_then(|v| v.get("after")?.as_i64()) {
        Some(a) => a,
        // Never ran: skip the history, but look back one master timeout so
        // upstream buildsets made while the cluster started are not missed.
        None => {
            let a = store
                .last_buildset_id_before(ctx.config.cluster.master_timeout.get())
                .await?;
            store
                .cas_state(&object, "state", None, &json!({ "after": a }))
                .await?;
            return Ok(0);
        }
    };
    let mut succeeded = Vec::new();
    for bs in store
        .buildsets_of_scheduler_after(upstream, after, 100)
        .await?
    {
        if !bs.complete {
            break;
        }
        after = bs.id;
        if matches!(bs.results, Some(Results::Success | Results::Warnings)) {
            succeeded.push(bs.id);
        }
    }
    let new = json!({ "after": after });
    if old.as_ref() == Some(&new) {
        return Ok(0);
    }
    // What to build is read before the move, so the move and the buildsets
    // can be one transaction.
    let mut firings = Vec::with_capacity(succeeded.len());
    for id in &succeeded {
        let filter = RequestFilter {
            buildset_id: Some(*id),
            limit: 1,
            ..Default::default()
        };
        let Some(req) = store.list_requests(&filter).await?.pop() else {
            continue;
        };
        let Some(details) = store.request_details(&[req.id]).await?.pop() else {
            continue;
        };
        firings.push(Firing {
            reason: format!(
                "dependent scheduler {}: upstream buildset {id} succeeded",
                s.name
            ),
            sourcestamps: details.sourcestamps,
            properties: details.properties,
            change_ids: details.change_ids,
        });
    }
    if firings.is_empty() {
        store
            .cas_state(&object, "state", old.as_ref(), &new)
            .await?;
        return Ok(0);
    }
    let state = StateMove {
        object: &object,
        name: "state",
        expected: old.as_ref(),
        new: &new,
    };
    let created = buildsets::create_with_state(ctx, s, firings, state).await?;
    Ok(created.map_or(0, |c| c.len()))
}
