//! Reporters: telling GitHub, GitLab or any HTTP endpoint what happened to
//! the builds (`[[reporters]]` in the cluster file).
//!
//! Delivery survives everything the masters survive:
//! 1. **Outbox.** The transaction that records a build's start or end also
//!    inserts one `report_deliveries` row per reporter that wants it
//!    (`db::outbox`): no event without its build change, and no build
//!    change without its event.
//! 2. **Prepare.** Any master works out what a new row sends (`payload`):
//!    the API path, status and body, and the *topic* whose order it keeps.
//! 3. **Claim.** A master claims due rows by compare-and-swap on
//!    `claimed_by_masterid`/`claimed_at`, only while it is active and not
//!    fenced, only the oldest queued row of each topic; a row held by a
//!    master declared dead (after `master_timeout`) or past the lease is
//!    taken over the same way.
//! 4. **Send** (`send`), with a deadline well inside the fence: a master
//!    sends only while its claim is younger than half its fence, so a send
//!    has ended before anyone may take the row over. A row older than a
//!    newer row of its topic already sent is superseded, never sent.
//! 5. **Record**, fenced on the claim: sent; failed for good (4xx other
//!    than 429 and a rate-limit 403, logged); or queued again after a
//!    backoff or the wait the server names (5xx, 429, rate-limit 403,
//!    timeouts) until `retry_horizon` has passed.
//!
//! A status is sent twice only when its master died (or was cut off)
//! between sending it and recording that: the row is then taken over and
//! sent again, still before anything newer of its topic.

mod payload;
mod repository;
mod send;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::ClusterConfig;
use crate::db::outbox::ReportRoute;
use crate::db::{Delivery, DeliveryOutcome, DeliveryState, ReportedBuild};
use crate::metrics::{REPORTER_DELIVERIES_FAILED, REPORTER_DELIVERIES_SENT, REPORTER_PENDING_AGE};
use crate::state::MasterState;

pub use payload::{github_state, gitlab_state};
pub use send::{SIGNATURE_HEADER, sign};

/// Rows prepared and claimed per round.
const BATCH: i64 = 32;

/// Which reporters want which builds, by builder id.
pub fn routes(config: &ClusterConfig, builder_ids: &HashMap<String, i64>) -> Vec<ReportRoute> {
    let mut out = Vec::new();
    for r in &config.reporters {
        let started = r.wants_event("started");
        let finished = r.wants_event("finished");
        if r.builders.is_empty() {
            out.push(ReportRoute {
                reporter: r.name.clone(),
                builder_id: None,
                started,
                finished,
            });
        }
        for b in &r.builders {
            if let Some(id) = builder_ids.get(b) {
                out.push(ReportRoute {
                    reporter: r.name.clone(),
                    builder_id: Some(*id),
                    started,
                    finished,
                });
            }
        }
    }
    out
}

/// Set the store's routes (before any build can start) and start the
/// delivery loop. It runs through a drain, while builds still finish, and
/// ends once none runs, on an immediate shutdown, or on `stop`; the master
/// awaits it (its task tracker) before leaving the cluster, so nothing is
/// sent after others may take its deliveries over.
pub fn start(state: &Arc<MasterState>, stop: &CancellationToken) {
    if state.config.reporters.is_empty() {
        return;
    }
    state
        .store
        .set_report_routes(routes(&state.config, &state.builder_ids));
    state.tasks.spawn(run(state.clone(), stop.clone()));
}

fn stopping(state: &MasterState, stop: &CancellationToken) -> bool {
    stop.is_cancelled()
        || state.shutdown.immediate.is_cancelled()
        || (state.shutdown.graceful.is_cancelled() && state.running_count() == 0)
}

async fn run(state: Arc<MasterState>, stop: CancellationToken) {
    let client = match reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "reporters: cannot build an HTTP client; nothing is reported");
            return;
        }
    };
    let poll = state.config.cluster.poll_interval.get();
    let deadline = state.config.cluster.master_timeout.get();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = state.shutdown.immediate.cancelled() => return,
            _ = tokio::time::sleep(poll) => {}
        }
        if stopping(&state, &stop) {
            return;
        }
        // A fenced master delivers nothing: others may take its rows over.
        if !state.may_claim() {
            continue;
        }
        let round = crate::db::within(deadline, round(&state, &client));
        if let Err(e) = round.await {
            metrics::counter!(crate::metrics::DATABASE_ERRORS).increment(1);
            tracing::warn!(error = %e, "reporters: delivery round failed");
        }
    }
}

/// How long one request may take: the reporter's `timeout`, at most a
/// quarter of `master_timeout`.
fn request_timeout(state: &MasterState, reporter: &crate::config::ReporterConfig) -> Duration {
    let cap = state.config.cluster.master_timeout.get() / 4;
    reporter
        .timeout
        .get()
        .min(cap)
        .max(Duration::from_millis(100))
}

