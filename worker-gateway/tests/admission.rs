//! Admission, ownership, liveness and limits at the gateway: real gateway,
//! real workers, hostile sessions driven by hand, masters played through
//! the real `MasterLink` client.

mod common;

use std::time::{Duration, Instant};

use common::*;
use flotilla_proto::v1::gateway_message::Msg as GwMsg;
use flotilla_proto::v1::gateway_to_master::Msg as ToMaster;
use flotilla_proto::v1::worker_message::Msg as WMsg;
use flotilla_proto::v1::{
    CommandExit, CommandOutput, GatewayToMaster, Heartbeat, OutputStream, WorkerMessage,
};
use tokio::io::AsyncReadExt;
use tonic::Code;

/// Waits `for_` and returns every event the master saw meanwhile.
async fn drain_for(m: &mut TestMaster, for_: Duration) -> Vec<GatewayToMaster> {
    let mut seen = Vec::new();
    let until = tokio::time::Instant::now() + for_;
    while let Ok(Some(ev)) = tokio::time::timeout_at(until, m.events.recv()).await {
        seen.push(ev);
    }
    seen
}

fn detached_sessions(events: &[GatewayToMaster]) -> Vec<u64> {
    events
        .iter()
        .filter_map(|ev| match &ev.msg {
            Some(ToMaster::Detached(d)) => Some(d.session),
            _ => None,
        })
        .collect()
}

/// Refused reason, or panics.
async fn refused(w: &mut RawWorker) -> String {
    match w.next().await {
        Ok(Some(GwMsg::Refused(r))) => r.reason,
        other => panic!("expected Refused, got {other:?}"),
    }
}

#[tokio::test]
async fn a_wrong_password_under_a_live_name_changes_nothing() {
    let gw = start_gateway(fast_opts()).await;
    let mut m = attach(&gw.url, MasterSpec::new("m1", 1)).await;
    let worker = start_worker(&gw.url, "live", "pw");
    let session = m.auth_request("live").await;
    m.run(session, sh(1, "sleep 2; echo survived")).await;

    let started = Instant::now();
    let mut attempts = 0;
    while started.elapsed() < Duration::from_secs(3) {
        let mut bad = raw_session(&gw.url, register("live", "wrong"))
            .await
            .unwrap();
        assert_eq!(refused(&mut bad).await, "bad password");
        attempts += 1;
    }
    // Repeats are held back (doubling per failure), not served at line rate.
    assert!(attempts <= 6, "{attempts} refusals in 3 s: not slowed down");
    let (out, exit) = m.finish(session, 1).await;
    assert_eq!(exit.exit_code, Some(0));
    assert_eq!(
        out.get(&(OutputStream::Stdout as i32)).map(String::as_str),
        Some("survived\n")
    );
    let seen = drain_for(&mut m, Duration::from_millis(500)).await;
    assert!(detached_sessions(&seen).is_empty(), "{seen:?}");
    println!("{attempts} wrong-password attempts in 3 s; the live worker kept its command");
    worker.stop().await;
}

#[tokio::test]
async fn a_right_password_under_a_live_name_is_refused_name_in_use() {
    let gw = start_gateway(fast_opts()).await;
    let mut m = attach(&gw.url, MasterSpec::new("m1", 1)).await;
    let worker = start_worker(&gw.url, "twin", "pw");
    let session = m.auth_request("twin").await;

    let mut twin = raw_session(&gw.url, register("twin", "pw")).await.unwrap();
    assert_eq!(refused(&mut twin).await, "worker name in use");
    m.run(session, sh(2, "echo still-here")).await;
    let (out, _) = m.finish(session, 2).await;
    assert_eq!(
        out.get(&(OutputStream::Stdout as i32)).map(String::as_str),
        Some("still-here\n")
    );
    let seen = drain_for(&mut m, Duration::from_millis(300)).await;
    assert!(detached_sessions(&seen).is_empty(), "{seen:?}");
    worker.stop().await;
}

#[tokio::test]
async fn output_and_exit_for_another_sessions_command_are_dropped() {
    let gw = start_gateway(fast_opts()).await;
    let mut m = attach(&gw.url, MasterSpec::new("m1", 1)).await;
    let worker = start_worker(&gw.url, "honest", "pw");
    let honest = m.auth_request("honest").await;
    let (forger, _) = registered_raw(&gw.url, "forger").await;
    let forger_session = m.auth_request("forger").await;

    m.run(honest, sh(7, "sleep 1; echo real")).await;
    for msg in [
        WMsg::Output(CommandOutput {
            command_id: 7,
            stream: OutputStream::Stdout as i32,
            data: b"forged\n".to_vec(),
        }),
        WMsg::Exit(CommandExit {
            command_id: 7,
            exit_code: Some(1),
            ..CommandExit::default()
        }),
    ] {
        forger
            .tx
            .send(WorkerMessage { msg: Some(msg) })
            .await
            .unwrap();
    }
    // The honest worker's own report arrives; nothing of the forger's does.
    let mut forged = 0;
    let exit = loop {
        let ev = m
            .expect("output or exit", |ev| match &ev.msg {
                Some(ToMaster::FromWorker(f)) => Some((f.session, f.msg.clone())),
                _ => None,
            })
            .await;
        match ev {
            (s, _) if s == forger_session => forged += 1,
            (
                s,
                Some(WorkerMessage {
                    msg: Some(WMsg::Exit(e)),
                }),
            ) if s == honest => break e,
            _ => {}
        }
    };
    assert_eq!(forged, 0, "forged messages reached the master");
    assert_eq!(exit.exit_code, Some(0));
    worker.stop().await;
}

