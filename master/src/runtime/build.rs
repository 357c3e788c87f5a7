//! Running one build: record it (fenced on the claim), run the builder's
//! steps in order on the worker, store each step's log and result, then
//! complete the request — or, when the build cannot finish here, hand the
//! request straight back to the queue.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flotilla_proto::v1::{CommandExit, RunCommand};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::build_log::{BuildLog, FLUSH_EVERY};
use crate::config::StepConfig;
use crate::db::{BuildRow, DbError, RequestDetails, Results};
use crate::state::{AbortReason, CommandEvent, IdleWorker, MasterState, RunningBuild};

/// How long to wait for a worker to confirm an interrupted command ended.
const INTERRUPT_WAIT: Duration = Duration::from_secs(10);
/// A worker reports a command past its `timeout` itself (after killing it,
/// which takes up to a few seconds); past this much more, the master
/// interrupts it, and after `INTERRUPT_WAIT` gives up on the worker.
const TIMEOUT_SLACK: Duration = Duration::from_secs(5);
/// Transient database errors are retried for about this long.
const RETRY_FOR: Duration = Duration::from_secs(60);
/// Deadline of one attempt in [`retry_transient`]: a silent connection
/// must not hang a build (its outcome is then unknown, so every operation
/// retried this way is safe to replay).
const ATTEMPT_DEADLINE: Duration = Duration::from_secs(10);

/// Starts the build of a claimed request on a reserved worker.
pub fn spawn(state: Arc<MasterState>, request_id: i64, builder_id: i64, worker: IdleWorker) {
    let cancel = CancellationToken::new();
    let reason = Arc::new(Mutex::new(None));
    {
        let mut running = state.lock_running();
        if running.contains_key(&request_id) {
            // Claimed again while its build still runs here (the claim was
            // released under it, e.g. by an expired lease): never a second
            // build of one request on one master.
            drop(running);
            tracing::warn!(
                request = request_id,
                "claimed a request whose build already runs here; not starting it twice"
            );
            state.workers.release(worker.key);
            return;
        }
        running.insert(
            request_id,
            RunningBuild {
                request_id,
                cancel: cancel.clone(),
                reason: reason.clone(),
            },
        );
    }
    let tracker = state.tasks.clone();
    tracker.spawn(async move {
        let ctx = BuildCtx {
            state: &state,
            request_id,
            worker: &worker,
            cancel: &cancel,
            reason: &reason,
        };
        if let Err(e) = ctx.run(builder_id).await {
            tracing::error!(request = request_id, error = %e, "build failed on a database error");
            // Best effort: put the request back at once rather than after the lease.
            let _ = state.store.unclaim(state.master_id(), &[request_id]).await;
        }
        state.lock_running().remove(&request_id);
        state.workers.release(worker.key);
        state.wake.notify_one();
    });
}

/// Retries an operation while its error is transient (lost connection,
/// deadlock, database briefly away).
pub async fn retry_transient<T, F, Fut>(mut op: F) -> Result<T, DbError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, DbError>>,
{
    let start = tokio::time::Instant::now();
    let mut delay = Duration::from_millis(50);
    loop {
        match crate::db::within(ATTEMPT_DEADLINE, op()).await {
            Err(e) if e.is_transient() && start.elapsed() < RETRY_FOR => {
                tracing::debug!(error = %e, "transient database error; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
            other => return other,
        }
    }
}

struct BuildCtx<'a> {
    state: &'a Arc<MasterState>,
    request_id: i64,
    worker: &'a IdleWorker,
    cancel: &'a CancellationToken,
    reason: &'a Mutex<Option<AbortReason>>,
}

/// What [`BuildCtx::run_step`] runs.
struct StepInput<'a> {
    step: &'a StepConfig,
    /// The environment every step gets (without the builder's own).
    env: &'a HashMap<String, String>,
    builder_env: &'a std::collections::BTreeMap<String, String>,
    workdir_base: &'a str,
    log_id: i64,
    details: &'a RequestDetails,
    build_id: i64,
}

struct StepOutcome {
    results: Results,
    state: String,
    aborted: Option<AbortReason>,
}

