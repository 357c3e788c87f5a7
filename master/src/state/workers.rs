//! The workers the gateway routed to this master, and the commands running
//! on them. A worker is known by its gateway link and session; output and
//! exit messages are handed to the build that started the command.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use flotilla_proto::v1::{
    CommandExit, GatewayMessage, Interrupt, MasterToGateway, Reconnect, RunCommand, ToWorker,
    gateway_message, master_to_gateway,
};
use tokio::sync::mpsc;

/// A worker session on one gateway link.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct WorkerKey {
    pub link: u64,
    pub session: u64,
}

/// What a running command reports to the build that started it.
#[derive(Debug)]
pub enum CommandEvent {
    Output(Vec<u8>),
    Exit(CommandExit),
    /// The worker went away (its stream ended, or this master's link did).
    Lost(String),
}

#[derive(Debug)]
struct Attached {
    name: String,
    worker_id: i64,
    builders: Vec<i64>,
    busy: bool,
    link_tx: mpsc::Sender<MasterToGateway>,
    commands: HashSet<u64>,
    /// Messages it sent about other sessions' commands.
    foreign: u32,
}

#[derive(Debug, Default)]
struct Inner {
    workers: HashMap<WorkerKey, Attached>,
    commands: HashMap<u64, (WorkerKey, mpsc::Sender<CommandEvent>)>,
}

/// An idle worker the claim loop may give a request to.
#[derive(Clone, Debug)]
pub struct IdleWorker {
    pub key: WorkerKey,
    pub name: String,
    pub worker_id: i64,
    pub builders: Vec<i64>,
}

/// Output chunks a build may have in flight before the link waits for it.
const COMMAND_QUEUE: usize = 64;
/// Foreign messages of one worker logged before the rest are only counted.
const FOREIGN_LOGGED: u32 = 3;

#[derive(Debug, Default)]
pub struct WorkerRegistry {
    inner: Mutex<Inner>,
}

impl WorkerRegistry {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn attach(
        &self,
        key: WorkerKey,
        name: String,
        worker_id: i64,
        builders: Vec<i64>,
        link_tx: mpsc::Sender<MasterToGateway>,
    ) {
        let mut inner = self.lock();
        // A worker name lives once per master: a reconnect replaces the old session.
        let stale: Vec<WorkerKey> = inner
            .workers
            .iter()
            .filter(|(k, w)| w.name == name && **k != key)
            .map(|(k, _)| *k)
            .collect();
        for k in stale {
            lose(&mut inner, k, "the worker connected again");
        }
        inner.workers.insert(
            key,
            Attached {
                name,
                worker_id,
                builders,
                busy: false,
                link_tx,
                commands: HashSet::new(),
                foreign: 0,
            },
        );
    }

    /// The worker left; its running commands are reported lost.
    pub fn detach(&self, key: WorkerKey, reason: &str) {
        lose(&mut self.lock(), key, reason);
    }

    /// A gateway link ended: every worker on it is gone.
    pub fn detach_link(&self, link: u64, reason: &str) {
        let mut inner = self.lock();
        let keys: Vec<WorkerKey> = inner
            .workers
            .keys()
            .filter(|k| k.link == link)
            .copied()
            .collect();
        for k in keys {
            lose(&mut inner, k, reason);
        }
    }

    pub fn idle(&self) -> Vec<IdleWorker> {
        let mut idle: Vec<IdleWorker> = self
            .lock()
            .workers
            .iter()
            .filter(|(_, w)| !w.busy)
            .map(|(k, w)| IdleWorker {
                key: *k,
                name: w.name.clone(),
                worker_id: w.worker_id,
                builders: w.builders.clone(),
            })
            .collect();
        idle.sort_by(|a, b| a.name.cmp(&b.name));
        idle
    }

    /// Marks an idle worker busy; false if it is gone or already busy.
    pub fn reserve(&self, key: WorkerKey) -> bool {
        match self.lock().workers.get_mut(&key) {
            Some(w) if !w.busy => {
                w.busy = true;
                true
            }
            _ => false,
        }
    }

    pub fn release(&self, key: WorkerKey) {
        if let Some(w) = self.lock().workers.get_mut(&key) {
            w.busy = false;
        }
    }

    /// Sends a command to the worker; its events arrive on the returned receiver.
    pub async fn start_command(
        &self,
        key: WorkerKey,
        run: RunCommand,
    ) -> Result<mpsc::Receiver<CommandEvent>, String> {
        let command_id = run.command_id;
        let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
        let link_tx = {
            let mut inner = self.lock();
            let Some(w) = inner.workers.get_mut(&key) else {
                return Err("the worker is no longer connected".into());
            };
            w.commands.insert(command_id);
            let link_tx = w.link_tx.clone();
            inner.commands.insert(command_id, (key, tx));
            link_tx
        };
        let msg = to_worker(key.session, gateway_message::Msg::Run(run));
        if link_tx.send(msg).await.is_err() {
            self.finish_command(command_id);
            return Err("the gateway link closed".into());
        }
        Ok(rx)
    }

