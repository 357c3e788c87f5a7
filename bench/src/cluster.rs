//! A cluster of real `flotilla` processes for a scenario: the cluster file
//! (written here), one gateway, masters, real workers, and the HTTP calls
//! the bench makes to the masters' API.
//!
//! Process output goes to files in a temporary directory; set
//! `BENCH_KEEP=1` to keep it and `BENCH_RUST_LOG` to raise the log level.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use serde_json::Value;

use crate::procs::{Proc, flotilla_bin, free_port, wait_for};

/// What goes into the cluster file.
#[derive(Clone, Debug)]
pub struct Spec {
    pub database_url: String,
    /// Worker names; each one's password is `<name>-secret`.
    pub workers: Vec<String>,
    /// `[[builders]]` sections.
    pub builders_toml: String,
    pub heartbeat_interval: String,
    pub master_timeout: String,
    /// `None` keeps the default.
    pub poll_interval: Option<String>,
}

impl Spec {
    pub fn new(database_url: &str, workers: Vec<String>, builders_toml: String) -> Spec {
        Spec {
            database_url: database_url.to_owned(),
            workers,
            builders_toml,
            heartbeat_interval: "1s".to_owned(),
            master_timeout: "10s".to_owned(),
            poll_interval: None,
        }
    }

    /// `["a", "b"]` for a builder's `workers` key.
    pub fn toml_list(names: &[String]) -> String {
        let quoted: Vec<String> = names.iter().map(|n| format!("\"{n}\"")).collect();
        format!("[{}]", quoted.join(", "))
    }
}

/// Names `w0001 ..` for `n` workers.
pub fn worker_names(n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("w{i:04}")).collect()
}

#[derive(Debug)]
pub struct MasterProc {
    pub proc: Proc,
    pub name: String,
    pub http: u16,
}

#[derive(Debug)]
pub struct Cluster {
    pub config: PathBuf,
    bin: PathBuf,
    pub gateway_port: u16,
    pub gateway: Option<Proc>,
    pub masters: Vec<MasterProc>,
    pub workers: Vec<Proc>,
    pub http: reqwest::Client,
    /// Last: removed after every process above is killed.
    pub dir: tempfile::TempDir,
}

