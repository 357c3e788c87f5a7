//! A worker that misbehaves on command, speaking the real gRPC protocol
//! (`flotilla-proto`) to a real gateway: wrong passwords under live names,
//! duplicate names, forged output and exits for other sessions' command ids,
//! silence with the socket open, oversize messages.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use flotilla_proto::v1::gateway_message::Msg as GwMsg;
use flotilla_proto::v1::worker_gateway_client::WorkerGatewayClient;
use flotilla_proto::v1::worker_message::Msg as WMsg;
use flotilla_proto::v1::{
    CommandExit, CommandOutput, Heartbeat, OutputStream, Register, RunCommand, WorkerMessage,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;

/// What the gateway sent, or how the session ended.
#[derive(Debug)]
pub enum Event {
    Msg(GwMsg),
    /// The stream ended: `Ok` for a clean end, else its status.
    End(Result<(), tonic::Status>),
}

/// One session of a hand-driven worker.
pub struct BadWorker {
    pub name: String,
    tx: mpsc::Sender<WorkerMessage>,
    events: mpsc::UnboundedReceiver<Event>,
    /// Answer the gateway's `Ping`s (a live worker) or not (a silent one).
    answer_pings: Arc<AtomicBool>,
    reader: JoinHandle<()>,
}

impl Drop for BadWorker {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// Opens a session on the gateway at `port` and sends `Register`.
pub async fn connect(port: u16, name: &str, password: &str) -> Result<BadWorker, tonic::Status> {
    let mut client = WorkerGatewayClient::connect(format!("http://127.0.0.1:{port}"))
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?
        .max_encoding_message_size(64 * 1024 * 1024);
    let (tx, rx) = mpsc::channel(64);
    tx.send(WorkerMessage {
        msg: Some(WMsg::Register(Register {
            name: name.to_owned(),
            password: password.to_owned(),
            protocol_version: flotilla_proto::PROTOCOL_VERSION,
            facts: HashMap::from([("os".to_owned(), "bad-worker".to_owned())]),
        })),
    })
    .await
    .expect("fresh queue");
    let mut inbound = client.session(ReceiverStream::new(rx)).await?.into_inner();
    let (ev_tx, events) = mpsc::unbounded_channel();
    let answer_pings = Arc::new(AtomicBool::new(true));
    let reader = {
        let tx = tx.clone();
        let answer = answer_pings.clone();
        tokio::spawn(async move {
            loop {
                match inbound.message().await {
                    Ok(Some(m)) => {
                        let Some(msg) = m.msg else { continue };
                        if matches!(msg, GwMsg::Ping(_)) && answer.load(Ordering::SeqCst) {
                            let hb = WorkerMessage {
                                msg: Some(WMsg::Heartbeat(Heartbeat { running: vec![] })),
                            };
                            let _ = tx.try_send(hb);
                        }
                        let _ = ev_tx.send(Event::Msg(msg));
                    }
                    Ok(None) => {
                        let _ = ev_tx.send(Event::End(Ok(())));
                        return;
                    }
                    Err(status) => {
                        let _ = ev_tx.send(Event::End(Err(status)));
                        return;
                    }
                }
            }
        })
    };
    Ok(BadWorker {
        name: name.to_owned(),
        tx,
        events,
        answer_pings,
        reader,
    })
}

impl BadWorker {
    /// The next event other than a `Ping`, within `wait`.
    pub async fn next(&mut self, wait: Duration) -> Option<Event> {
        let until = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(until, self.events.recv()).await {
                Ok(Some(Event::Msg(GwMsg::Ping(_)))) => continue,
                Ok(ev) => return ev,
                Err(_) => return None,
            }
        }
    }

    /// `Ok(master)` once registered, `Err(reason)` when refused or ended.
    pub async fn registration(&mut self) -> Result<String, String> {
        match self.next(Duration::from_secs(30)).await {
            Some(Event::Msg(GwMsg::Registered(r))) => Ok(r.master),
            Some(Event::Msg(GwMsg::Refused(r))) => Err(r.reason),
            Some(Event::End(Err(s))) => Err(format!("{:?}: {}", s.code(), s.message())),
            other => Err(format!("no answer to Register: {other:?}")),
        }
    }

    /// Waits for the master to send a command.
    pub async fn wait_run(&mut self, wait: Duration) -> Option<RunCommand> {
        let until = tokio::time::Instant::now() + wait;
        loop {
            let left = until.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await? {
                Event::Msg(GwMsg::Run(run)) => return Some(run),
                Event::End(_) => return None,
                Event::Msg(_) => {}
            }
        }
    }

    /// Waits for the session to end; its status (None: not within `wait`).
    pub async fn ended(&mut self, wait: Duration) -> Option<Result<(), tonic::Status>> {
        let until = tokio::time::Instant::now() + wait;
        loop {
            let left = until.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await? {
                Event::End(r) => return Some(r),
                Event::Msg(_) => {}
            }
        }
    }

    /// Stops answering `Ping` and sends nothing more; the socket stays open.
    pub fn go_silent(&self) {
        self.answer_pings.store(false, Ordering::SeqCst);
    }

    pub async fn send(&self, msg: WMsg) -> bool {
        self.tx.send(WorkerMessage { msg: Some(msg) }).await.is_ok()
    }

    /// A `CommandExit` for a command id this session may never have been sent.
    pub async fn forge_exit(&self, command_id: u64, exit_code: i32) -> bool {
        self.send(WMsg::Exit(CommandExit {
            command_id,
            exit_code: Some(exit_code),
            elapsed_ms: 1,
            ..CommandExit::default()
        }))
        .await
    }

    /// A `CommandOutput` for a command id this session may never have been sent.
    pub async fn forge_output(&self, command_id: u64, data: &[u8]) -> bool {
        self.send(WMsg::Output(CommandOutput {
            command_id,
            stream: OutputStream::Stdout as i32,
            data: data.to_vec(),
        }))
        .await
    }

    /// One `CommandOutput` of `bytes` bytes.
    pub async fn oversize(&self, bytes: usize) -> bool {
        self.send(WMsg::Output(CommandOutput {
            command_id: 1,
            stream: OutputStream::Stdout as i32,
            data: vec![b'x'; bytes],
        }))
        .await
    }
}