    /// Where to deliver an event of this command, if anyone still listens
    /// and `from` is the session the command was sent to. A message from any
    /// other session is dropped, logged and counted: command ids are a
    /// per-master sequence, easy to guess.
    pub fn command_sender(
        &self,
        from: WorkerKey,
        command_id: u64,
    ) -> Option<mpsc::Sender<CommandEvent>> {
        let mut inner = self.lock();
        match inner.commands.get(&command_id) {
            Some((owner, tx)) if *owner == from => Some(tx.clone()),
            Some((owner, _)) => {
                let owner = *owner;
                let sender = inner.workers.get(&from).map(|w| w.name.clone());
                if let Some(w) = inner.workers.get_mut(&from) {
                    w.foreign += 1;
                    if w.foreign > FOREIGN_LOGGED {
                        metrics::counter!(crate::metrics::FOREIGN_WORKER_MESSAGES).increment(1);
                        return None;
                    }
                }
                metrics::counter!(crate::metrics::FOREIGN_WORKER_MESSAGES).increment(1);
                tracing::warn!(
                    command = command_id,
                    ?from,
                    ?owner,
                    worker = sender.as_deref().unwrap_or("?"),
                    "dropped output or exit for a command sent to another worker session"
                );
                None
            }
            None => None,
        }
    }

    /// Whether this worker session is still attached.
    pub fn is_attached(&self, key: WorkerKey) -> bool {
        self.lock().workers.contains_key(&key)
    }

    /// Gives up on a worker that does not answer (e.g. did not confirm the
    /// interrupt of a command past its timeout): its commands are reported
    /// lost, and the gateway is told to drop the session.
    pub async fn drop_worker(&self, key: WorkerKey, reason: &str) {
        let tx = {
            let mut inner = self.lock();
            let tx = inner.workers.get(&key).map(|w| w.link_tx.clone());
            lose(&mut inner, key, reason);
            tx
        };
        if let Some(tx) = tx {
            let msg = to_worker(
                key.session,
                gateway_message::Msg::Reconnect(Reconnect {
                    reason: reason.to_owned(),
                }),
            );
            let _ = tx.send(msg).await;
        }
    }

    pub fn finish_command(&self, command_id: u64) {
        let mut inner = self.lock();
        if let Some((key, _)) = inner.commands.remove(&command_id)
            && let Some(w) = inner.workers.get_mut(&key)
        {
            w.commands.remove(&command_id);
        }
    }

    pub async fn interrupt(&self, key: WorkerKey, command_id: u64, reason: &str) {
        let tx = self.lock().workers.get(&key).map(|w| w.link_tx.clone());
        if let Some(tx) = tx {
            let msg = to_worker(
                key.session,
                gateway_message::Msg::Interrupt(Interrupt {
                    command_id,
                    reason: reason.to_owned(),
                }),
            );
            let _ = tx.send(msg).await;
        }
    }

    /// Hands idle workers back to the gateway (used while draining), which
    /// routes them to another master.
    pub async fn release_idle_to_gateway(&self, reason: &str) -> usize {
        self.release_to_gateway(|_| true, reason).await
    }

    /// Hands back the idle workers `pick` selects; returns how many went.
    pub async fn release_to_gateway(&self, pick: impl Fn(&str) -> bool, reason: &str) -> usize {
        let targets: Vec<(WorkerKey, mpsc::Sender<MasterToGateway>)> = {
            let mut inner = self.lock();
            let keys: Vec<WorkerKey> = inner
                .workers
                .iter()
                .filter(|(_, w)| !w.busy && pick(&w.name))
                .map(|(k, _)| *k)
                .collect();
            keys.into_iter()
                .filter_map(|k| inner.workers.remove(&k).map(|w| (k, w.link_tx)))
                .collect()
        };
        let n = targets.len();
        for (k, tx) in targets {
            let msg = to_worker(
                k.session,
                gateway_message::Msg::Reconnect(Reconnect {
                    reason: reason.to_owned(),
                }),
            );
            let _ = tx.send(msg).await;
        }
        n
    }

    pub fn count(&self) -> usize {
        self.lock().workers.len()
    }
}

fn lose(inner: &mut Inner, key: WorkerKey, reason: &str) {
    let Some(w) = inner.workers.remove(&key) else {
        return;
    };
    for id in w.commands {
        if let Some((_, tx)) = inner.commands.remove(&id) {
            // The build is waiting on this channel; a full queue means it is
            // busy storing output and will see the channel close instead.
            let _ = tx.try_send(CommandEvent::Lost(reason.to_owned()));
        }
    }
    tracing::info!(worker = %w.name, reason, "worker detached");
}

pub fn to_worker(session: u64, msg: gateway_message::Msg) -> MasterToGateway {
    MasterToGateway {
        msg: Some(master_to_gateway::Msg::ToWorker(ToWorker {
            session,
            msg: Some(GatewayMessage { msg: Some(msg) }),
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn output_and_exit_are_taken_only_from_the_session_the_command_went_to() {
        let reg = WorkerRegistry::default();
        let (link_tx, mut link_rx) = mpsc::channel(8);
        let a = WorkerKey {
            link: 1,
            session: 1,
        };
        let b = WorkerKey {
            link: 1,
            session: 2,
        };
        reg.attach(a, "a".into(), 1, vec![], link_tx.clone());
        reg.attach(b, "b".into(), 2, vec![], link_tx);
        let run = RunCommand {
            command_id: 7,
            ..RunCommand::default()
        };
        let _rx = reg.start_command(a, run).await.unwrap();
        assert!(link_rx.recv().await.is_some());
        assert!(reg.command_sender(a, 7).is_some());
        assert!(
            reg.command_sender(b, 7).is_none(),
            "another session's exit accepted"
        );
        let other_link = WorkerKey {
            link: 2,
            session: 1,
        };
        assert!(reg.command_sender(other_link, 7).is_none());
        assert!(reg.command_sender(a, 8).is_none());
    }
}
