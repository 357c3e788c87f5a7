//! A cluster of real `flotilla` processes: one gateway, N masters, M workers,
//! sharing one cluster file and one fresh MariaDB database.
//!
//! With `spec.relays`, each master reaches the database and the gateway
//! through TCP relays of its own (`links`), set per master with the
//! environment overrides `FLOTILLA_DATABASE__URL` and `FLOTILLA_GATEWAY__URLS`,
//! so a test can cut, delay or reset one master's links.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};

use serde_json::Value;

use super::relay::Relay;
use super::{TestDb, eventually, flotilla_bin, free_port};

/// A child process, killed (SIGKILL) when dropped.
#[derive(Debug)]
pub struct Proc {
    pub name: String,
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn spawn(name: &str, args: &[String], env: &[(String, String)], log_dir: &Path) -> Proc {
        let log = log_dir.join(format!("{name}.log"));
        let out = File::create(&log).expect("create process log");
        let err = out.try_clone().expect("clone log handle");
        let mut cmd = Command::new(flotilla_bin());
        cmd.args(args)
            .envs(env.iter().cloned())
            .env("RUST_LOG", "info,flotilla_master=debug")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        let child = cmd.spawn().expect("spawn flotilla");
        Proc {
            name: name.to_owned(),
            child,
            log,
        }
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, sig);
    }

    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for the process to exit on its own; None if it did not in time.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let start = std::time::Instant::now();
        while start.elapsed() < timeout {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status.code().unwrap_or(-1));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

#[derive(Clone, Debug)]
pub struct ClusterSpec {
    pub masters: usize,
    /// (worker name, password it connects with); the cluster file holds `<name>-secret`.
    pub workers: Vec<(String, String)>,
    /// `[[builders]]` sections.
    pub builders_toml: String,
    pub heartbeat_interval: &'static str,
    pub master_timeout: &'static str,
    pub shutdown_grace: &'static str,
    pub poll_interval: &'static str,
    /// Extra environment for the masters (secrets named by `*_env` keys).
    pub master_env: Vec<(String, String)>,
    /// A database of the test's own (e.g. on a private server); default: a fresh one on the shared server.
    pub database_url: Option<String>,
    /// Route each master's database connections and its gateway link through
    /// relays of its own ([`MasterLinks`]), for injecting network faults.
    pub relays: bool,
    /// Extra `[cluster]` keys (TOML lines) for the cluster file.
    pub cluster_extra: String,
    /// Extra `[gateway]` keys (TOML lines) for the cluster file.
    pub gateway_extra: String,
    /// Pause between starting one master and the next (zero: all at once,
    /// which leaves their heartbeat loops in step with each other).
    pub master_start_gap: Duration,
}

impl ClusterSpec {
    pub fn new(masters: usize, workers: usize, builders_toml: &str) -> ClusterSpec {
        ClusterSpec {
            masters,
            workers: (1..=workers)
                .map(|i| (format!("w{i}"), format!("w{i}-secret")))
                .collect(),
            builders_toml: builders_toml.to_owned(),
            heartbeat_interval: "500ms",
            master_timeout: "4s",
            shutdown_grace: "20s",
            poll_interval: "200ms",
            master_env: Vec::new(),
            database_url: None,
            relays: false,
            cluster_extra: String::new(),
            gateway_extra: String::new(),
            master_start_gap: Duration::ZERO,
        }
    }

    /// All workers of the spec, for a builder's `workers = [...]`.
    pub fn worker_list(&self) -> String {
        let names: Vec<String> = self
            .workers
            .iter()
            .map(|(n, _)| format!("\"{n}\""))
            .collect();
        format!("[{}]", names.join(", "))
    }
}

/// The relays one master reaches the cluster through (kept across its restarts).
#[derive(Debug)]
pub struct MasterLinks {
    /// Between the master and the database.
    pub db: Relay,
    /// Between the master and the gateway.
    pub gateway: Relay,
}

#[derive(Debug)]
pub struct MasterProc {
    pub proc: Proc,
    pub name: String,
    pub http: u16,
}

