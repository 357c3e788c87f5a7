//! End-to-end tests of the gateway: real gateway, real workers, masters
//! played through the real `MasterLink` protocol client.

mod common;

use std::time::Duration;

use common::*;
use flotilla_gateway::{GatewayOptions, TlsFiles, routing};
use flotilla_proto::v1::gateway_message::Msg as GwMsg;
use flotilla_proto::v1::gateway_to_master::Msg as ToMaster;
use flotilla_proto::v1::master_link_client::MasterLinkClient;
use flotilla_proto::v1::master_to_gateway::Msg as FromMaster;
use flotilla_proto::v1::worker_message::Msg as WMsg;
use flotilla_proto::v1::{
    Heartbeat, MasterHeartbeat, MasterToGateway, OutputStream, Ping, Reconnect, WorkerMessage,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

/// Which of `masters` rendezvous hashing picks for `worker`.
fn expected_master(worker: &str, masters: &[(&'static str, i64)]) -> &'static str {
    routing::pick(worker, masters.iter().map(|&(n, i)| (n, i, n))).unwrap()
}

#[tokio::test]
async fn accepted_worker_is_registered_and_messages_flow_both_ways() {
    let gw = start_gateway(fast_opts()).await;
    let mut m = attach(&gw.url, MasterSpec::new("m1", 1)).await;
    let (mut w, master) = registered_raw(&gw.url, "raw").await;
    assert_eq!(master, "m1");
    let session = m
        .expect("AuthRequest", |ev| match &ev.msg {
            Some(ToMaster::AuthRequest(r)) => {
                assert_eq!((r.name.as_str(), r.password.as_str()), ("raw", "pw"));
                assert_eq!(r.protocol_version, flotilla_proto::PROTOCOL_VERSION);
                assert_eq!(r.facts.get("os").map(String::as_str), Some("test"));
                Some(r.session)
            }
            _ => None,
        })
        .await;

    w.tx.send(WorkerMessage {
        msg: Some(WMsg::Heartbeat(Heartbeat { running: vec![4] })),
    })
    .await
    .unwrap();
    m.expect("FromWorker heartbeat", |ev| match &ev.msg {
        Some(ToMaster::FromWorker(f)) if f.session == session => {
            matches!(&f.msg, Some(WorkerMessage { msg: Some(WMsg::Heartbeat(h)) }) if h.running == [4]).then_some(())
        }
        _ => None,
    })
    .await;

    m.to_worker(session, GwMsg::Ping(Ping {})).await;
    assert!(matches!(w.next_raw().await, Ok(Some(GwMsg::Ping(_)))));

    // ToWorker for an unknown session is ignored.
    m.to_worker(session + 1000, GwMsg::Ping(Ping {})).await;

    drop(w);
    let reason = m.detached(session).await;
    assert!(!reason.is_empty());
    gw.shutdown.cancel();
    within("gateway to stop", gw.task).await.unwrap().unwrap();
}

#[tokio::test]
async fn wrong_password_is_refused_and_the_worker_keeps_retrying() {
    let gw = start_gateway(fast_opts()).await;
    let mut m = attach(&gw.url, MasterSpec::new("m1", 1)).await;

    let mut raw = raw_session(&gw.url, register("bad", "nope")).await.unwrap();
    match raw.next().await {
        Ok(Some(GwMsg::Refused(r))) => assert_eq!(r.reason, "bad password"),
        other => panic!("expected Refused, got {other:?}"),
    }
    let status = raw.next().await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);

    let worker = start_worker(&gw.url, "liar", "wrong");
    for _ in 0..3 {
        m.auth_request("liar").await;
    }
    assert!(!worker.task.is_finished());

    // The gateway still serves others.
    let (_ok, master) = registered_raw(&gw.url, "honest").await;
    assert_eq!(master, "m1");
    worker.stop().await;
}

#[tokio::test]
async fn command_output_and_exit_code_reach_the_master() {
    let gw = start_gateway(fast_opts()).await;
    let mut m = attach(&gw.url, MasterSpec::new("m1", 1)).await;
    let worker = start_worker(&gw.url, "w1", "pw");
    let session = m.auth_request("w1").await;

    let mut cmd = sh(1, "echo $FOO; echo oops >&2; exit 3");
    cmd.env.insert("FOO".into(), "bar".into());
    cmd.workdir = "build".into();
    m.run(session, cmd).await;
    let (out, exit) = m.finish(session, 1).await;
    assert_eq!(out.get(&(OutputStream::Stdout as i32)).unwrap(), "bar\n");
    assert_eq!(out.get(&(OutputStream::Stderr as i32)).unwrap(), "oops\n");
    assert_eq!(exit.exit_code, Some(3));
    assert!(!exit.timed_out && !exit.interrupted && exit.error.is_empty());
    assert!(worker.dir.path().join("base/build").is_dir());

    // A bad workdir is an error exit, not a crash.
    let mut cmd = sh(2, "true");
    cmd.workdir = "/etc".into();
    m.run(session, cmd).await;
    let (_, exit) = m.finish(session, 2).await;
    assert!(exit.error.contains("relative"), "{}", exit.error);

    // Heartbeats report running commands.
    m.run(session, sh(3, "sleep 5")).await;
    m.expect("heartbeat listing command 3", |ev| match &ev.msg {
        Some(ToMaster::FromWorker(f)) => match &f.msg {
            Some(WorkerMessage {
                msg: Some(WMsg::Heartbeat(h)),
            }) if h.running == [3] => Some(()),
            _ => None,
        },
        _ => None,
    })
    .await;
    worker.stop().await;
}

#[tokio::test]
async fn a_command_past_its_timeout_is_killed_with_its_children() {
    let gw = start_gateway(fast_opts()).await;
    let mut m = attach(&gw.url, MasterSpec::new("m1", 1)).await;
    let worker = start_worker(&gw.url, "w1", "pw");
    let session = m.auth_request("w1").await;

    let mut cmd = sh(7, "echo $$; sleep 100 & sleep 100");
    cmd.timeout_ms = 500;
    m.run(session, cmd).await;
    let (out, exit) = m.finish(session, 7).await;
    assert!(exit.timed_out, "{exit:?}");
    assert_eq!(exit.signal, Some(15));
    assert!(exit.elapsed_ms >= 500 && exit.elapsed_ms < 3000, "{exit:?}");
    let header = out.get(&(OutputStream::Header as i32)).unwrap();
    assert!(header.contains("timed out after 500ms"), "{header}");
    let pgid: i32 = out
        .get(&(OutputStream::Stdout as i32))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    wait_group_gone(pgid).await;
    worker.stop().await;
}

#[tokio::test]
async fn interrupt_kills_the_command() {
    let gw = start_gateway(fast_opts()).await;
    let mut m = attach(&gw.url, MasterSpec::new("m1", 1)).await;
    let worker = start_worker(&gw.url, "w1", "pw");
    let session = m.auth_request("w1").await;

    m.run(session, sh(9, "echo $$; sleep 100 & sleep 100"))
        .await;
    let pgid: i32 = m.first_line(session, 9).await.trim().parse().unwrap();
    m.interrupt(session, 9).await;
    let (out, exit) = m.finish(session, 9).await;
    assert!(exit.interrupted && !exit.timed_out, "{exit:?}");
    assert!(
        out.get(&(OutputStream::Header as i32))
            .unwrap()
            .contains("interrupted")
    );
    wait_group_gone(pgid).await;
    worker.stop().await;
}

/// Attaches two masters, then starts a worker; returns it, its master, the
/// other master and its session.
async fn two_masters_and_a_worker(
    url: &str,
    worker: &str,
    silence_ms: u64,
) -> (Worker, TestMaster, TestMaster, u64) {
    let masters = [("ma", 10), ("mb", 20)];
    let chosen = expected_master(worker, &masters);
    let mut ms = Vec::new();
    for (name, id) in masters {
        let mut spec = MasterSpec::new(name, id);
        spec.silence_ms = silence_ms;
        ms.push(attach(url, spec).await);
    }
    let (mut home, other) = if ms[0].name == chosen {
        let b = ms.pop().unwrap();
        (ms.pop().unwrap(), b)
    } else {
        let b = ms.pop().unwrap();
        (b, ms.pop().unwrap())
    };
    let agent = start_worker(url, worker, "pw");
    let session = home.auth_request(worker).await;
    (agent, home, other, session)
}

#[tokio::test]
async fn losing_a_master_kills_its_commands_and_reroutes_the_worker() {
    let gw = start_gateway(fast_opts()).await;
    let (worker, mut home, mut other, session) =
        two_masters_and_a_worker(&gw.url, "w-lost", 0).await;

    home.run(session, sh(1, "echo $$; sleep 100 & sleep 100"))
        .await;
    let pgid: i32 = home.first_line(session, 1).await.trim().parse().unwrap();
    assert!(group_alive(pgid));
    home.disconnect();

    wait_group_gone(pgid).await;
    let new_session = other.auth_request("w-lost").await;
    assert_ne!(new_session, session);
    // The worker works for its new master.
    other.run(new_session, sh(2, "echo again")).await;
    let (_, exit) = other.finish(new_session, 2).await;
    assert_eq!(exit.exit_code, Some(0));
    worker.stop().await;
}

#[tokio::test]
async fn a_silent_master_is_fenced() {
    let gw = start_gateway(fast_opts()).await;
    let (worker, mut home, mut other, session) =
        two_masters_and_a_worker(&gw.url, "w-frozen", 600).await;

    home.run(session, sh(1, "echo $$; sleep 100 & sleep 100"))
        .await;
    let pgid: i32 = home.first_line(session, 1).await.trim().parse().unwrap();
    // Freeze: the link stays open but says nothing any more.
    home.heartbeat.cancel();
    let frozen_at = tokio::time::Instant::now();

    wait_group_gone(pgid).await;
    assert!(frozen_at.elapsed() >= Duration::from_millis(500));
    other.auth_request("w-frozen").await;
    within("fenced link to end", async {
        while home.ended.lock().unwrap().is_none() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let ended = home.ended.lock().unwrap().take().unwrap();
    assert_eq!(ended.unwrap_err().code(), Code::Unavailable);
    // The other master kept heartbeating and is still attached.
    assert!(other.ended.lock().unwrap().is_none());
    worker.stop().await;
}

#[tokio::test]
async fn rendezvous_routing_is_stable_and_spreads_workers() {
    let gw = start_gateway(fast_opts()).await;
    let masters = [("ma", 10), ("mb", 20)];
    let _a = attach(&gw.url, MasterSpec::new("ma", 10)).await;
    let _b = attach(&gw.url, MasterSpec::new("mb", 20)).await;

    let names: Vec<String> = (0..8).map(|i| format!("spread-{i}")).collect();
    let mut first = Vec::new();
    for name in &names {
        let (_w, master) = registered_raw(&gw.url, name).await;
        assert_eq!(master, expected_master(name, &masters));
        first.push(master);
    }
    assert!(
        first.iter().any(|m| m == "ma") && first.iter().any(|m| m == "mb"),
        "{first:?}"
    );
    for (name, before) in names.iter().zip(&first) {
        let (_w, again) = registered_raw(&gw.url, name).await;
        assert_eq!(&again, before, "{name} moved without a master change");
    }
}

#[tokio::test]
async fn malformed_messages_are_invalid_argument() {
    let gw = start_gateway(fast_opts()).await;
    let mut m = attach(&gw.url, MasterSpec::new("m1", 1)).await;

    let empty = raw_session(&gw.url, WorkerMessage { msg: None }).await;
    assert_eq!(empty.err().unwrap().code(), Code::InvalidArgument);
    let heartbeat_first = WorkerMessage {
        msg: Some(WMsg::Heartbeat(Heartbeat::default())),
    };
    let wrong = raw_session(&gw.url, heartbeat_first).await;
    assert_eq!(wrong.err().unwrap().code(), Code::InvalidArgument);

    // Malformed after registration: the session ends, the master is told.
    let (mut w, _) = registered_raw(&gw.url, "sloppy").await;
    let session = m.auth_request("sloppy").await;
    w.tx.send(WorkerMessage { msg: None }).await.unwrap();
    assert_eq!(w.next().await.unwrap_err().code(), Code::InvalidArgument);
    m.detached(session).await;

    // A master link whose first message is not MasterHello.
    let mut client = MasterLinkClient::connect(gw.url.clone()).await.unwrap();
    let (tx, rx) = mpsc::channel(4);
    tx.send(MasterToGateway {
        msg: Some(FromMaster::Heartbeat(MasterHeartbeat { draining: false })),
    })
    .await
    .unwrap();
    let status = client.attach(ReceiverStream::new(rx)).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);

    // An empty MasterToGateway closes that link with invalid_argument.
    let mut bad = attach(&gw.url, MasterSpec::new("bad", 2)).await;
    bad.heartbeat.cancel();
    bad.tx.send(MasterToGateway { msg: None }).await.unwrap();
    within("bad link to end", async {
        while bad.ended.lock().unwrap().is_none() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let ended = bad.ended.lock().unwrap().take().unwrap();
    assert_eq!(ended.unwrap_err().code(), Code::InvalidArgument);
    // The gateway is fine.
    let _ = bad.events.try_recv();
    let (_w2, master) = registered_raw(&gw.url, "after").await;
    assert_eq!(master, "m1");
}

#[tokio::test]
async fn a_draining_master_gets_no_new_workers() {
    let gw = start_gateway(fast_opts()).await;
    let mut draining = MasterSpec::new("ma", 10);
    draining.draining = true;
    let ma = attach(&gw.url, draining).await;
    let mb = attach(&gw.url, MasterSpec::new("mb", 20)).await;

    let mut keep = Vec::new();
    for i in 0..6 {
        let (w, master) = registered_raw(&gw.url, &format!("d-{i}")).await;
        assert_eq!(master, "mb");
        keep.push(w);
    }

    // mb drains too: a new worker waits...
    mb.set_draining(true).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut waiting = raw_session(&gw.url, register("late", "pw")).await.unwrap();
    let early = tokio::time::timeout(Duration::from_millis(500), waiting.inbound.message()).await;
    assert!(
        early.is_err(),
        "a worker was routed to a draining master: {early:?}"
    );

    // ... until ma undrains.
    ma.set_draining(false).await;
    assert_eq!(waiting.registered().await, "ma");
}

#[tokio::test]
async fn a_worker_waits_for_the_first_master() {
    let gw = start_gateway(fast_opts()).await;
    let worker = start_worker(&gw.url, "early", "pw");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut m = attach(&gw.url, MasterSpec::new("m1", 1)).await;
    let session = m.auth_request("early").await;
    m.run(session, sh(1, "echo ok")).await;
    let (out, _) = m.finish(session, 1).await;
    assert_eq!(out.get(&(OutputStream::Stdout as i32)).unwrap(), "ok\n");
    worker.stop().await;
}

#[tokio::test]
async fn a_new_session_replaces_one_that_fails_its_liveness_probe() {
    let gw = start_gateway(fast_opts()).await;
    let mut m = attach(&gw.url, MasterSpec::new("m1", 1)).await;
    // A raw session that never answers a Ping.
    let (mut old, _) = registered_raw(&gw.url, "dup").await;
    let old_session = m.auth_request("dup").await;
    // Its attachment counts as hearing from it: let that be well in the past
    // (on a loaded machine the gateway may record it late) before the probe.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut new = raw_session(&gw.url, register("dup", "pw")).await.unwrap();
    assert!(matches!(old.next().await, Ok(Some(GwMsg::Reconnect(_)))));
    assert!(matches!(old.next().await, Ok(None)));
    m.detached(old_session).await;
    let new_session = m.auth_request("dup").await;
    assert_ne!(new_session, old_session);
    assert_eq!(new.registered().await, "m1");
}

#[tokio::test]
async fn a_master_hands_a_worker_back_with_reconnect() {
    let gw = start_gateway(fast_opts()).await;
    let masters = [("m1", 1), ("m2", 2)];
    let mut m1 = attach(&gw.url, MasterSpec::new("m1", 1)).await;
    let mut m2 = attach(&gw.url, MasterSpec::new("m2", 2)).await;
    // A worker whose rendezvous choice is m1.
    let name = (0..100)
        .map(|i| format!("handed-{i}"))
        .find(|n| expected_master(n, &masters) == "m1")
        .unwrap();
    let worker = start_worker(&gw.url, &name, "pw");
    let session = m1.auth_request(&name).await;
    m1.to_worker(
        session,
        GwMsg::Reconnect(Reconnect {
            reason: "draining".into(),
        }),
    )
    .await;
    let reason = m1.detached(session).await;
    assert!(reason.contains("draining"), "{reason}");
    // Not straight back to the master that handed it back (it may be
    // starting to drain before its heartbeat says so).
    let again = m2.auth_request(&name).await;
    assert_ne!(again, session);
    worker.stop().await;
}

#[tokio::test]
async fn an_unanswered_authentication_is_retried() {
    let mut opts = fast_opts();
    opts.auth_timeout = Duration::from_millis(300);
    let gw = start_gateway(opts).await;
    let mut spec = MasterSpec::new("mute", 1);
    spec.auto_auth = false;
    let mut m = attach(&gw.url, spec).await;
    let mut raw = raw_session(&gw.url, register("patient", "pw"))
        .await
        .unwrap();
    let session = m.auth_request("patient").await;
    assert!(m.detached(session).await.contains("timed out"));
    let again = m.auth_request("patient").await;
    assert_eq!(again, session);
    // Answer this time.
    m.tx.send(MasterToGateway {
        msg: Some(FromMaster::AuthResult(flotilla_proto::v1::AuthResult {
            session,
            accepted: true,
            reason: String::new(),
        })),
    })
    .await
    .unwrap();
    assert_eq!(raw.registered().await, "mute");
}

#[tokio::test]
async fn health_and_shutdown() {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};

    let gw = start_gateway(fast_opts()).await;
    let channel = tonic::transport::Endpoint::from_shared(gw.url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel);
    for service in ["", "flotilla.v1.WorkerGateway", "flotilla.v1.MasterLink"] {
        let resp = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(resp.status, ServingStatus::Serving as i32, "{service}");
    }

    // Shutdown ends worker sessions with Reconnect and master links, promptly.
    let m = attach(&gw.url, MasterSpec::new("m1", 1)).await;
    let (mut w, _) = registered_raw(&gw.url, "bye").await;
    gw.shutdown.cancel();
    assert!(matches!(w.next().await, Ok(Some(GwMsg::Reconnect(_)))));
    within("gateway to stop", gw.task).await.unwrap().unwrap();
    within("master link to end", async {
        while m.ended.lock().unwrap().is_none() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let ended = m.ended.lock().unwrap().take().unwrap();
    assert_eq!(ended.unwrap_err().code(), Code::Unavailable);
}

#[tokio::test]
async fn unreadable_tls_files_are_a_clear_error() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let opts = GatewayOptions {
        tls: Some(TlsFiles {
            cert: "/nonexistent/cert.pem".into(),
            key: "/nonexistent/key.pem".into(),
        }),
        ..GatewayOptions::default()
    };
    let err = flotilla_gateway::serve(listener, opts, Default::default())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("/nonexistent/cert.pem"), "{err}");
}

#[tokio::test]
async fn large_output_streams_in_bounded_chunks() {
    let gw = start_gateway(fast_opts()).await;
    let mut m = attach(&gw.url, MasterSpec::new("m1", 1)).await;
    let worker = start_worker(&gw.url, "w1", "pw");
    let session = m.auth_request("w1").await;

    // 20 MB on a single "line".
    m.run(session, sh(1, "head -c 20000000 /dev/zero | tr '\\0' x"))
        .await;
    let (mut total, mut chunks) = (0usize, 0usize);
    let exit = loop {
        let msg = m
            .expect("output or exit", |ev| match &ev.msg {
                Some(ToMaster::FromWorker(f)) if f.session == session => f.msg.clone(),
                _ => None,
            })
            .await;
        match msg.msg {
            Some(WMsg::Output(o)) => {
                assert!(o.data.len() <= flotilla_worker::OUTPUT_CHUNK_BYTES);
                total += o.data.len();
                chunks += 1;
            }
            Some(WMsg::Exit(e)) => break e,
            _ => {}
        }
    };
    assert_eq!(exit.exit_code, Some(0));
    assert_eq!(total, 20_000_000);
    assert!(chunks >= 20_000_000 / flotilla_worker::OUTPUT_CHUNK_BYTES);
    worker.stop().await;
}