impl BuildCtx<'_> {
    fn abort_reason(&self) -> AbortReason {
        self.reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .unwrap_or(AbortReason::Shutdown)
    }

    async fn run(&self, builder_id: i64) -> Result<(), DbError> {
        let st = self.state;
        let store = &st.store;
        let me = st.master_id();
        let ids = [self.request_id];
        let Some(details) = retry_transient(|| store.request_details(&ids)).await?.pop() else {
            return Ok(());
        };
        let Some(builder) = st.config.builder(&details.builder).cloned() else {
            tracing::error!(builder = %details.builder, "claimed a request for a builder not in the cluster file");
            store.unclaim(me, &[self.request_id]).await?;
            return Ok(());
        };
        if !st.may_claim() {
            tracing::warn!(
                request = self.request_id,
                "fenced before the build started; handing the request back"
            );
            store.unclaim(me, &[self.request_id]).await?;
            return Ok(());
        }
        if !st.workers.is_attached(self.worker.key) {
            // Gone between the claim and now (e.g. many workers dropped at
            // once): no build row for it; the request goes straight back.
            tracing::info!(request = self.request_id, worker = %self.worker.name, "worker left before the build started; request handed back");
            store.unclaim(me, &ids).await?;
            return Ok(());
        }
        let build = retry_transient(|| {
            store.start_build(me, self.request_id, builder_id, self.worker.worker_id)
        })
        .await?;
        let Some(build) = build else {
            tracing::warn!(
                request = self.request_id,
                "claim lost before the build started"
            );
            return Ok(());
        };
        tracing::info!(
            request = self.request_id,
            build = build.id,
            number = build.number,
            builder = %details.builder,
            worker = %self.worker.name,
            "build started"
        );
        metrics::gauge!(crate::metrics::RUNNING_BUILDS).increment(1.0);
        let started = std::time::Instant::now();
        let env = step_env(st, &details, &build, &self.worker.name);
        // Every secret value this build resolved so far: each step's log
        // masks them all (a value written to disk by one step may be
        // printed by the next).
        let mut secret_values: Vec<String> = Vec::new();
        let mut step_ids = Vec::with_capacity(builder.steps.len());
        for (i, step) in builder.steps.iter().enumerate() {
            step_ids
                .push(retry_transient(|| store.add_step(build.id, i as i32, &step.name)).await?);
        }
        let workdir_base = sanitize(&details.builder);
        let mut overall = Results::Success;
        let mut halted = false;
        let mut aborted = None;
        let mut failed_step: Option<String> = None;
        for (step, &step_id) in builder.steps.iter().zip(&step_ids) {
            if halted || aborted.is_some() {
                retry_transient(|| store.finish_step(step_id, Results::Skipped, "skipped")).await?;
                continue;
            }
            show_state(store, build.id, &format!("running {}", step.name)).await;
            retry_transient(|| store.start_step(step_id)).await?;
            let log_id = retry_transient(|| store.create_log(step_id, "stdio")).await?;
            let outcome = self
                .run_step(
                    StepInput {
                        step,
                        env: &env,
                        builder_env: &builder.env,
                        workdir_base: &workdir_base,
                        log_id,
                        details: &details,
                        build_id: build.id,
                    },
                    &mut secret_values,
                )
                .await?;
            retry_transient(|| store.finish_step(step_id, outcome.results, &outcome.state)).await?;
            if outcome.results != Results::Skipped {
                overall = overall.worst(outcome.results);
            }
            if failed_step.is_none()
                && matches!(outcome.results, Results::Failure | Results::Exception)
            {
                failed_step = Some(step.name.clone());
            }
            if matches!(outcome.results, Results::Failure | Results::Exception)
                && step.halt_on_failure
            {
                halted = true;
            }
            aborted = outcome.aborted;
        }
        let result = match aborted {
            None => {
                let done = retry_transient(|| {
                    store.finish_build(me, build.id, self.request_id, overall, true)
                })
                .await?;
                if !done {
                    tracing::warn!(
                        request = self.request_id,
                        "claim lost before completion; result not recorded"
                    );
                }
                overall
            }
            Some(AbortReason::Stopped) => {
                retry_transient(|| {
                    store.finish_build(me, build.id, self.request_id, Results::Cancelled, true)
                })
                .await?;
                Results::Cancelled
            }
            Some(reason) => {
                // Fenced: this unclaims only a request that is still ours.
                retry_transient(|| {
                    store.finish_build(me, build.id, self.request_id, Results::Retry, false)
                })
                .await?;
                tracing::warn!(
                    request = self.request_id,
                    ?reason,
                    "build interrupted; request handed back"
                );
                Results::Retry
            }
        };
        show_state(
            store,
            build.id,
            &build_summary(result, failed_step.as_deref()),
        )
        .await;
        metrics::gauge!(crate::metrics::RUNNING_BUILDS).decrement(1.0);
        metrics::histogram!(crate::metrics::BUILD_DURATION, "builder" => details.builder.clone(), "results" => result.name())
            .record(started.elapsed().as_secs_f64());
        metrics::counter!(crate::metrics::BUILDS_FINISHED, "builder" => details.builder.clone(), "results" => result.name())
            .increment(1);
        tracing::info!(request = self.request_id, build = build.id, results = %result, "build finished");
        Ok(())
    }

    async fn run_step(
        &self,
        input: StepInput<'_>,
        secret_values: &mut Vec<String>,
    ) -> Result<StepOutcome, DbError> {
        let StepInput {
            step,
            env,
            builder_env,
            workdir_base,
            log_id,
            details,
            build_id,
        } = input;
        let st = self.state;
        // Secrets are resolved now, just before the command goes out, and
        // only into this command: the step as stored and shown keeps its
        // references.
        let secrets = crate::secrets::Secrets::new(&st.config.secrets);
        let resolved = crate::secrets::resolve_step(&secrets, step, builder_env, secret_values);
        let mut log = BuildLog::new(st.store.clone(), log_id)
            .masked(crate::secrets::Masker::new(secret_values.iter()));
        let resolved = match resolved {
            Ok(r) => r,
            Err(e) => {
                log.note(&format!("cannot run this step: {e}")).await?;
                log.close().await?;
                let what = e.name().map_or_else(
                    || "bad secret reference".to_owned(),
                    |n| format!("secret {n} unavailable"),
                );
                return Ok(StepOutcome {
                    results: Results::Failure,
                    state: what,
                    aborted: None,
                });
            }
        };
        if step.kind == "trigger" {
            let (results, state) =
                super::steps::trigger(st, step, details, build_id, &mut log, self.cancel).await?;
            log.close().await?;
            let aborted = self.cancel.is_cancelled().then(|| self.abort_reason());
            return Ok(StepOutcome {
                results,
                state,
                aborted,
            });
        }
        let (argv, files) = super::steps::command_for(&resolved.step, details);
        let command_id = st
            .next_command
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let mut step_env: HashMap<String, String> = resolved.builder_env.into_iter().collect();
        step_env.extend(env.clone());
        step_env.extend(resolved.step.env);
        let workdir = match &step.workdir {
            Some(w) => format!("{workdir_base}/{w}"),
            None => format!("{workdir_base}/build"),
        };
        let run = RunCommand {
            command_id,
            argv,
            env: step_env,
            workdir,
            timeout_ms: step.timeout.map_or(0, |t| t.get().as_millis() as u64),
            files,
        };
        let shown = super::steps::describe(step).unwrap_or_else(|| shell_words(&step.command));
        log.note(&format!("$ {shown}")).await?;
        if st.live.is_fenced() || !st.live.fresh() {
            // No command goes out from a fenced master.
            self.reason
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get_or_insert(AbortReason::LostClaim);
            self.cancel.cancel();
            log.note("not started: this master is fenced").await?;
            log.close().await?;
            return Ok(StepOutcome {
                results: Results::Retry,
                state: "fenced".into(),
                aborted: Some(self.abort_reason()),
            });
        }
        let mut rx = match st.workers.start_command(self.worker.key, run).await {
            Ok(rx) => rx,
            Err(e) => {
                log.note(&format!("could not start the command: {e}"))
                    .await?;
                log.close().await?;
                return Ok(StepOutcome {
                    results: Results::Retry,
                    state: "worker lost".into(),
                    aborted: Some(AbortReason::WorkerLost),
                });
            }
        };
        let step_timeout = step.timeout.map(|t| t.get());
        let outcome = match self
            .follow(command_id, step_timeout, &mut rx, &mut log)
            .await
        {
            Ok(o) => o,
            Err(e) => {
                // A database error while the command may still run: stop it
                // and see it end before the request can go back to the queue.
                self.stop_command(command_id, &mut rx).await;
                st.workers.finish_command(command_id);
                return Err(e);
            }
        };
        st.workers.finish_command(command_id);
        log.close().await?;
        Ok(outcome)
    }

    /// Interrupts a command and waits (up to [`INTERRUPT_WAIT`]) for its
    /// worker to confirm its end. A worker that does not confirm gets no
    /// more work: it is detached here, as if it had left.
    async fn stop_command(&self, command_id: u64, rx: &mut mpsc::Receiver<CommandEvent>) {
        let st = self.state;
        st.workers
            .interrupt(
                self.worker.key,
                command_id,
                "the master cannot record this build",
            )
            .await;
        let confirmed = tokio::time::timeout(INTERRUPT_WAIT, async {
            loop {
                match rx.recv().await {
                    Some(CommandEvent::Output(_)) => continue,
                    Some(CommandEvent::Exit(_)) => return true,
                    Some(CommandEvent::Lost(why)) => return why != super::link::LINK_CLOSED,
                    None => return false,
                }
            }
        })
        .await
        .unwrap_or(false);
        if !confirmed {
            tracing::error!(
                worker = %self.worker.name,
                request = self.request_id,
                "the worker did not confirm the end of an interrupted command; giving it no more work"
            );
            st.workers
                .detach(self.worker.key, "did not confirm an interrupted command");
            wait_for_gateway_fence(st).await;
        }
    }

    /// Follows a running command to its end, storing its output.
    async fn follow(
        &self,
        command_id: u64,
        step_timeout: Option<Duration>,
        rx: &mut mpsc::Receiver<CommandEvent>,
        log: &mut BuildLog,
    ) -> Result<StepOutcome, DbError> {
        let st = self.state;
        let mut interrupted: Option<AbortReason> = None;
        let far = tokio::time::Instant::now() + Duration::from_secs(86400 * 365);
        let mut give_up = far;
        // The step's timeout, enforced here too: a wedged worker never reports it.
        let mut overdue_at =
            step_timeout.map_or(far, |t| tokio::time::Instant::now() + t + TIMEOUT_SLACK);
        let mut overdue = false;
        let mut tick = tokio::time::interval(FLUSH_EVERY);
        let outcome = loop {
            tokio::select! {
                ev = rx.recv() => match ev {
                    Some(CommandEvent::Output(data)) => log.write(&data).await?,
                    Some(CommandEvent::Exit(exit)) => {
                        let mut o = exit_outcome(&exit);
                        if overdue && interrupted.is_none() {
                            o.results = Results::Failure;
                            o.state = "timed out; interrupted by the master".into();
                        }
                        if let Some(reason) = interrupted {
                            o.aborted = Some(reason);
                            o.results = if reason == AbortReason::Stopped { Results::Cancelled } else { Results::Retry };
                            o.state = format!("interrupted ({reason:?})");
                        }
                        if !exit.error.is_empty() {
                            log.note(&format!("could not run the command: {}", exit.error)).await?;
                        }
                        log.note(&format!("{} (elapsed {} ms)", o.state, exit.elapsed_ms)).await?;
                        break o;
                    }
                    Some(CommandEvent::Lost(why)) => {
                        log.note(&format!("worker lost: {why}")).await?;
                        if why == super::link::LINK_CLOSED {
                            wait_for_gateway_fence(st).await;
                        }
                        break lost_outcome(interrupted);
                    }
                    None => {
                        log.note("worker lost").await?;
                        break lost_outcome(interrupted);
                    }
                },
                _ = self.cancel.cancelled(), if interrupted.is_none() => {
                    let reason = self.abort_reason();
                    interrupted = Some(reason);
                    give_up = tokio::time::Instant::now() + INTERRUPT_WAIT;
                    log.note(&format!("interrupting the command: {reason:?}")).await?;
                    st.workers.interrupt(self.worker.key, command_id, &format!("{reason:?}")).await;
                }
                _ = tokio::time::sleep_until(overdue_at), if !overdue && interrupted.is_none() => {
                    overdue = true;
                    overdue_at = far;
                    give_up = tokio::time::Instant::now() + INTERRUPT_WAIT;
                    let limit = step_timeout.unwrap_or_default();
                    tracing::warn!(request = self.request_id, worker = %self.worker.name, command = command_id, ?limit,
                        "the worker did not end a command past its timeout; interrupting it");
                    log.note(&format!("the worker did not end the command within its timeout of {limit:?}; the master interrupts it")).await?;
                    st.workers.interrupt(self.worker.key, command_id, "timeout exceeded (enforced by the master)").await;
                }
                _ = tokio::time::sleep_until(give_up) => {
                    log.note("the worker did not confirm the interrupt").await?;
                    if overdue && interrupted.is_none() {
                        let why = "frozen: did not end a command past its timeout nor confirm its interrupt";
                        tracing::warn!(request = self.request_id, worker = %self.worker.name, "{why}; dropping the worker");
                        st.workers.drop_worker(self.worker.key, why).await;
                    } else {
                        st.workers.detach(self.worker.key, "did not confirm an interrupted command");
                        wait_for_gateway_fence(st).await;
                    }
                    break lost_outcome(interrupted);
                }
                _ = tick.tick() => {
                    if log.flush_due() {
                        log.flush().await?;
                    }
                }
            }
        };
        Ok(outcome)
    }
}

