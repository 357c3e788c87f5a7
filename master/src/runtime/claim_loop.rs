//! The claim loop: whenever this master has idle workers, claim requests for
//! the builders they serve (compare-and-swap in the database), give each
//! won request to a worker and start its build.
//!
//! It wakes on a notification (work submitted through this master, a worker
//! attached or became idle) and otherwise every `poll_interval`, which is how
//! work submitted through other masters is found. Like Buildbot, a master
//! claims only what it can start at once, so a request never waits on a
//! master that has no free worker for it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::build;
use crate::db::{BuilderId, ClaimRound};
use crate::state::{IdleWorker, MasterState};

/// How long to back off after a database error.
const ERROR_BACKOFF: Duration = Duration::from_secs(1);

/// Runs until `stop`. While draining (or shutting down) it claims nothing and
/// hands idle workers back to the gateway, which routes them elsewhere.
pub async fn run(state: Arc<MasterState>, stop: CancellationToken) {
    let poll = state.config.cluster.poll_interval.get();
    loop {
        if stop.is_cancelled() {
            return;
        }
        if state.is_draining() {
            let handed = state
                .workers
                .release_idle_to_gateway("this master is draining")
                .await;
            if handed > 0 {
                tracing::info!(workers = handed, "handed idle workers back to the gateway");
            }
        } else if state.may_claim() {
            let deadline = state.config.cluster.master_timeout.get();
            match crate::db::within(deadline, claim_round(&state)).await {
                Ok(true) => continue,
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "claiming failed; retrying");
                    tokio::time::sleep(ERROR_BACKOFF).await;
                }
            }
        }
        tokio::select! {
            _ = state.wake.notified() => {}
            _ = tokio::time::sleep(poll) => {}
            _ = stop.cancelled() => {}
        }
    }
}

/// One round; true when it started builds (there may be more to claim).
async fn claim_round(state: &Arc<MasterState>) -> Result<bool, crate::db::DbError> {
    let idle = state.workers.idle();
    if idle.is_empty() {
        return Ok(false);
    }
    let mut wants: HashMap<i64, usize> = HashMap::new();
    for w in &idle {
        for b in &w.builders {
            *wants.entry(*b).or_default() += 1;
        }
    }
    // A worker serving several builders counts for each: cap every builder at
    // the number of idle workers so one round never claims more than it can run.
    let cap = idle.len();
    let mut wants: Vec<(i64, usize)> = wants.into_iter().map(|(b, n)| (b, n.min(cap))).collect();
    if wants.iter().map(|(_, n)| n).sum::<usize>() > cap {
        // Workers serving several builders count once per builder: claiming
        // all of that would win more than the workers can run (with every
        // worker on every builder, builders × workers) and give the rest back
        // at once. Look first, then claim what the idle workers can take.
        // Builders with `max_concurrent_builds` keep their wants: their
        // waiting work may not be claimable now (the limit is reached), and
        // counting a worker for it would leave that worker idle.
        let (limited, free): (Vec<_>, Vec<_>) = wants
            .into_iter()
            .partition(|(b, _)| builder_max_concurrent(state, *b).is_some());
        let candidates = state.store.claim_candidates(&free).await?;
        wants = fit_to_workers(state, &idle, candidates);
        wants.extend(limited);
    }
    wants.sort_by_key(|(b, _)| std::cmp::Reverse(builder_priority(state, *b)));
    if wants.is_empty() {
        return Ok(false);
    }
    let started = std::time::Instant::now();
    let round = claim_wants(state, &wants).await?;
    metrics::histogram!(crate::metrics::CLAIM_SECONDS).record(started.elapsed().as_secs_f64());
    metrics::counter!(crate::metrics::CLAIMS_ATTEMPTED)
        .increment(wants.iter().map(|(_, n)| *n as u64).sum());
    metrics::counter!(crate::metrics::CLAIMS_WON).increment(round.won().len() as u64);
    let won: Vec<(i64, i64)> = match round {
        ClaimRound::Won(won) => won.iter().map(|c| (c.request.0, c.builder.0)).collect(),
        ClaimRound::NothingToDo => return Ok(false),
        refused @ (ClaimRound::RefusedInactive | ClaimRound::LostRaces) => {
            // Declared dead (the next heartbeat tells this master so), or
            // beaten to rows it had locked: look again after a pause.
            tracing::warn!(outcome = ?refused, "claiming won nothing; retrying");
            tokio::time::sleep(ERROR_BACKOFF).await;
            return Ok(false);
        }
    };
    let mut free: Vec<IdleWorker> = idle;
    // Specialists first, as `fit_to_workers` counted on.
    free.sort_by_key(|w| w.builders.len());
    let mut leftovers = Vec::new();
    let mut assigned = Vec::new();
    for (request_id, builder_id) in won {
        match free.iter().position(|w| w.builders.contains(&builder_id)) {
            Some(i) => {
                let w = free.remove(i);
                if state.workers.reserve(w.key) {
                    assigned.push((request_id, builder_id, w));
                } else {
                    leftovers.push(request_id);
                }
            }
            None => leftovers.push(request_id),
        }
    }
    let any = !assigned.is_empty();
    for (request_id, builder_id, worker) in assigned {
        build::spawn(state.clone(), request_id, builder_id, worker);
    }
    if !leftovers.is_empty() {
        // Won more than the workers could take (another master took some of
        // the candidates weighed, so the pick reached further): give them back now.
        metrics::counter!(crate::metrics::CLAIMS_GIVEN_BACK).increment(leftovers.len() as u64);
        give_back(state, leftovers).await;
    }
    Ok(any)
}

