//! Buildbot workers at the gateway, played by a fake `buildbot-worker`
//! written here (msgpack over WebSocket, as `msgpack_experimental_v7`
//! speaks it): the protocol's edge cases, quickly and without Python.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use common::*;
use flotilla_gateway::GatewayOptions;
use flotilla_proto::v1::gateway_to_master::Msg as ToMaster;
use flotilla_proto::v1::{CommandExit, GatewayToMaster, OutputStream, RunCommand};
use futures::{SinkExt, StreamExt};
use rmpv::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message as Frame;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_util::sync::CancellationToken;

struct BbGateway {
    grpc: String,
    buildbot: String,
    shutdown: CancellationToken,
}

impl Drop for BbGateway {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn start(opts: GatewayOptions) -> BbGateway {
    init_tracing();
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let bb = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let urls = (
        format!("http://{}", grpc.local_addr().unwrap()),
        bb.local_addr().unwrap().to_string(),
    );
    let shutdown = CancellationToken::new();
    tokio::spawn(flotilla_gateway::serve_with(
        grpc,
        Some(bb),
        opts,
        shutdown.clone(),
    ));
    BbGateway {
        grpc: urls.0,
        buildbot: urls.1,
        shutdown,
    }
}

/// One decoded message.
#[derive(Debug, Clone)]
struct Msg {
    op: String,
    seq: u64,
    fields: HashMap<String, Value>,
}

impl Msg {
    fn str(&self, key: &str) -> &str {
        self.fields.get(key).and_then(Value::as_str).unwrap_or("")
    }
}

fn decode(bytes: &[u8]) -> Msg {
    let v = rmpv::decode::read_value(&mut &bytes[..]).unwrap();
    let mut fields: HashMap<String, Value> = v
        .as_map()
        .expect("a map")
        .iter()
        .map(|(k, v)| (k.as_str().expect("str key").to_owned(), v.clone()))
        .collect();
    let op = fields.remove("op").unwrap().as_str().unwrap().to_owned();
    let seq = fields.remove("seq_number").unwrap().as_u64().unwrap();
    Msg { op, seq, fields }
}

fn encode(op: &str, seq: u64, fields: Vec<(&str, Value)>) -> Vec<u8> {
    let mut map = vec![(Value::from("op"), Value::from(op))];
    map.extend(fields.into_iter().map(|(k, v)| (Value::from(k), v)));
    map.push((Value::from("seq_number"), Value::from(seq)));
    let mut out = Vec::new();
    rmpv::encode::write_value(&mut out, &Value::Map(map)).unwrap();
    out
}

fn line(key: &str, text: &str) -> Value {
    Value::Array(vec![
        Value::from(key),
        Value::Array(vec![
            Value::from(text),
            Value::Array(vec![]),
            Value::Array(vec![]),
        ]),
    ])
}

fn pair(key: &str, v: Value) -> Value {
    Value::Array(vec![Value::from(key), v])
}

/// What the fake worker's reader saw.
#[derive(Default)]
struct Seen {
    /// Requests of the worker's own awaiting their answer.
    waiting: HashSet<u64>,
    /// Every op the gateway sent, in order.
    ops: Vec<String>,
    /// `set_worker_settings` args.
    settings: Option<Value>,
    /// Leave keepalives unanswered (a wedged worker).
    mute: bool,
    /// The gateway's responses.
    responses: Vec<Msg>,
    /// Protocol rules the gateway broke.
    violations: Vec<String>,
}

/// A fake `buildbot-worker`. A task of its own reads the connection at all
/// times: it answers keepalives, `get_worker_info` and settings, checks that
/// every response the gateway sends answers a request of the worker's,
/// exactly once, and hands every other request to the test.
struct Fake {
    out: mpsc::UnboundedSender<Vec<u8>>,
    requests: mpsc::UnboundedReceiver<Msg>,
    seq: u64,
    seen: Arc<Mutex<Seen>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Fake {
    fn drop(&mut self) {
        // Drops the socket: a bare TCP close, as a cut link gives.
        self.task.abort();
    }
}

async fn upgrade(
    addr: &str,
    auth: Option<(&str, &str)>,
) -> Result<WebSocketStream<TcpStream>, u16> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut req = format!("ws://{addr}/").into_client_request().unwrap();
    if let Some((n, p)) = auth {
        let b = base64::engine::general_purpose::STANDARD.encode(format!("{n}:{p}"));
        req.headers_mut()
            .insert("Authorization", format!("Basic {b}").parse().unwrap());
    }
    match within("upgrade", tokio_tungstenite::client_async(req, tcp)).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err(resp.status().as_u16()),
        Err(e) => panic!("upgrade failed: {e}"),
    }
}

