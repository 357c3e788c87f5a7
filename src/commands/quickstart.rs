//! `flotilla quickstart`: a whole cluster in one process on the embedded
//! SQLite database — the gateway, one master and one local worker — with a
//! sample build forced at once. Writes a sample `cluster.toml` the first
//! time, so the same folder can later be run piece by piece.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use flotilla_master::config::ClusterConfig;
use flotilla_master::master::{self, MasterOptions, Shutdown};
use rand::Rng;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::client_cmds::BuildsetCreated;
use super::servers::gateway_options;
use super::{load_config, wait};
use crate::cli::QuickstartArgs;
use crate::client::ApiClient;
use crate::exit::{self, Exit};
use crate::signals::Signals;

const WORKER: &str = "local";
const SAMPLE_BUILDER: &str = "hello";

fn sample_config(dir: &Path, http: &str, gateway: &str, password: &str) -> String {
    let db = dir.join("state.sqlite");
    format!(
        r#"# flotilla cluster file written by `flotilla quickstart`.
# Every master and the gateway load the same file. Every key is described in
# docs/configuration.md of the flotilla source (`flotilla check --config FILE`
# validates a file without a database).

[database]
url = "sqlite://{db}"

[cluster]
heartbeat_interval = "2s"
master_timeout = "10s"

[gateway]
listen = "{gateway}"

[api]
listen = "{http}"

[[workers]]
name = "{WORKER}"
password = "{password}"

[[builders]]
name = "{SAMPLE_BUILDER}"
workers = ["{WORKER}"]
  [[builders.steps]]
  name = "greet"
  command = ["sh", "-c", "echo \"hello from $FLOTILLA_WORKER, build $FLOTILLA_BUILD_NUMBER of $FLOTILLA_BUILDER at revision $FLOTILLA_REVISION\""]
  timeout = "1m"
  [[builders.steps]]
  name = "environment"
  command = ["sh", "-c", "uname -a; env | grep ^FLOTILLA_ | sort"]
  timeout = "1m"

[[schedulers]]
name = "force"
kind = "force"
builders = ["{SAMPLE_BUILDER}"]
"#,
        db = db.display()
    )
}

fn absolute(dir: &Path) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    dir.canonicalize()
}

pub async fn run(a: QuickstartArgs) -> Exit {
    let dir = match absolute(&a.dir) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("flotilla: cannot create {}: {e}", a.dir.display());
            return Exit::Failed;
        }
    };
    let config_path = dir.join("cluster.toml");
    if !config_path.exists() {
        let password: String = rand::rng()
            .sample_iter(rand::distr::Alphanumeric)
            .take(24)
            .map(char::from)
            .collect();
        if let Err(e) = std::fs::write(
            &config_path,
            sample_config(&dir, &a.http, &a.gateway, &password),
        ) {
            eprintln!("flotilla: cannot write {}: {e}", config_path.display());
            return Exit::Failed;
        }
        println!("wrote a sample cluster file: {}", config_path.display());
    }
    let config = match load_config(&config_path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let signals = match Signals::install() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("flotilla: cannot install signal handlers: {e}");
            return Exit::Software;
        }
    };
    run_cluster(&a, &dir, config, &signals).await
}

async fn run_cluster(
    a: &QuickstartArgs,
    dir: &Path,
    config: ClusterConfig,
    signals: &Signals,
) -> Exit {
    let store = match super::db::connect(&config.database.url).await {
        Ok(s) => s,
        Err(code) => return code,
    };
    match store.upgrade().await {
        Ok(applied) if !applied.is_empty() => {
            println!("database schema created ({} migrations)", applied.len())
        }
        Ok(_) => {}
        Err(e) => return exit::db_error("cannot create the schema", &e),
    }
    let http = match tokio::net::TcpListener::bind(&config.api.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!(
                "flotilla: cannot listen on {}: {e} (is another quickstart running?)",
                config.api.listen
            );
            return Exit::Failed;
        }
    };
    let gw_listener = match tokio::net::TcpListener::bind(&config.gateway.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("flotilla: cannot listen on {}: {e}", config.gateway.listen);
            return Exit::Failed;
        }
    };
    let gw_opts = match gateway_options(&config) {
        Ok(o) => o,
        Err(code) => return code,
    };
    let Some(worker_cfg) = config.worker(WORKER).cloned() else {
        eprintln!(
            "flotilla: {}: no [[workers]] entry named {WORKER:?}",
            dir.join("cluster.toml").display()
        );
        return Exit::Config;
    };
    let password = match worker_cfg.resolve_password() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("flotilla: {e}");
            return Exit::Config;
        }
    };
    let api_url = format!("http://{}", config.api.listen);
    let gateway_url = config.gateway.master_urls().remove(0);

    // The gateway and worker outlive the master's shutdown so builds can finish.
    let gw_stop = CancellationToken::new();
    let gateway = tokio::spawn(flotilla_gateway::serve(
        gw_listener,
        gw_opts,
        gw_stop.clone(),
    ));
    let master_shutdown = Shutdown {
        graceful: signals.graceful.child_token(),
        immediate: signals.immediate.child_token(),
    };
    let opts = MasterOptions {
        config: Arc::new(config),
        name: "quickstart".to_owned(),
        http,
        store,
    };
    let master = tokio::spawn(master::run(opts, master_shutdown.clone()));
    let worker_stop = CancellationToken::new();
    let worker = tokio::spawn(flotilla_worker::run(
        flotilla_worker::WorkerOptions {
            gateway: gateway_url,
            name: WORKER.to_owned(),
            password,
            basedir: dir.join("worker"),
            heartbeat_interval: Duration::from_secs(5),
            max_backoff: Duration::from_secs(5),
            tls_ca: None,
            // Its own password, from this process: a refusal cannot last.
            give_up_after_refusals: 0,
        },
        worker_stop.clone(),
    ));

    println!("dashboard and API: {api_url}");
    let api = ApiClient::new(&api_url);
    let body = json!({"builder": SAMPLE_BUILDER, "reason": "quickstart sample build", "revision": "sample"});
    let sample = match api.post::<_, BuildsetCreated>("/api/v1/force", &body).await {
        Ok(created) => {
            println!(
                "forced a sample build of {SAMPLE_BUILDER:?}: build request(s) {:?}",
                created.buildrequest_ids
            );
            wait::for_requests(&api, &created.buildrequest_ids, true).await
        }
        Err(e) => exit::client_error(&e),
    };
    let verdict = if sample == Exit::Ok {
        "sample build succeeded"
    } else {
        "sample build did not succeed"
    };
    if a.once {
        // The dashboard goes away with this process: no link to a dead page.
        println!(
            "{verdict}; stopping (--once). Run without --once to keep the dashboard at {api_url}"
        );
    } else {
        println!("{verdict}; see {api_url}");
    }
    if !a.once {
        println!("running; press Ctrl-C to stop");
        signals.graceful.cancelled().await;
    }
    master_shutdown.graceful.cancel();
    let master_result = master.await;
    worker_stop.cancel();
    gw_stop.cancel();
    let _ = worker.await;
    let _ = gateway.await;
    match master_result {
        Ok(Ok(())) => sample,
        Ok(Err(e)) => {
            eprintln!("flotilla: master stopped: {e}");
            Exit::from(&e)
        }
        Err(e) => {
            eprintln!("flotilla: master task failed: {e}");
            Exit::Software
        }
    }
}