/// How many requests to claim per builder so that each can go to its own
/// idle worker: the candidates best first (builder priority, request
/// priority, age), each taken by a free worker that serves its builder —
/// the one serving the fewest builders, so specialists go to their own work
/// and generalists stay free for the rest.
fn fit_to_workers(
    state: &MasterState,
    idle: &[IdleWorker],
    mut candidates: Vec<crate::db::Candidate>,
) -> Vec<(i64, usize)> {
    // Builder priority is a lookup in the configuration: once per candidate.
    candidates.sort_by_cached_key(|c| {
        (
            std::cmp::Reverse(builder_priority(state, c.builder_id)),
            std::cmp::Reverse(c.priority),
            c.submitted_at,
            c.id,
        )
    });
    let mut free: Vec<&IdleWorker> = idle.iter().collect();
    free.sort_by_key(|w| w.builders.len());
    let mut wants: HashMap<i64, usize> = HashMap::new();
    for c in candidates {
        if free.is_empty() {
            break;
        }
        if let Some(i) = free.iter().position(|w| w.builders.contains(&c.builder_id)) {
            free.remove(i);
            *wants.entry(c.builder_id).or_default() += 1;
        }
    }
    wants.into_iter().collect()
}

/// Unclaims requests this master cannot run, retrying through database
/// errors: a claim left behind would wait for the lease to run out.
async fn give_back(state: &MasterState, ids: Vec<i64>) {
    let mut delay = Duration::from_millis(100);
    for _ in 0..8 {
        match state.store.unclaim(state.master_id(), &ids).await {
            Ok(_) => return,
            Err(e) => {
                tracing::warn!(error = %e, "could not give back claims; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
    tracing::error!(requests = ?ids, "could not give back claims; they return to the queue when the lease expires");
}

fn builder_priority(state: &MasterState, builder_id: i64) -> i32 {
    state
        .config
        .builders
        .iter()
        .find(|b| state.builder_ids.get(&b.name) == Some(&builder_id))
        .map_or(0, |b| b.priority)
}

/// Claims for `wants`: builders with `max_concurrent_builds` one by one
/// within their limit, the rest in one round. What was won is in builder
/// priority order, then oldest request first: the order workers are given out.
async fn claim_wants(
    state: &MasterState,
    wants: &[(i64, usize)],
) -> Result<ClaimRound, crate::db::DbError> {
    let me = state.master_id();
    let (limited, free): (Vec<_>, Vec<_>) = wants
        .iter()
        .map(|(b, n)| (BuilderId(*b), *n))
        .partition(|(b, _)| builder_max_concurrent(state, b.0).is_some());
    let mut round = state.store.pick_and_claim_per_builder(me, &free).await?;
    for (b, n) in limited {
        let max = builder_max_concurrent(state, b.0).unwrap_or(u32::MAX);
        round = round.and(state.store.claim_within_limit(me, b, n, max).await?);
    }
    if let ClaimRound::Won(won) = &mut round {
        // Between builders of equal priority the oldest request goes first
        // (ids grow with submission), as Buildbot's default builder order
        // does: with fewer idle workers than builders asking, the longest
        // wait is served.
        won.sort_by_key(|c| {
            (
                std::cmp::Reverse(builder_priority(state, c.builder.0)),
                c.request,
            )
        });
    }
    Ok(round)
}

fn builder_max_concurrent(state: &MasterState, builder_id: i64) -> Option<u32> {
    state
        .config
        .builders
        .iter()
        .find(|b| state.builder_ids.get(&b.name) == Some(&builder_id))
        .and_then(|b| b.max_concurrent_builds)
}