async fn round(
    state: &Arc<MasterState>,
    client: &reqwest::Client,
) -> Result<(), crate::db::DbError> {
    let store = &state.store;
    prepare(state).await?;
    let age = store.oldest_pending_delivery_age().await?;
    metrics::gauge!(REPORTER_PENDING_AGE).set(age);
    let lease = state.config.cluster.master_timeout.get() * 2;
    let me = state.master_id();
    let claimed_at = Instant::now();
    let claimed = store.claim_deliveries(me, BATCH, lease).await?;
    let sends = claimed
        .into_iter()
        .map(|d| deliver(state, client, me, d, claimed_at));
    for r in futures::future::join_all(sends).await {
        r?;
    }
    Ok(())
}

/// Work out what new rows send.
async fn prepare(state: &MasterState) -> Result<(), crate::db::DbError> {
    let store = &state.store;
    let fresh = store.new_deliveries(BATCH * 4).await?;
    let mut builds: HashMap<i64, Option<ReportedBuild>> = HashMap::new();
    let dashboard = |r: &crate::config::ReporterConfig| {
        r.dashboard_url
            .clone()
            .unwrap_or_else(|| format!("http://{}", state.config.api.listen))
    };
    for n in fresh {
        if let std::collections::hash_map::Entry::Vacant(slot) = builds.entry(n.build_id) {
            slot.insert(store.reported_build(n.build_id).await?);
        }
        let prepared = match (state.config.reporter(&n.reporter), &builds[&n.build_id]) {
            (None, _) => Err(format!("reporter {:?} is no longer configured", n.reporter)),
            (_, None) => Err(format!("build {} no longer exists", n.build_id)),
            (Some(r), Some(b)) => payload::prepare(r, b, n.phase, &dashboard(r)),
        };
        if let Err(reason) = &prepared {
            tracing::info!(delivery = n.id, reporter = %n.reporter, %reason, "reporters: nothing to report");
        }
        store.prepare_delivery(n.id, prepared).await?;
    }
    Ok(())
}

/// Send one claimed delivery and record how it went.
async fn deliver(
    state: &Arc<MasterState>,
    client: &reqwest::Client,
    me: i64,
    d: Delivery,
    claimed_at: Instant,
) -> Result<(), crate::db::DbError> {
    let store = &state.store;
    let Some(reporter) = state.config.reporter(&d.reporter) else {
        let outcome = DeliveryOutcome::Refused {
            http_status: 0,
            error: format!("reporter {:?} is no longer configured", d.reporter),
        };
        store.record_delivery(me, d.id, &outcome).await?;
        return Ok(());
    };
    if store.supersede_if_outdated(me, &d).await? {
        tracing::info!(delivery = d.id, reporter = %d.reporter, "reporters: superseded by a newer status already sent");
        return Ok(());
    }
    let timeout = request_timeout(state, reporter);
    // Send only while not fenced: then this master's last confirmed
    // heartbeat is younger than its fence, so no one may declare it dead
    // (and take the row over) for more than `master_timeout / 2`, and the
    // send ends within `master_timeout / 4`. The lease (2 x
    // `master_timeout` from the claim) is kept by the second condition.
    let lease_left = state.config.cluster.master_timeout.get();
    if !state.may_claim() || claimed_at.elapsed() + timeout > lease_left {
        store.release_delivery(me, d.id).await?;
        return Ok(());
    }
    let secrets = crate::secrets::Secrets::new(&state.config.secrets);
    let outcome = send::send(client, reporter, &secrets, &d, timeout).await;
    let recorded = store.record_delivery(me, d.id, &outcome).await?;
    let name = d.reporter.clone();
    match (&outcome, recorded) {
        (DeliveryOutcome::Sent { .. }, _) => {
            metrics::counter!(REPORTER_DELIVERIES_SENT, "reporter" => name).increment(1);
            tracing::debug!(delivery = d.id, status = %d.status, "reporters: sent");
        }
        (DeliveryOutcome::Refused { error, .. }, _) => {
            metrics::counter!(REPORTER_DELIVERIES_FAILED, "reporter" => name, "final" => "true")
                .increment(1);
            tracing::warn!(delivery = d.id, reporter = %d.reporter, %error, "reporters: delivery refused; giving up");
        }
        (DeliveryOutcome::Failed { error, .. }, Some(DeliveryState::Failed)) => {
            metrics::counter!(REPORTER_DELIVERIES_FAILED, "reporter" => name, "final" => "true")
                .increment(1);
            tracing::warn!(delivery = d.id, reporter = %d.reporter, %error, "reporters: delivery still failing past its retry horizon; giving up");
        }
        (DeliveryOutcome::Failed { error, delay, .. }, _) => {
            metrics::counter!(REPORTER_DELIVERIES_FAILED, "reporter" => name, "final" => "false")
                .increment(1);
            tracing::info!(delivery = d.id, reporter = %d.reporter, %error, ?delay, "reporters: delivery failed; trying again later");
        }
    }
    if recorded.is_none() {
        tracing::warn!(
            delivery = d.id,
            "reporters: the claim was taken over before the outcome was recorded"
        );
    }
    Ok(())
}
