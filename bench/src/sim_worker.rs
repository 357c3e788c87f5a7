//! Light simulated workers: many in this one process, each with its own
//! gRPC connection to the gateway (as real workers have), speaking the
//! worker protocol with the generated client: register, answer every
//! `RunCommand` at once with a successful `CommandExit`, answer `Ping`
//! with a heartbeat, register again when asked to reconnect.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use flotilla_proto::v1::gateway_message::Msg as FromGateway;
use flotilla_proto::v1::worker_gateway_client::WorkerGatewayClient;
use flotilla_proto::v1::worker_message::Msg as ToGateway;
use flotilla_proto::v1::{CommandExit, Heartbeat, Register, WorkerMessage};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Endpoint;

/// A fleet of simulated workers; dropping it disconnects them all.
#[derive(Debug)]
pub struct SimWorkers {
    /// Workers currently registered with a master.
    pub registered: Arc<AtomicUsize>,
    /// Commands answered.
    pub commands: Arc<AtomicU64>,
    tasks: Vec<JoinHandle<()>>,
}

impl SimWorkers {
    /// Starts one simulated worker per name; each uses password `<name>-secret`.
    pub fn start(gateway: &str, names: &[String]) -> anyhow::Result<SimWorkers> {
        let endpoint = Endpoint::from_shared(gateway.to_owned())?
            .connect_timeout(Duration::from_secs(10))
            .tcp_nodelay(true);
        let registered = Arc::new(AtomicUsize::new(0));
        let commands = Arc::new(AtomicU64::new(0));
        let tasks = names
            .iter()
            .map(|name| {
                let (endpoint, name) = (endpoint.clone(), name.clone());
                let (registered, commands) = (registered.clone(), commands.clone());
                tokio::spawn(async move {
                    loop {
                        let r = session(&endpoint, &name, &registered, &commands).await;
                        if let Err(e) = r {
                            eprintln!("[sim worker {name}] {e}");
                        }
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                })
            })
            .collect();
        Ok(SimWorkers {
            registered,
            commands,
            tasks,
        })
    }

    pub fn registered(&self) -> usize {
        self.registered.load(Ordering::SeqCst)
    }
}

impl Drop for SimWorkers {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Marks a worker registered while it lives.
struct RegisteredGuard<'a>(Option<&'a AtomicUsize>);

impl Drop for RegisteredGuard<'_> {
    fn drop(&mut self) {
        if let Some(c) = self.0 {
            c.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// One connection: returns when the gateway ends it or asks for a reconnect.
async fn session(
    endpoint: &Endpoint,
    name: &str,
    registered: &AtomicUsize,
    commands: &AtomicU64,
) -> anyhow::Result<()> {
    let channel = endpoint.connect().await?;
    let mut client = WorkerGatewayClient::new(channel);
    let (tx, rx) = mpsc::channel(16);
    let facts = HashMap::from([("os".to_owned(), "simulated".to_owned())]);
    tx.send(WorkerMessage {
        msg: Some(ToGateway::Register(Register {
            name: name.to_owned(),
            password: format!("{name}-secret"),
            protocol_version: flotilla_proto::PROTOCOL_VERSION,
            facts,
        })),
    })
    .await?;
    let mut inbound = client.session(ReceiverStream::new(rx)).await?.into_inner();
    let mut guard = RegisteredGuard(None);
    while let Some(msg) = inbound.message().await? {
        let reply = match msg.msg {
            Some(FromGateway::Registered(_)) => {
                if guard.0.is_none() {
                    registered.fetch_add(1, Ordering::SeqCst);
                    guard.0 = Some(registered);
                }
                None
            }
            Some(FromGateway::Refused(r)) => anyhow::bail!("refused: {}", r.reason),
            Some(FromGateway::Run(cmd)) => {
                commands.fetch_add(1, Ordering::SeqCst);
                Some(ToGateway::Exit(CommandExit {
                    command_id: cmd.command_id,
                    exit_code: Some(0),
                    ..CommandExit::default()
                }))
            }
            Some(FromGateway::Ping(_)) => Some(ToGateway::Heartbeat(Heartbeat { running: vec![] })),
            Some(FromGateway::Reconnect(_)) => return Ok(()),
            Some(FromGateway::Interrupt(_)) | None => None,
        };
        if let Some(m) = reply {
            tx.send(WorkerMessage { msg: Some(m) }).await?;
        }
    }
    Ok(())
}
