//! The clock-driven schedulers. `periodic` builds every `interval`; its
//! state is the time of the last tick, and the next is due one interval
//! later (a cluster that was down longer than an interval fires once, not
//! once per missed tick). `nightly` builds when its cron expression matches
//! a minute in its time zone; its state is the last minute it checked, so
//! a new owner neither repeats nor skips a minute the old one handled.
//!
//! A tick that fires moves the state with a compare-and-swap in the same
//! transaction that creates its buildset: two masters that both believe
//! they own the scheduler cannot both fire, and a master that dies during
//! a tick has either fired (state and buildset both recorded) or not (the
//! next owner fires instead); no firing is lost. A nightly check of minutes
//! that match nothing only moves the state.

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use serde_json::json;

use super::buildsets::{Firing, StateMove};
use super::{SchedCtx, buildsets, object_name};
use crate::config::SchedulerConfig;
use crate::cron::CronExpr;
use crate::db::{DbError, SourceStamp};

fn sourcestamp(s: &SchedulerConfig) -> SourceStamp {
    SourceStamp {
        repository: s.repository.clone().unwrap_or_default(),
        branch: s.branch.clone(),
        ..Default::default()
    }
}

fn time_of(v: Option<&serde_json::Value>, key: &str) -> Option<DateTime<Utc>> {
    v?.get(key)?.as_str()?.parse().ok()
}

pub async fn periodic(ctx: &SchedCtx, s: &SchedulerConfig) -> Result<usize, DbError> {
    let store = &ctx.store;
    let object = object_name(s);
    let Some(interval) = s.interval.map(|d| d.get()) else {
        return Ok(0);
    };
    let interval = TimeDelta::from_std(interval).unwrap_or(TimeDelta::MAX);
    let now = ctx.clock.now(store).await?;
    let old = store.get_state(&object, "state").await?;
    let last = time_of(old.as_ref(), "last_tick");
    let tick = match last {
        None => now,
        Some(last) if now >= last + interval => {
            let due = last + interval;
            // Keep the cadence, unless whole ticks were missed.
            if now - due < interval { due } else { now }
        }
        Some(_) => return Ok(0),
    };
    let new = json!({ "last_tick": tick.to_rfc3339() });
    let reason = format!(
        "periodic scheduler {} tick at {}",
        s.name,
        tick.to_rfc3339()
    );
    fire(ctx, s, &object, old.as_ref(), &new, reason).await
}

/// One buildset on the scheduler's own source stamp, created in the
/// transaction that moves its state from `old` to `new`: the number created
/// (0 when another owner moved the state first).
async fn fire(
    ctx: &SchedCtx,
    s: &SchedulerConfig,
    object: &str,
    old: Option<&serde_json::Value>,
    new: &serde_json::Value,
    reason: String,
) -> Result<usize, DbError> {
    let firing = Firing {
        reason,
        sourcestamps: vec![sourcestamp(s)],
        ..Default::default()
    };
    let state = StateMove {
        object,
        name: "state",
        expected: old,
        new,
    };
    let created = buildsets::create_with_state(ctx, s, vec![firing], state).await?;
    Ok(created.map_or(0, |c| c.len()))
}

fn local_key(t: &chrono::NaiveDateTime) -> String {
    t.format("%Y-%m-%dT%H:%M").to_string()
}

/// Minutes looked back at most: a cluster that was down for days fires one
/// catch-up build, not one per missed night.
const MAX_MINUTES: i32 = 2 * 24 * 60;

pub async fn nightly(ctx: &SchedCtx, s: &SchedulerConfig) -> Result<usize, DbError> {
    let store = &ctx.store;
    let object = object_name(s);
    let Some(cron) = s.cron.as_deref().and_then(|c| CronExpr::parse(c).ok()) else {
        return Ok(0);
    };
    let tz: chrono_tz::Tz = s
        .timezone
        .as_deref()
        .and_then(|t| t.parse().ok())
        .unwrap_or(chrono_tz::UTC);
    let now = ctx.clock.now(store).await?;
    let minute = TimeDelta::minutes(1);
    let this_minute = now.duration_trunc(minute).unwrap_or(now);
    let old = store.get_state(&object, "state").await?;
    let checked = time_of(old.as_ref(), "checked_minute");
    // The local minute last fired for: when clocks go back an hour, the
    // repeated wall-clock minute does not fire a second time.
    let last_local = old
        .as_ref()
        .and_then(|v| v.get("fired_local")?.as_str().map(str::to_owned));
    let mut fire_at = None;
    if let Some(checked) = checked {
        if this_minute <= checked {
            return Ok(0);
        }
        // After a long outage only the last MAX_MINUTES are looked at.
        let mut m = (checked + minute).max(this_minute - minute * MAX_MINUTES);
        while m <= this_minute {
            let local = m.with_timezone(&tz).naive_local();
            if cron.matches(&local) && last_local.as_deref() != Some(&local_key(&local)) {
                fire_at = Some(m);
            }
            m += minute;
        }
    }
    let fired_local = fire_at
        .map(|m| local_key(&m.with_timezone(&tz).naive_local()))
        .or(last_local);
    let new = json!({ "checked_minute": this_minute.to_rfc3339(), "fired_local": fired_local });
    let Some(at) = fire_at else {
        // Nothing to build: only the minutes checked move on.
        store
            .cas_state(&object, "state", old.as_ref(), &new)
            .await?;
        return Ok(0);
    };
    let reason = format!(
        "nightly scheduler {} for {} ({})",
        s.name,
        at.with_timezone(&tz).format("%Y-%m-%d %H:%M"),
        tz
    );
    fire(ctx, s, &object, old.as_ref(), &new, reason).await
}
