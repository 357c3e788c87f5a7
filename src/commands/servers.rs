//! The long-running components: `master`, `gateway` and `worker`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use flotilla_master::master::{self, MasterOptions, Shutdown};

use super::load_config;
use crate::cli::{GatewayArgs, MasterArgs, WorkerArgs};
use crate::exit::{self, Exit};
use crate::signals::Signals;

fn install_signals() -> Result<Signals, Exit> {
    Signals::install().map_err(|e| {
        eprintln!("flotilla: cannot install signal handlers: {e}");
        Exit::Software
    })
}

async fn bind(addr: &str, what: &str) -> Result<tokio::net::TcpListener, Exit> {
    tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        eprintln!("flotilla: cannot listen for {what} on {addr}: {e}");
        Exit::Failed
    })
}

/// The address a listener is bound to, for the log.
fn shown(listener: &tokio::net::TcpListener) -> String {
    listener
        .local_addr()
        .map_or_else(|e| format!("(unknown: {e})"), |a| a.to_string())
}

/// Writes one `NAME HOST:PORT` line per listener to `path`, through a
/// temporary file and a rename so that a reader sees the whole file or none.
fn write_ready_file(
    path: Option<&Path>,
    listeners: &[(&str, &tokio::net::TcpListener)],
) -> Result<(), Exit> {
    let Some(path) = path else {
        return Ok(());
    };
    let mut text = String::new();
    for (name, listener) in listeners {
        match listener.local_addr() {
            Ok(addr) => text.push_str(&format!("{name} {addr}\n")),
            Err(e) => {
                eprintln!("flotilla: cannot read the address bound for {name}: {e}");
                return Err(Exit::Failed);
            }
        }
    }
    let tmp = PathBuf::from(format!("{}.tmp", path.display()));
    std::fs::write(&tmp, text)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| {
            eprintln!(
                "flotilla: cannot write --ready-file {}: {e}",
                path.display()
            );
            Exit::Failed
        })
}

pub fn default_master_name() -> String {
    hostname::get()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "master".to_owned())
}