fn response(seq: u64, result: Value) -> Vec<u8> {
    encode("response", seq, vec![("result", result)])
}

async fn serve_fake(
    mut ws: WebSocketStream<TcpStream>,
    mut out: mpsc::UnboundedReceiver<Vec<u8>>,
    requests: mpsc::UnboundedSender<Msg>,
    seen: Arc<Mutex<Seen>>,
) {
    loop {
        tokio::select! {
            frame = ws.next() => {
                let Some(Ok(frame)) = frame else { return };
                let Frame::Binary(bytes) = frame else { continue };
                let m = decode(&bytes);
                let answer = {
                    let mut seen = seen.lock().unwrap();
                    let op = m.op.clone();
                    seen.ops.push(op.clone());
                    match op.as_str() {
                        "response" => {
                            if !seen.waiting.remove(&m.seq) {
                                seen.violations.push(format!("a response the worker was not waiting for: {m:?}"));
                            }
                            seen.responses.push(m);
                            None
                        }
                        "keepalive" if seen.mute => None,
                        "keepalive" | "print" => Some(response(m.seq, Value::Nil)),
                        "get_worker_info" => Some(response(m.seq, Value::Map(vec![
                            (Value::from("version"), Value::from("4.3.0")),
                            (Value::from("basedir"), Value::from("/srv/bb")),
                            (Value::from("numcpus"), Value::from(2)),
                            (Value::from("environ"), Value::Map(vec![(Value::from("SECRET"), Value::from("x"))])),
                        ]))),
                        "set_worker_settings" => {
                            seen.settings = m.fields.get("args").cloned();
                            Some(response(m.seq, Value::Nil))
                        }
                        _ => {
                            let _ = requests.send(m);
                            None
                        }
                    }
                };
                if let Some(a) = answer
                    && ws.send(Frame::Binary(a.into())).await.is_err()
                {
                    return;
                }
            }
            bytes = out.recv() => {
                let Some(bytes) = bytes else { return };
                if ws.send(Frame::Binary(bytes.into())).await.is_err() {
                    return;
                }
            }
        }
    }
}

impl Fake {
    async fn connect(addr: &str, name: &str, password: &str) -> Fake {
        let ws = upgrade(addr, Some((name, password)))
            .await
            .expect("upgrade accepted");
        let (out, out_rx) = mpsc::unbounded_channel();
        let (req_tx, requests) = mpsc::unbounded_channel();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let task = tokio::spawn(serve_fake(ws, out_rx, req_tx, seen.clone()));
        Fake {
            out,
            requests,
            seq: 0,
            seen,
            task,
        }
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen.lock().unwrap()
    }

    async fn respond(&mut self, seq: u64, result: Value) {
        self.out.send(response(seq, result)).unwrap();
    }

    /// A request of the worker's own (`update`, `complete`, ...).
    async fn request(&mut self, op: &str, fields: Vec<(&str, Value)>) {
        let seq = self.seq;
        self.seq += 1;
        self.seen().waiting.insert(seq);
        self.out.send(encode(op, seq, fields)).unwrap();
    }

    /// The gateway's next request other than those answered by the reader.
    async fn next(&mut self) -> Msg {
        within("a request from the gateway", self.requests.recv())
            .await
            .expect("the connection is open")
    }

    /// Waits for a `start_command`, answers it, returns its wire id.
    async fn started(&mut self) -> (String, Msg) {
        let m = self.next().await;
        assert_eq!(m.op, "start_command", "{m:?}");
        self.respond(m.seq, Value::Nil).await;
        (m.str("command_id").to_owned(), m)
    }