/// Records the build's one-line state (`running <step>`, then its result).
/// It is for people: one short attempt, and a failure is only logged, so a
/// database that is away never delays or fails the build over it.
async fn show_state(store: &crate::db::Store, build_id: i64, state: &str) {
    let attempt = crate::db::within(
        Duration::from_secs(2),
        store.set_build_state(build_id, state),
    );
    if let Err(e) = attempt.await {
        tracing::debug!(error = %e, build = build_id, state, "could not record the build's state");
    }
}

/// The build's one-line state once it ended: its result, and the first
/// step that failed.
fn build_summary(result: Results, failed_step: Option<&str>) -> String {
    match (result, failed_step) {
        (Results::Failure | Results::Exception, Some(step)) => format!("{result} in {step}"),
        _ => result.to_string(),
    }
}

/// When a command's end was not confirmed (its gateway link closed or went
/// silent, or its worker ignored an interrupt), the request must not go back
/// to the queue before the gateway has fenced this master's link and
/// interrupted the command: wait out the link's silence timeout, plus a
/// second for the interrupt to reach the worker.
async fn wait_for_gateway_fence(st: &MasterState) {
    tokio::time::sleep(super::link::link_silence(st) + Duration::from_secs(1)).await;
}

fn lost_outcome(interrupted: Option<AbortReason>) -> StepOutcome {
    StepOutcome {
        results: Results::Retry,
        state: "worker lost".into(),
        aborted: Some(interrupted.unwrap_or(AbortReason::WorkerLost)),
    }
}