pub async fn master(a: MasterArgs) -> Exit {
    let config = match load_config(&a.config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let signals = match install_signals() {
        Ok(s) => s,
        Err(code) => return code,
    };
    let http_addr = a.http.clone().unwrap_or_else(|| config.api.listen.clone());
    let http = match bind(&http_addr, "the HTTP API").await {
        Ok(l) => l,
        Err(code) => return code,
    };
    if let Err(code) = write_ready_file(a.ready_file.as_deref(), &[("http", &http)]) {
        return code;
    }
    // The server ends a session left idle inside a transaction (a master
    // frozen mid-transaction) well before others may declare it dead.
    flotilla_master::db::set_idle_transaction_timeout(config.cluster.master_timeout.get() / 2);
    let store = match super::db::connect(&config.database.url).await {
        Ok(s) => s,
        Err(code) => return code,
    };
    if let Err(e) = store.ensure_current().await {
        return exit::db_error("refusing to start", &e);
    }
    let opts = MasterOptions {
        config: Arc::new(config),
        name: a.name.unwrap_or_else(default_master_name),
        http,
        store,
    };
    let shutdown = Shutdown {
        graceful: signals.graceful.clone(),
        immediate: signals.immediate.clone(),
    };
    match master::run(opts, shutdown).await {
        Ok(()) => Exit::Ok,
        Err(e) => {
            eprintln!("flotilla: master stopped: {e}");
            Exit::from(&e)
        }
    }
}

pub async fn gateway(a: GatewayArgs) -> Exit {
    let config = match load_config(&a.config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let signals = match install_signals() {
        Ok(s) => s,
        Err(code) => return code,
    };
    let addr = a.listen.unwrap_or_else(|| config.gateway.listen.clone());
    let listener = match bind(&addr, "workers and masters").await {
        Ok(l) => l,
        Err(code) => return code,
    };
    let opts = match gateway_options(&config) {
        Ok(o) => o,
        Err(code) => return code,
    };
    let metrics_addr = a.metrics.or_else(|| config.gateway.metrics_listen.clone());
    let metrics_listener = match &metrics_addr {
        Some(m) => match bind(m, "gateway metrics").await {
            Ok(l) => Some(l),
            Err(code) => return code,
        },
        None => None,
    };
    let buildbot = match &config.gateway.buildbot_listen {
        Some(b) => match bind(b, "Buildbot workers ([gateway] buildbot_listen)").await {
            Ok(l) => Some(l),
            Err(code) => return code,
        },
        None => None,
    };
    let mut bound = vec![("grpc", &listener)];
    bound.extend(metrics_listener.iter().map(|l| ("metrics", l)));
    bound.extend(buildbot.iter().map(|l| ("buildbot", l)));
    if let Err(code) = write_ready_file(a.ready_file.as_deref(), &bound) {
        return code;
    }
    let metrics_server = metrics_listener.map(|l| {
        tracing::info!(addr = %shown(&l), "gateway metrics on /metrics");
        tokio::spawn(flotilla_master::http::serve_metrics_only(
            l,
            signals.graceful.clone(),
        ))
    });
    if let Some(l) = &buildbot {
        tracing::info!(addr = %shown(l), "Buildbot workers listening");
    }
    tracing::info!(addr = %shown(&listener), "gateway listening");
    let served =
        flotilla_gateway::serve_with(listener, buildbot, opts, signals.graceful.clone()).await;
    if let Some(m) = metrics_server {
        let _ = m.await;
    }
    match served {
        Ok(()) => Exit::Ok,
        Err(e) => {
            eprintln!("flotilla: gateway stopped: {e}");
            Exit::Failed
        }
    }
}

pub fn gateway_options(
    config: &flotilla_master::config::ClusterConfig,
) -> Result<flotilla_gateway::GatewayOptions, Exit> {
    let mut opts = flotilla_gateway::GatewayOptions {
        default_silence_timeout: config.cluster.master_timeout.get() / 2,
        ..Default::default()
    };
    match (&config.gateway.tls_cert, &config.gateway.tls_key) {
        (Some(cert), Some(key)) => {
            opts.tls = Some(flotilla_gateway::TlsFiles {
                cert: cert.into(),
                key: key.into(),
            });
        }
        (None, None) => {}
        _ => {
            eprintln!(
                "flotilla: bad configuration: key `gateway.tls_cert`: tls_cert and tls_key go together"
            );
            return Err(Exit::Config);
        }
    }
    Ok(opts)
}

pub async fn worker(a: WorkerArgs) -> Exit {
    let password = match (&a.password_env, &a.password_file) {
        (Some(var), _) => match std::env::var(var) {
            Ok(p) => p,
            Err(_) => {
                eprintln!("flotilla: environment variable {var} (--password-env) is not set");
                return Exit::Config;
            }
        },
        (None, Some(path)) => match std::fs::read_to_string(path) {
            Ok(p) => p.trim_end_matches(['\n', '\r']).to_owned(),
            Err(e) => {
                eprintln!(
                    "flotilla: cannot read --password-file {}: {e}",
                    path.display()
                );
                return Exit::Config;
            }
        },
        (None, None) => {
            eprintln!("flotilla: give --password-env VAR or --password-file FILE");
            return Exit::Usage;
        }
    };
    let signals = match install_signals() {
        Ok(s) => s,
        Err(code) => return code,
    };
    let opts = flotilla_worker::WorkerOptions {
        gateway: a.gateway,
        name: a.name,
        password,
        basedir: a.basedir,
        heartbeat_interval: Duration::from_secs(5),
        max_backoff: Duration::from_secs(10),
        tls_ca: a.tls_ca,
        give_up_after_refusals: a.give_up_after_refusals,
    };
    match flotilla_worker::run(opts, signals.graceful.clone()).await {
        Ok(()) => Exit::Ok,
        Err(e) => {
            eprintln!("flotilla: worker stopped: {e}");
            Exit::from(&e)
        }
    }
}