    async fn finish(&mut self, id: &str, out: &str, rc: i64) {
        let args = Value::Array(vec![
            line("stdout", out),
            pair("rc", Value::from(rc)),
            pair("elapsed", Value::from(0.5)),
        ]);
        self.request(
            "update",
            vec![("command_id", Value::from(id)), ("args", args)],
        )
        .await;
        self.request(
            "complete",
            vec![("command_id", Value::from(id)), ("args", Value::Nil)],
        )
        .await;
    }

    /// Waits until every request of the worker's was answered, and checks
    /// that no response answered anything else.
    async fn all_answered(&self) {
        within("every request answered", async {
            while !self.seen().waiting.is_empty() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        let violations = self.seen().violations.clone();
        assert!(violations.is_empty(), "{violations:?}");
    }
}

fn run(id: u64, workdir: &str) -> RunCommand {
    RunCommand {
        command_id: id,
        argv: vec!["sh".into(), "-c".into(), "echo hi".into()],
        workdir: workdir.into(),
        timeout_ms: 2500,
        env: [("FLOTILLA_BUILD_ID".to_owned(), "1".to_owned())].into(),
        ..RunCommand::default()
    }
}

async fn exit_of(m: &mut TestMaster, session: u64, id: u64) -> CommandExit {
    m.finish(session, id).await.1
}

/// The session of the worker's registration that carries its version.
async fn with_facts(m: &mut TestMaster, name: &str) -> (u64, HashMap<String, String>) {
    m.expect("AuthRequest with the worker's facts", |ev| match &ev.msg {
        Some(ToMaster::AuthRequest(r)) if r.name == name && r.facts.contains_key("version") => {
            Some((r.session, r.facts.clone()))
        }
        _ => None,
    })
    .await
}

fn opts() -> GatewayOptions {
    GatewayOptions {
        liveness_deadline: Duration::from_secs(3),
        ..fast_opts()
    }
}

/// Raw HTTP: the status line the gateway answers a request with.
async fn status_line(addr: &str, request: &str) -> String {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    within("the answer", tcp.read_to_end(&mut out))
        .await
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn a_shell_command_runs_with_its_output_and_exit_code() {
    let gw = start(opts()).await;
    let mut m = attach(&gw.grpc, MasterSpec::new("m1", 1)).await;
    let mut w = Fake::connect(&gw.buildbot, "bb", "pw").await;
    // First contact registers again once the worker's facts are known; the
    // facts reach the master, never the worker's environment.
    let (session, facts) = with_facts(&mut m, "bb").await;
    assert_eq!(facts["kind"], "buildbot");
    assert_eq!(facts["version"], "4.3.0");
    assert!(!facts.values().any(|v| v.contains("SECRET")));
    m.run(session, run(7, "b/build")).await;
    let (id, start) = w.started().await;
    let (ops, settings) = {
        let seen = w.seen();
        (seen.ops.clone(), seen.settings.clone())
    };
    let pos = |op: &str| ops.iter().position(|o| o == op);
    assert!(pos("get_worker_info") < pos("start_command"), "{ops:?}");
    assert!(pos("set_worker_settings") < pos("start_command"), "{ops:?}");
    let settings = settings.expect("set_worker_settings before the first command");
    let timeout = settings
        .as_map()
        .unwrap()
        .iter()
        .find(|(k, _)| k.as_str() == Some("buffer_timeout"))
        .unwrap()
        .1
        .as_f64()
        .unwrap();
    assert!(timeout > 0.0 && timeout <= 0.5, "buffer_timeout {timeout}");
    assert_eq!(start.str("command_name"), "shell");
    let args = start.fields["args"].as_map().unwrap();
    let arg = |k: &str| {
        args.iter()
            .find(|(a, _)| a.as_str() == Some(k))
            .unwrap()
            .1
            .clone()
    };
    assert_eq!(arg("workdir"), Value::from("/srv/bb/b/build"));
    assert_eq!(arg("maxTime"), Value::from(3u64));
    assert_eq!(arg("logEnviron"), Value::from(false));
    w.finish(&id, "hello\n", 3).await;
    let (out, exit) = m.finish(session, 7).await;
    assert_eq!(out[&(OutputStream::Stdout as i32)], "hello\n");
    assert_eq!(exit.exit_code, Some(3));
    assert_eq!(exit.elapsed_ms, 500);
    assert!(!exit.interrupted);

    // Command ids are never reused on the worker.
    m.run(session, run(8, "b/build")).await;
    let (id2, _) = w.started().await;
    assert_ne!(id, id2);
    w.finish(&id2, "again\n", 0).await;
    assert_eq!(exit_of(&mut m, session, 8).await.exit_code, Some(0));
    // Every request of the worker was answered exactly once.
    w.all_answered().await;
}

#[tokio::test]
async fn wrong_or_missing_credentials_get_401_before_the_upgrade_and_the_live_session_stays() {
    let gw = start(opts()).await;
    let mut m = attach(&gw.grpc, MasterSpec::new("m1", 1)).await;
    let mut w = Fake::connect(&gw.buildbot, "bb", "pw").await;
    let (session, _) = with_facts(&mut m, "bb").await;

    assert_eq!(
        upgrade(&gw.buildbot, Some(("bb", "wrong"))).await.err(),
        Some(401)
    );
    assert_eq!(upgrade(&gw.buildbot, None).await.err(), Some(401));
    assert_eq!(
        upgrade(&gw.buildbot, Some(("nobody", "wrong"))).await.err(),
        Some(401)
    );
    // The right password under a name whose session answers: still 401.
    assert_eq!(
        upgrade(&gw.buildbot, Some(("bb", "pw"))).await.err(),
        Some(401)
    );
    let answer = status_line(
        &gw.buildbot,
        "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: WebSocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: qnFQqW/mVzuPbqdXYEpnHA==\r\nSec-WebSocket-Version: 13\r\nAuthorization: Basic YmI6d3Jvbmc=\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    assert!(answer.contains("refused"), "{answer}");

    // Nothing of that touched the live worker.
    m.run(session, run(1, "b")).await;
    let (id, _) = w.started().await;
    w.finish(&id, "ok\n", 0).await;
    assert_eq!(exit_of(&mut m, session, 1).await.exit_code, Some(0));
}

#[tokio::test]
async fn stray_responses_and_unknown_requests_do_not_disturb_the_session() {
    let gw = start(opts()).await;
    let mut m = attach(&gw.grpc, MasterSpec::new("m1", 1)).await;
    let mut w = Fake::connect(&gw.buildbot, "bb", "pw").await;
    let (session, _) = with_facts(&mut m, "bb").await;
    // Responses to nothing the gateway asked, and a duplicate.
    w.respond(9999, Value::Nil).await;
    w.respond(0, Value::Nil).await;
    w.respond(0, Value::Nil).await;
    // An op the gateway does not know is answered with an error, once.
    w.request("frobnicate", vec![]).await;
    let unknown_seq = w.seq - 1;
    w.all_answered().await;
    let answered = w
        .seen()
        .responses
        .iter()
        .find(|r| r.seq == unknown_seq)
        .cloned()
        .unwrap();
    assert_eq!(
        answered.fields.get("is_exception"),
        Some(&Value::from(true))
    );
    m.run(session, run(4, "b")).await;
    let (id, _) = w.started().await;
    // Updates for a command the gateway never sent are answered and dropped.
    w.finish("nonsense", "x\n", 1).await;
    w.finish(&id, "fine\n", 0).await;
    let (out, exit) = m.finish(session, 4).await;
    assert_eq!(out[&(OutputStream::Stdout as i32)], "fine\n");
    assert_eq!(exit.exit_code, Some(0));
    w.all_answered().await;
}

#[tokio::test]
async fn an_interrupt_from_the_master_kills_the_command() {
    let gw = start(opts()).await;
    let mut m = attach(&gw.grpc, MasterSpec::new("m1", 1)).await;
    let mut w = Fake::connect(&gw.buildbot, "bb", "pw").await;
    let (session, _) = with_facts(&mut m, "bb").await;
    m.run(session, run(5, "b")).await;
    let (id, _) = w.started().await;
    m.interrupt(session, 5).await;
    let i = w.next().await;
    assert_eq!(
        (i.op.as_str(), i.str("command_id")),
        ("interrupt_command", id.as_str())
    );
    assert!(!i.str("why").is_empty());
    w.respond(i.seq, Value::Nil).await;
    let args = Value::Array(vec![
        line("header", "\ncommand interrupted, attempting to kill\n"),
        line("header", "process killed by signal 9\n"),
        pair("rc", Value::from(-1)),
    ]);
    w.request(
        "update",
        vec![("command_id", Value::from(id.as_str())), ("args", args)],
    )
    .await;
    w.request(
        "complete",
        vec![
            ("command_id", Value::from(id.as_str())),
            ("args", Value::Nil),
        ],
    )
    .await;
    let exit = exit_of(&mut m, session, 5).await;
    assert!(exit.interrupted);
    assert_eq!((exit.exit_code, exit.signal), (None, Some(9)));
    w.all_answered().await;
}

fn detached_of(ev: &GatewayToMaster, session: u64) -> bool {
    matches!(&ev.msg, Some(ToMaster::Detached(d)) if d.session == session)
}

#[tokio::test]
async fn a_reconnect_interrupts_the_old_commands_before_the_master_hears_they_are_lost() {
    let gw = start(opts()).await;
    let mut m = attach(&gw.grpc, MasterSpec::new("m1", 1)).await;
    let mut w = Fake::connect(&gw.buildbot, "bb", "pw").await;
    let (session, _) = with_facts(&mut m, "bb").await;
    m.run(session, run(11, "b")).await;
    let (old_id, _) = w.started().await;
    // The link drops (no close frame) while the command runs.
    drop(w);
    // The master is not told yet: the worker may come back.
    tokio::time::sleep(Duration::from_millis(300)).await;
    while let Ok(ev) = m.events.try_recv() {
        assert!(
            !detached_of(&ev, session),
            "detached before the orphan was interrupted"
        );
    }
    let mut w = Fake::connect(&gw.buildbot, "bb", "pw").await;
    // The very first thing on the new connection: the old command's interrupt.
    let first = w.next().await;
    assert_eq!(
        (first.op.as_str(), first.str("command_id")),
        ("interrupt_command", old_id.as_str())
    );
    assert_eq!(w.seen().ops[0], "interrupt_command");
    // Until it is answered, the master still has not heard the command is lost.
    tokio::time::sleep(Duration::from_millis(300)).await;
    while let Ok(ev) = m.events.try_recv() {
        assert!(
            !detached_of(&ev, session),
            "detached before the interrupt was confirmed"
        );
    }
    w.respond(first.seq, Value::Nil).await;
    m.expect("the old session detached", |ev| {
        detached_of(ev, session).then_some(())
    })
    .await;
    let new_session = m.auth_request("bb").await;
    assert_ne!(new_session, session);
    m.run(new_session, run(12, "b")).await;
    let (new_id, _) = w.started().await;
    assert_ne!(new_id, old_id);
    w.finish(&new_id, "ok\n", 0).await;
    assert_eq!(exit_of(&mut m, new_session, 12).await.exit_code, Some(0));
    w.all_answered().await;
}

#[tokio::test]
async fn a_worker_away_past_the_deadline_is_given_up_and_its_commands_interrupted_on_return() {
    let gw = start(opts()).await;
    let mut m = attach(&gw.grpc, MasterSpec::new("m1", 1)).await;
    let mut w = Fake::connect(&gw.buildbot, "bb", "pw").await;
    let (session, _) = with_facts(&mut m, "bb").await;
    m.run(session, run(21, "b")).await;
    let (old_id, _) = w.started().await;
    drop(w);
    // Given up after the liveness deadline: the master hears it left.
    m.expect("the session detached", |ev| {
        detached_of(ev, session).then_some(())
    })
    .await;
    let mut w = Fake::connect(&gw.buildbot, "bb", "pw").await;
    let first = w.next().await;
    assert_eq!(
        (first.op.as_str(), first.str("command_id")),
        ("interrupt_command", old_id.as_str())
    );
    w.respond(first.seq, Value::Nil).await;
    let (session, _) = with_facts(&mut m, "bb").await;
    m.run(session, run(22, "b")).await;
    let (id, _) = w.started().await;
    w.finish(&id, "ok\n", 0).await;
    assert_eq!(exit_of(&mut m, session, 22).await.exit_code, Some(0));
}

#[tokio::test]
async fn a_masters_death_keeps_the_connection_and_moves_the_worker() {
    let gw = start(opts()).await;
    let mut m1 = attach(&gw.grpc, MasterSpec::new("m1", 1)).await;
    let mut m2 = attach(&gw.grpc, MasterSpec::new("m2", 2)).await;
    let mut w = Fake::connect(&gw.buildbot, "bb", "pw").await;
    // Whichever master the worker lands on dies.
    let (first, session) = within("the worker's master", async {
        loop {
            tokio::select! {
                Some(ev) = m1.events.recv() => if let Some(ToMaster::AuthRequest(r)) = &ev.msg
                    && r.facts.contains_key("version")
                {
                    return (1, r.session);
                },
                Some(ev) = m2.events.recv() => if let Some(ToMaster::AuthRequest(r)) = &ev.msg
                    && r.facts.contains_key("version")
                {
                    return (2, r.session);
                },
            }
        }
    })
    .await;
    let (dying, mut survivor) = if first == 1 { (m1, m2) } else { (m2, m1) };
    dying.run(session, run(31, "b")).await;
    let (id, _) = w.started().await;
    dying.disconnect();
    let i = w.next().await;
    assert_eq!(
        (i.op.as_str(), i.str("command_id")),
        ("interrupt_command", id.as_str())
    );
    w.respond(i.seq, Value::Nil).await;
    // The same connection is routed to the other master.
    let session = survivor.auth_request("bb").await;
    // The interrupted command's end goes nowhere.
    w.finish(&id, "late\n", -1).await;
    survivor.run(session, run(32, "b")).await;
    let (id2, _) = w.started().await;
    w.finish(&id2, "ok\n", 0).await;
    let (out, exit) = survivor.finish(session, 32).await;
    assert_eq!(exit.exit_code, Some(0));
    assert_eq!(out[&(OutputStream::Stdout as i32)], "ok\n");
    assert!(!out.values().any(|o| o.contains("late")));
    w.all_answered().await;
}

#[tokio::test]
async fn a_worker_that_stops_answering_keepalives_is_dropped() {
    let gw = start(opts()).await;
    let mut m = attach(&gw.grpc, MasterSpec::new("m1", 1)).await;
    let mut w = Fake::connect(&gw.buildbot, "bb", "pw").await;
    let (session, _) = with_facts(&mut m, "bb").await;
    // Keepalives go unanswered from now on (the socket stays open).
    w.seen().mute = true;
    let reason = m.detached(session).await;
    assert!(!reason.is_empty());
    // The gateway closes the connection.
    assert!(
        within("the connection closed", w.requests.recv())
            .await
            .is_none()
    );
    let keepalives = w.seen().ops.iter().filter(|o| *o == "keepalive").count();
    assert!(keepalives >= 1, "no keepalive was sent");
}

/// Output reaches the master as it comes, before the command ends.
#[tokio::test]
async fn output_is_relayed_before_the_command_ends() {
    let gw = start(opts()).await;
    let mut m = attach(&gw.grpc, MasterSpec::new("m1", 1)).await;
    let mut w = Fake::connect(&gw.buildbot, "bb", "pw").await;
    let (session, _) = with_facts(&mut m, "bb").await;
    m.run(session, run(41, "b")).await;
    let (id, _) = w.started().await;
    let args = Value::Array(vec![line("stdout", "tick 1\n")]);
    w.request(
        "update",
        vec![("command_id", Value::from(id.as_str())), ("args", args)],
    )
    .await;
    // Only this update was sent: the line reaches the master before the end.
    assert_eq!(m.first_line(session, 41).await, "tick 1\n");
    w.finish(&id, "tick 2\n", 0).await;
    assert_eq!(exit_of(&mut m, session, 41).await.exit_code, Some(0));
}
