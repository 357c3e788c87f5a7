//! The task tree of a running master: the one place that knows every task
//! and starts it. [`run`] registers this master's incarnation, builds the
//! shared [`MasterState`], starts the HTTP API, the gateway links, the
//! heartbeat and its watchdog, maintenance (renewal, reaping, stop
//! requests), the janitor, the claim loop, the schedulers and the change
//! sources, and on shutdown stops them in order.
//!
//! Shutdown is one tree of cancellation tokens: the graceful token stops
//! claiming and lets builds finish for up to `shutdown_grace`; the immediate
//! token (or the end of the grace) interrupts what still runs and hands the
//! requests back to the queue before the master marks itself inactive.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::ClusterConfig;
use crate::db::{DbError, Store};
use crate::runtime::incarnation::{self, RejoinError};
use crate::runtime::{build, claim_loop, heartbeat, link, maintenance};
use crate::state::{AbortReason, Liveness, MasterState};

pub use crate::state::Shutdown;

/// What `flotilla master` (or the quickstart) hands to [`run`].
#[derive(Debug)]
pub struct MasterOptions {
    pub config: Arc<ClusterConfig>,
    pub name: String,
    /// The HTTP API listener (bind port 0 in tests).
    pub http: TcpListener,
    /// A store whose schema is current.
    pub store: Store,
}

/// Why a master stopped; the binary maps each to an exit code (`src/exit.rs`).
#[derive(Debug, thiserror::Error)]
pub enum MasterError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("bad configuration: {0}")]
    Config(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error(
        "this master was declared dead by the cluster (it could not heartbeat in time); its builds were stopped"
    )]
    Fenced,
    /// Another live process runs under this master's name.
    #[error("{0}")]
    NameInUse(String),
}

/// Runs a master until shutdown. Registers a new incarnation, releases the
/// claims of older incarnations of the same name, and serves.
pub async fn run(opts: MasterOptions, shutdown: Shutdown) -> Result<(), MasterError> {
    crate::metrics::install();
    let store = opts.store;
    let config = opts.config;
    let mut passwords = HashMap::new();
    for w in &config.workers {
        let pw = w.resolve_password().map_err(MasterError::Config)?;
        passwords.insert(w.name.clone(), pw);
    }
    let names: Vec<String> = config.builders.iter().map(|b| b.name.clone()).collect();
    let builder_ids = store.ensure_builders(&names).await?;
    let beat = config.cluster.heartbeat_interval.get();
    let fence_after = Liveness::new(config.cluster.master_timeout.get(), beat).fence_after;
    if let Err(e) = incarnation::name_free(&store, &opts.name, None, beat, fence_after).await {
        return Err(match e {
            RejoinError::NameInUse(msg) => MasterError::NameInUse(msg),
            RejoinError::Db(e) => MasterError::Db(e),
        });
    }
    let registered_at = tokio::time::Instant::now();
    let me = store.register_master(&opts.name).await?;
    let released = store.release_older_incarnations(&me).await?;
    tracing::info!(
        master = %me.name,
        id = me.id,
        boot_time = %me.boot_time,
        released_from_older_incarnations = released.len(),
        "master registered"
    );
    let state = Arc::new(MasterState::new(
        config.clone(),
        store.clone(),
        me.name.clone(),
        me.id,
        builder_ids,
        passwords,
        shutdown.clone(),
    ));

    // Services that run until the very end (HTTP, links) stop on `stop_all`.
    let stop_all = CancellationToken::new();
    let http_state = state.clone();
    let http_stop = stop_all.clone();
    let http = tokio::spawn(crate::http::serve(opts.http, http_state, http_stop));
    let mut links = Vec::new();
    for (i, url) in config.gateway.master_urls().into_iter().enumerate() {
        links.push(tokio::spawn(link::run(
            state.clone(),
            i as u64,
            url,
            stop_all.clone(),
        )));
    }
    state.live.reset(registered_at);
    let beats = tokio::spawn(heartbeat::run(state.clone(), stop_all.clone()));
    let watchdog = tokio::spawn(heartbeat::watchdog(state.clone(), stop_all.clone()));
    let maintenance = tokio::spawn(maintenance::run(state.clone(), stop_all.clone()));
    tokio::spawn(crate::janitor::run_periodic(
        state.clone(),
        stop_all.clone(),
    ));
    crate::reporters::start(&state, &stop_all);
    let claim_stop = CancellationToken::new();
    let claimer = tokio::spawn(claim_loop::run(state.clone(), claim_stop.clone()));
    let schedulers = tokio::spawn(crate::schedulers::run(state.clone(), stop_all.clone()));
    let change_sources = tokio::spawn(crate::changesource::run(state.clone(), stop_all.clone()));

    shutdown.graceful.cancelled().await;
    state.draining.store(true, Ordering::SeqCst);
    // Recorded so that every master's API and dashboard show the drain.
    // Bounded: a database that is down must not hold up the drain itself.
    match tokio::time::timeout(
        Duration::from_secs(2),
        store.set_draining(state.master_id(), true),
    )
    .await
    {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "could not record draining in the database"),
        Err(_) => tracing::warn!("recording draining in the database timed out"),
    }
    state.wake.notify_waiters();
    drain_running(&state).await;
    claim_stop.cancel();
    let _ = claimer.await;
    state.tasks.close();
    state.tasks.wait().await;
    // Hand back anything still claimed (nothing, normally) and leave the cluster.
    if let Err(e) = build::retry_transient(|| store.deactivate_master(state.master_id())).await {
        tracing::error!(error = %e, "could not mark this master inactive; others will reap it after master_timeout");
    }
    stop_all.cancel();
    let _ = beats.await;
    let _ = watchdog.await;
    let _ = maintenance.await;
    let _ = schedulers.await;
    let _ = change_sources.await;
    for l in links {
        let _ = l.await;
    }
    let _ = http.await;
    if let Some(reason) = state.take_fatal() {
        return Err(MasterError::NameInUse(reason));
    }
    tracing::info!("master stopped");
    Ok(())
}

/// Lets running builds finish for up to `shutdown_grace` (less on a second
/// signal), then interrupts the rest; their requests go back to the queue.
async fn drain_running(state: &MasterState) {
    let grace = state.config.cluster.shutdown_grace.get();
    let count = state.running_count();
    if count > 0 {
        tracing::info!(running = count, grace = ?grace, "waiting for running builds to finish");
    }
    let deadline = tokio::time::Instant::now() + grace;
    while state.running_count() > 0 {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            _ = state.shutdown.immediate.cancelled() => break,
            _ = tokio::time::sleep_until(deadline) => break,
        }
    }
    if state.running_count() > 0 {
        tracing::warn!(
            running = state.running_count(),
            "handing unfinished builds back to the queue"
        );
        state.abort_builds(None, AbortReason::Shutdown);
    }
}