#[tokio::test]
async fn a_silent_worker_is_dropped_by_the_clock() {
    let opts = fast_opts();
    let deadline = opts.liveness_deadline;
    let gw = start_gateway(opts).await;
    let mut m = attach(&gw.url, MasterSpec::new("m1", 1)).await;
    // Registers, then never answers a Ping nor heartbeats; the socket stays open.
    let (mut silent, _) = registered_raw(&gw.url, "wedged").await;
    let session = m.auth_request("wedged").await;
    let since = Instant::now();
    m.run(session, sh(3, "sleep 60")).await;
    let reason = m.detached(session).await;
    let took = since.elapsed();
    assert!(reason.starts_with("silent"), "{reason}");
    assert!(took >= deadline && took < deadline * 3, "{took:?}");
    // It was pinged before it was dropped.
    let mut pinged = false;
    while let Ok(Some(msg)) = silent.next_raw().await {
        pinged |= matches!(msg, GwMsg::Ping(_));
    }
    assert!(pinged);
    println!("silent worker dropped after {took:?} (deadline {deadline:?})");
}

#[tokio::test]
async fn a_worker_that_answers_pings_stays() {
    let gw = start_gateway(fast_opts()).await;
    let mut m = attach(&gw.url, MasterSpec::new("m1", 1)).await;
    let (mut w, _) = registered_raw(&gw.url, "pong").await;
    let session = m.auth_request("pong").await;
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        if let Ok(Ok(Some(msg))) =
            tokio::time::timeout(Duration::from_millis(200), w.inbound.message()).await
            && matches!(msg.msg, Some(GwMsg::Ping(_)))
        {
            let hb = WorkerMessage {
                msg: Some(WMsg::Heartbeat(Heartbeat { running: vec![] })),
            };
            w.tx.send(hb).await.unwrap();
        }
    }
    let seen = drain_for(&mut m, Duration::from_millis(100)).await;
    assert!(!detached_sessions(&seen).contains(&session));
}

#[tokio::test]
async fn an_oversize_output_ends_the_stream_with_resource_exhausted() {
    let gw = start_gateway(fast_opts()).await;
    let mut m = attach(&gw.url, MasterSpec::new("m1", 1)).await;
    for (name, size) in [("big", 2 * 1024 * 1024), ("huge", 20 * 1024 * 1024)] {
        let (mut w, _) = registered_raw(&gw.url, name).await;
        let session = m.auth_request(name).await;
        w.tx.send(WorkerMessage {
            msg: Some(WMsg::Output(CommandOutput {
                command_id: 1,
                stream: OutputStream::Stdout as i32,
                data: vec![b'x'; size],
            })),
        })
        .await
        .unwrap();
        let status = loop {
            match w.next().await {
                Err(status) => break status,
                Ok(None) => panic!("{name}: stream ended with OK"),
                Ok(Some(_)) => {}
            }
        };
        assert_eq!(status.code(), Code::ResourceExhausted, "{name}: {status:?}");
        assert!(status.message().contains("limit"), "{status:?}");
        let reason = m.detached(session).await;
        assert!(reason.contains("limit"), "{reason}");
    }
}

#[tokio::test]
async fn a_silent_connection_is_closed_after_the_handshake_deadline() {
    let opts = fast_opts();
    let deadline = opts.handshake_deadline;
    let gw = start_gateway(opts).await;
    let addr = gw.url.trim_start_matches("http://").to_owned();
    let since = Instant::now();
    let mut tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let mut buf = [0u8; 64];
    // The server may send its HTTP/2 settings; read until the close.
    let closed = within("the idle connection to be closed", async {
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return since.elapsed(),
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed >= deadline && closed < deadline * 3, "{closed:?}");
    println!("idle connection closed after {closed:?} (deadline {deadline:?})");
}

#[tokio::test]
async fn connections_per_address_are_capped() {
    let mut opts = fast_opts();
    opts.max_connections_per_address = 3;
    opts.handshake_deadline = Duration::from_secs(30);
    let gw = start_gateway(opts).await;
    let addr = gw.url.trim_start_matches("http://").to_owned();
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(tokio::net::TcpStream::connect(&addr).await.unwrap());
    }
    let mut fourth = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let mut buf = [0u8; 64];
    let n = within("the fourth connection to be closed", async {
        loop {
            match fourth.read(&mut buf).await {
                Ok(0) | Err(_) => return 0,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert_eq!(n, 0);
    // Freeing a place lets a new connection (and a worker) in.
    drop(held.pop());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _m = attach(&gw.url, MasterSpec::new("m1", 1)).await;
}