fn exit_outcome(exit: &CommandExit) -> StepOutcome {
    let (results, state) = if !exit.error.is_empty() {
        (Results::Exception, "could not start".to_owned())
    } else if exit.timed_out {
        (Results::Failure, "timed out; killed".to_owned())
    } else if let Some(code) = exit.exit_code {
        if code == 0 {
            (Results::Success, "exit code 0".to_owned())
        } else {
            (Results::Failure, format!("exit code {code}"))
        }
    } else if let Some(sig) = exit.signal {
        (Results::Failure, format!("killed by signal {sig}"))
    } else {
        (Results::Exception, "ended without a status".to_owned())
    };
    StepOutcome {
        results,
        state,
        aborted: None,
    }
}

/// The environment every step gets (docs/configuration.md); the builder's
/// own goes under it, with its secrets resolved step by step.
fn step_env(
    st: &MasterState,
    req: &RequestDetails,
    build: &BuildRow,
    worker: &str,
) -> HashMap<String, String> {
    let ss = req.sourcestamps.first().cloned().unwrap_or_default();
    let mut env: HashMap<String, String> = HashMap::new();
    env.insert("FLOTILLA_BUILDER".into(), req.builder.clone());
    env.insert("FLOTILLA_BUILD_ID".into(), build.id.to_string());
    env.insert("FLOTILLA_BUILD_NUMBER".into(), build.number.to_string());
    env.insert("FLOTILLA_BUILDREQUEST_ID".into(), req.id.to_string());
    env.insert("FLOTILLA_WORKER".into(), worker.to_owned());
    env.insert("FLOTILLA_MASTER".into(), st.name.clone());
    env.insert("FLOTILLA_REPOSITORY".into(), ss.repository);
    env.insert("FLOTILLA_BRANCH".into(), ss.branch.unwrap_or_default());
    env.insert("FLOTILLA_REVISION".into(), ss.revision.unwrap_or_default());
    for (k, v) in &req.properties {
        let value = match v {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let key: String = k
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_uppercase()
                } else {
                    '_'
                }
            })
            .collect();
        env.insert(format!("FLOTILLA_PROP_{key}"), value);
    }
    env
}

/// A builder name made safe as a directory name.
fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn shell_words(argv: &[String]) -> String {
    argv.iter()
        .map(|a| {
            if !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=:,".contains(c))
            {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}