#[derive(Debug)]
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub db: Option<TestDb>,
    pub db_url: String,
    pub config: PathBuf,
    pub spec: ClusterSpec,
    pub gateway_port: u16,
    pub gateway: Option<Proc>,
    pub masters: Vec<MasterProc>,
    pub workers: Vec<Option<Proc>>,
    pub http: reqwest::Client,
    /// Processes that were replaced (kept for their logs).
    pub retired: Vec<Proc>,
    /// Each master's relays by master name, when `spec.relays`.
    pub links: HashMap<String, MasterLinks>,
    boots: usize,
}

impl Cluster {
    pub async fn start(prefix: &str, spec: ClusterSpec) -> Cluster {
        let (db, db_url) = match &spec.database_url {
            Some(url) => (None, url.clone()),
            None => {
                let db = TestDb::create(prefix).await;
                let url = db.url.clone();
                (Some(db), url)
            }
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let gateway_port = free_port();
        let mut toml = format!(
            "[database]\nurl = \"{}\"\n\n[cluster]\nheartbeat_interval = \"{}\"\nmaster_timeout = \"{}\"\n\
             claim_renew_interval = \"2s\"\nclaim_lease = \"60s\"\nshutdown_grace = \"{}\"\npoll_interval = \"{}\"\n{}\n\
             [gateway]\nlisten = \"127.0.0.1:{gateway_port}\"\n{}\n",
            db_url,
            spec.heartbeat_interval,
            spec.master_timeout,
            spec.shutdown_grace,
            spec.poll_interval,
            spec.cluster_extra,
            spec.gateway_extra
        );
        for (name, _) in &spec.workers {
            toml.push_str(&format!(
                "[[workers]]\nname = \"{name}\"\npassword = \"{name}-secret\"\n\n"
            ));
        }
        toml.push_str(&spec.builders_toml);
        let config = dir.path().join("cluster.toml");
        std::fs::write(&config, toml).expect("write cluster file");
        let status = Command::new(flotilla_bin())
            .args(["db", "upgrade", "--config"])
            .arg(&config)
            .status()
            .expect("run db upgrade");
        assert!(status.success(), "db upgrade failed");
        let mut c = Cluster {
            dir,
            db,
            db_url,
            config,
            spec: spec.clone(),
            gateway_port,
            gateway: None,
            masters: Vec::new(),
            workers: Vec::new(),
            http: reqwest::Client::new(),
            retired: Vec::new(),
            links: HashMap::new(),
            boots: 0,
        };
        c.start_gateway();
        for i in 0..spec.masters {
            if i > 0 && !spec.master_start_gap.is_zero() {
                tokio::time::sleep(spec.master_start_gap).await;
            }
            c.start_master(&format!("m{}", i + 1));
        }
        // Workers register once every master is linked to the gateway, so
        // rendezvous routing spreads them over all masters.
        c.wait_linked().await;
        for i in 0..spec.workers.len() {
            let p = c.spawn_worker(i);
            c.workers.push(Some(p));
        }
        c.wait_ready().await;
        c
    }

    fn log_dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn start_gateway(&mut self) {
        let args = vec![
            "gateway".to_owned(),
            "--config".to_owned(),
            self.config.display().to_string(),
        ];
        self.boots += 1;
        let name = format!("gateway-boot{}", self.boots);
        self.gateway = Some(Proc::spawn(&name, &args, &[], self.dir.path()));
    }

    pub fn start_master(&mut self, name: &str) -> usize {
        let http = free_port();
        let proc = self.spawn_master(name, http);
        self.masters.push(MasterProc {
            proc,
            name: name.to_owned(),
            http,
        });
        self.masters.len() - 1
    }

    fn spawn_master(&mut self, name: &str, http: u16) -> Proc {
        let args = vec![
            "master".to_owned(),
            "--config".to_owned(),
            self.config.display().to_string(),
            "--name".to_owned(),
            name.to_owned(),
            "--http".to_owned(),
            format!("127.0.0.1:{http}"),
        ];
        self.boots += 1;
        let log_name = format!("master-{name}-boot{}", self.boots);
        let mut env = self.spec.master_env.clone();
        if self.spec.relays {
            let db_url = self.db_url.clone();
            let links = self.links_of(name);
            env.push((
                "FLOTILLA_DATABASE__URL".to_owned(),
                with_address(&db_url, &links.db.addr()),
            ));
            env.push((
                "FLOTILLA_GATEWAY__URLS".to_owned(),
                format!("[\"http://{}\"]", links.gateway.addr()),
            ));
        }
        Proc::spawn(&log_name, &args, &env, self.dir.path())
    }

    /// Master `name`'s relays, started on first use.
    fn links_of(&mut self, name: &str) -> &MasterLinks {
        let db_target = address_of(&self.db_url);
        let gw_target: SocketAddr = ([127, 0, 0, 1], self.gateway_port).into();
        self.links
            .entry(name.to_owned())
            .or_insert_with(|| MasterLinks {
                db: Relay::start(&format!("{name}-db"), db_target),
                gateway: Relay::start(&format!("{name}-gateway"), gw_target),
            })
    }

    /// Master `i`'s relays (the cluster must have been started with `spec.relays`).
    pub fn links(&self, i: usize) -> &MasterLinks {
        self.links
            .get(&self.masters[i].name)
            .expect("the cluster runs with relays")
    }

    /// Index of the master named `name`.
    pub fn master_index(&self, name: &str) -> usize {
        self.masters
            .iter()
            .position(|m| m.name == name)
            .unwrap_or_else(|| panic!("no master named {name}"))
    }

    /// Starts master `i` again (same name and HTTP port) after it exited or was killed.
    pub fn restart_master(&mut self, i: usize) {
        let (name, http) = (self.masters[i].name.clone(), self.masters[i].http);
        let proc = self.spawn_master(&name, http);
        let old = std::mem::replace(&mut self.masters[i].proc, proc);
        self.retired.push(old);
    }

    pub fn kill9_master(&mut self, i: usize) {
        self.masters[i].proc.kill9();
    }

    pub fn signal_master(&self, i: usize, sig: nix::sys::signal::Signal) {
        self.masters[i].proc.signal(sig);
    }

    /// kill -9 the gateway and start it again on the same port.
    pub fn restart_gateway(&mut self, down_for: Duration) {
        if let Some(mut g) = self.gateway.take() {
            g.kill9();
            self.retired.push(g);
        }
        std::thread::sleep(down_for);
        self.start_gateway();
    }

    pub fn spawn_worker(&self, i: usize) -> Proc {
        let (name, password) = &self.spec.workers[i];
        let basedir = self.dir.path().join(format!("basedir-{name}"));
        let args = vec![
            "worker".to_owned(),
            "--gateway".to_owned(),
            format!("http://127.0.0.1:{}", self.gateway_port),
            "--name".to_owned(),
            name.clone(),
            "--password-env".to_owned(),
            "WORKER_PASSWORD".to_owned(),
            "--basedir".to_owned(),
            basedir.display().to_string(),
        ];
        let env = vec![("WORKER_PASSWORD".to_owned(), password.clone())];
        Proc::spawn(&format!("worker-{name}"), &args, &env, self.log_dir())
    }

    pub fn api(&self, master: usize) -> String {
        format!("http://127.0.0.1:{}", self.masters[master].http)
    }

    /// Any master whose process is still running.
    pub fn any_api(&mut self) -> String {
        let i = self
            .masters
            .iter_mut()
            .position(|m| matches!(m.proc.child.try_wait(), Ok(None)))
            .expect("a running master");
        self.api(i)
    }

    pub async fn get(&self, url: &str) -> Option<Value> {
        let resp = self.http.get(url).send().await.ok()?;
        if !resp.status().is_success() {
            return None;
        }
        resp.json().await.ok()
    }

    pub async fn get_text(&self, url: &str) -> Option<String> {
        let resp = self.http.get(url).send().await.ok()?;
        if !resp.status().is_success() {
            return None;
        }
        resp.text().await.ok()
    }

    /// Waits until every master has a link to the gateway.
    pub async fn wait_linked(&self) {
        for i in 0..self.masters.len() {
            let url = format!("{}/readyz", self.api(i));
            eventually(
                &format!("master {i} linked to the gateway"),
                Duration::from_secs(30),
                || async {
                    self.get(&url)
                        .await
                        .filter(|v| v["gateway_links"].as_u64() >= Some(1))
                        .map(|_| ())
                },
            )
            .await;
        }
    }

    /// Waits until every master is ready and every worker whose password is
    /// right is attached to some master.
    pub async fn wait_ready(&self) {
        for i in 0..self.masters.len() {
            let url = format!("{}/readyz", self.api(i));
            eventually(
                &format!("master {i} ready"),
                Duration::from_secs(30),
                || async {
                    self.http
                        .get(&url)
                        .send()
                        .await
                        .ok()
                        .filter(|r| r.status().is_success())
                        .map(|_| ())
                },
            )
            .await;
        }
        let good = self
            .spec
            .workers
            .iter()
            .filter(|(n, p)| *p == format!("{n}-secret"))
            .count();
        eventually("workers attached", Duration::from_secs(30), || async {
            (self.connected_workers().await >= good).then_some(())
        })
        .await;
    }

    /// Workers attached to any running master (each master lists the whole
    /// cluster's workers, so they are counted once by name).
    pub async fn connected_workers(&self) -> usize {
        let mut names = std::collections::HashSet::new();
        for i in 0..self.masters.len() {
            if let Some(Value::Array(ws)) =
                self.get(&format!("{}/api/v1/workers", self.api(i))).await
            {
                names.extend(
                    ws.iter()
                        .filter(|w| w["connected"] == Value::Bool(true))
                        .filter_map(|w| w["name"].as_str().map(str::to_owned)),
                );
            }
        }
        names.len()
    }

    /// Forces one build through master `m`'s API; returns the request id.
    pub async fn force(&self, m: usize, builder: &str, revision: &str) -> i64 {
        let body = serde_json::json!({"builder": builder, "revision": revision, "branch": "main", "repository": "test"});
        let resp: Value = self
            .http
            .post(format!("{}/api/v1/force", self.api(m)))
            .json(&body)
            .send()
            .await
            .expect("force")
            .json()
            .await
            .expect("force answer");
        resp["buildrequest_ids"][0].as_i64().expect("a request id")
    }

    /// Waits until every request is complete; returns their JSON rows.
    pub async fn wait_complete(&self, m: usize, ids: &[i64], timeout: Duration) -> Vec<Value> {
        let mut rows = Vec::new();
        for id in ids {
            let url = format!("{}/api/v1/buildrequests/{id}", self.api(m));
            let row = eventually(&format!("request {id} complete"), timeout, || async {
                self.get(&url)
                    .await
                    .filter(|r| r["complete"] == Value::Bool(true))
            })
            .await;
            rows.push(row);
        }
        rows
    }

    pub async fn builds_of(&self, m: usize, request: i64) -> Vec<Value> {
        match self
            .get(&format!(
                "{}/api/v1/builds?buildrequest_id={request}",
                self.api(m)
            ))
            .await
        {
            Some(Value::Array(a)) => a,
            _ => Vec::new(),
        }
    }

    pub async fn step_log(&self, m: usize, build: i64, step: i64) -> String {
        self.get_text(&format!(
            "{}/api/v1/builds/{build}/steps/{step}/log",
            self.api(m)
        ))
        .await
        .unwrap_or_default()
    }

    pub async fn connect_db(&self) -> sqlx::mysql::MySqlConnection {
        use sqlx::Connection;
        sqlx::mysql::MySqlConnection::connect(&self.db_url)
            .await
            .expect("connect to the test database")
    }

    /// Every process's output, for a failing test.
    pub fn dump(&self) -> String {
        let mut out = String::new();
        let procs = self
            .gateway
            .iter()
            .chain(self.masters.iter().map(|m| &m.proc))
            .chain(self.workers.iter().flatten())
            .chain(self.retired.iter());
        for p in procs {
            let text = p.output();
            let tail: Vec<&str> = text.lines().rev().take(60).collect();
            out.push_str(&format!("===== {} =====\n", p.name));
            for l in tail.into_iter().rev() {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.dump());
        }
    }
}

/// `host:port` of a `mysql://user@host:port/db` URL, resolved.
fn address_of(url: &str) -> SocketAddr {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    let hostport = rest.split(['/', '?']).next().unwrap_or(rest);
    let hostport = if hostport.contains(':') {
        hostport.to_owned()
    } else {
        format!("{hostport}:3306")
    };
    hostport
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .unwrap_or_else(|| panic!("cannot resolve the database address in {url}"))
}

/// `url` with its `host:port` replaced by `addr`.
fn with_address(url: &str, addr: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("mysql", url));
    let (user, rest) = match rest.rsplit_once('@') {
        Some((u, r)) => (format!("{u}@"), r),
        None => (String::new(), rest),
    };
    let tail = rest.find(['/', '?']).map_or("", |i| &rest[i..]);
    format!("{scheme}://{user}{addr}{tail}")
}