impl Cluster {
    /// Writes the cluster file; starts nothing yet.
    pub fn new(spec: Spec) -> anyhow::Result<Cluster> {
        let bin = flotilla_bin()?;
        let dir = tempfile::Builder::new()
            .prefix("flotilla-bench-")
            .disable_cleanup(std::env::var_os("BENCH_KEEP").is_some())
            .tempdir()
            .context("create a temporary directory")?;
        let gateway_port = free_port()?;
        let mut toml = String::new();
        let _ = write!(
            toml,
            "[database]\nurl = \"{}\"\nmax_connections = 10\n\n[cluster]\n\
             heartbeat_interval = \"{}\"\nmaster_timeout = \"{}\"\n",
            spec.database_url, spec.heartbeat_interval, spec.master_timeout
        );
        if let Some(p) = &spec.poll_interval {
            let _ = writeln!(toml, "poll_interval = \"{p}\"");
        }
        let _ = write!(
            toml,
            "\n[gateway]\nlisten = \"127.0.0.1:{gateway_port}\"\n\n"
        );
        for name in &spec.workers {
            let _ = write!(
                toml,
                "[[workers]]\nname = \"{name}\"\npassword = \"{name}-secret\"\n\n"
            );
        }
        toml.push_str(&spec.builders_toml);
        let config = dir.path().join("cluster.toml");
        std::fs::write(&config, toml).context("write the cluster file")?;
        Ok(Cluster {
            dir,
            config,
            bin,
            gateway_port,
            gateway: None,
            masters: Vec::new(),
            workers: Vec::new(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()?,
        })
    }

    pub fn gateway_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.gateway_port)
    }

    pub fn start_gateway(&mut self) -> anyhow::Result<()> {
        let args = vec![
            "gateway".to_owned(),
            "--config".to_owned(),
            self.config.display().to_string(),
        ];
        self.gateway = Some(Proc::spawn(
            "gateway",
            &self.bin,
            &args,
            &[],
            self.dir.path(),
        )?);
        Ok(())
    }

    /// Waits until the gateway accepts TCP connections.
    pub async fn wait_gateway(&self) -> anyhow::Result<()> {
        let addr = format!("127.0.0.1:{}", self.gateway_port);
        wait_for("the gateway to listen", Duration::from_secs(30), || async {
            tokio::net::TcpStream::connect(&addr).await.ok().map(|_| ())
        })
        .await
    }

    /// Starts master `name`; returns its index.
    pub fn start_master(&mut self, name: &str) -> anyhow::Result<usize> {
        let http = free_port()?;
        let args = vec![
            "master".to_owned(),
            "--config".to_owned(),
            self.config.display().to_string(),
            "--name".to_owned(),
            name.to_owned(),
            "--http".to_owned(),
            format!("127.0.0.1:{http}"),
        ];
        let log = format!("master-{name}-{}", self.masters.len());
        let proc = Proc::spawn(&log, &self.bin, &args, &[], self.dir.path())?;
        self.masters.push(MasterProc {
            proc,
            name: name.to_owned(),
            http,
        });
        Ok(self.masters.len() - 1)
    }

    /// Starts a real worker process for worker `name`.
    pub fn start_worker(&mut self, name: &str) -> anyhow::Result<()> {
        let basedir = self.dir.path().join(format!("basedir-{name}"));
        let args = vec![
            "worker".to_owned(),
            "--gateway".to_owned(),
            self.gateway_url(),
            "--name".to_owned(),
            name.to_owned(),
            "--password-env".to_owned(),
            "WORKER_PASSWORD".to_owned(),
            "--basedir".to_owned(),
            basedir.display().to_string(),
        ];
        let env = vec![("WORKER_PASSWORD".to_owned(), format!("{name}-secret"))];
        let p = Proc::spawn(
            &format!("worker-{name}"),
            &self.bin,
            &args,
            &env,
            self.dir.path(),
        )?;
        self.workers.push(p);
        Ok(())
    }

    pub fn api(&self, m: usize) -> String {
        format!("http://127.0.0.1:{}", self.masters[m].http)
    }

    pub async fn get(&self, url: &str) -> Option<Value> {
        let resp = self.http.get(url).send().await.ok()?;
        if !resp.status().is_success() {
            return None;
        }
        resp.json().await.ok()
    }

    /// Waits until master `m` is ready (database reachable) and linked to the gateway.
    pub async fn wait_master_ready(&self, m: usize) -> anyhow::Result<()> {
        let url = format!("{}/readyz", self.api(m));
        wait_for(
            &format!("master {} ready", self.masters[m].name),
            Duration::from_secs(60),
            || async {
                self.get(&url)
                    .await
                    .filter(|v| v["gateway_links"].as_u64() >= Some(1))
                    .map(|_| ())
            },
        )
        .await
    }

    /// Workers attached to master `m` (the API lists them a page at a time).
    pub async fn workers_on(&self, m: usize) -> usize {
        const PAGE: usize = 500;
        let mut n = 0;
        for page in 0.. {
            let url = format!(
                "{}/api/v1/workers?connected=true&limit={PAGE}&offset={}",
                self.api(m),
                page * PAGE
            );
            let Some(Value::Array(ws)) = self.get(&url).await else {
                break;
            };
            n += ws
                .iter()
                .filter(|w| w["master"].as_str() == Some(self.masters[m].name.as_str()))
                .count();
            if ws.len() < PAGE {
                break;
            }
        }
        n
    }

    /// Waits until `n` workers are attached to running masters.
    pub async fn wait_workers(&mut self, n: usize, timeout: Duration) -> anyhow::Result<()> {
        let live: Vec<usize> = (0..self.masters.len())
            .filter(|&m| self.masters[m].proc.running())
            .collect();
        let this = &*self;
        wait_for(&format!("{n} workers attached"), timeout, || {
            let live = live.clone();
            async move {
                let mut total = 0;
                for m in live {
                    total += this.workers_on(m).await;
                }
                (total >= n).then_some(())
            }
        })
        .await
    }

    /// Forces one build of `builder` through master `m`; returns its request id.
    pub async fn force(&self, m: usize, builder: &str) -> anyhow::Result<i64> {
        let body = serde_json::json!({"builder": builder, "branch": "main", "repository": "bench"});
        let resp = self
            .http
            .post(format!("{}/api/v1/force", self.api(m)))
            .json(&body)
            .send()
            .await
            .context("POST /api/v1/force")?;
        let status = resp.status();
        let v: Value = resp.json().await.context("force answer")?;
        anyhow::ensure!(status.is_success(), "force failed: {status} {v}");
        v["buildrequest_ids"][0]
            .as_i64()
            .with_context(|| format!("no request id in {v}"))
    }

    /// The tail of every process's output.
    pub fn dump(&self) -> String {
        let mut out = String::new();
        let procs = self
            .gateway
            .iter()
            .chain(self.masters.iter().map(|m| &m.proc))
            .chain(self.workers.iter());
        for p in procs {
            let _ = writeln!(out, "===== {} =====\n{}", p.name, p.tail(30));
        }
        out
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::env::var_os("BENCH_DUMP").is_some() {
            eprintln!("{}", self.dump());
        }
        if std::env::var_os("BENCH_KEEP").is_some() {
            eprintln!("keeping {}", self.dir.path().display());
        }
    }
}
