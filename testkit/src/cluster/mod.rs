//! A cluster of real `flotilla` processes: one gateway, masters and workers
//! sharing one cluster file and one database.
//!
//! Every process that listens binds port 0 and reports its address in a
//! ready file, so the start order is: the gateway (with the cluster file's
//! `listen = "127.0.0.1:0"`), then the cluster file rewritten with the
//! address the gateway got, then the masters (which read it there) and the
//! workers (given it on their command line). A restarted gateway or master
//! binds the address it had before, since the others and the test hold it.
//!
//! With `spec.relays`, each master reaches the database and the gateway
//! through TCP relays of its own (`links`), set per master with the
//! environment overrides `FLOTILLA_DATABASE__URL` and `FLOTILLA_GATEWAY__URLS`,
//! so a test can cut, delay or reset one master's links.

mod api;
mod links;
mod spec;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::Context;

pub use links::{MasterLinks, address_of, with_address};
pub use spec::{ClusterSpec, toml_list};

use crate::database::TestDb;
use crate::ports::{Bound, spawn_listening};
pub use crate::proc::Proc;
use crate::proc::try_flotilla_bin;

#[derive(Debug)]
pub struct MasterProc {
    pub proc: Proc,
    pub name: String,
    /// The HTTP API's port (0 while the master has not listened yet).
    pub http: u16,
}

#[derive(Debug)]
pub struct Cluster {
    pub db: Option<TestDb>,
    pub db_url: String,
    pub config: PathBuf,
    pub spec: ClusterSpec,
    /// The gateway's port (0 until it first listened).
    pub gateway_port: u16,
    pub gateway: Option<Proc>,
    pub masters: Vec<MasterProc>,
    pub workers: Vec<Option<Proc>>,
    pub http: reqwest::Client,
    /// Processes that were replaced (kept for their logs).
    pub retired: Vec<Proc>,
    /// Each master's relays by master name, when `spec.relays`.
    pub links: HashMap<String, MasterLinks>,
    /// Environment of every process started (e.g. `RUST_LOG`).
    pub proc_env: Vec<(String, String)>,
    /// Print every process's output when dropped (it is printed anyway when
    /// the thread panics).
    pub dump_on_drop: bool,
    bin: PathBuf,
    boots: usize,
    /// Last: removed after every process above is killed.
    pub dir: tempfile::TempDir,
}

impl Cluster {
    /// A fresh database (unless the spec names one), the schema, the
    /// gateway, `spec.masters` masters and the workers, all ready.
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
        let mut c =
            Cluster::prepare(spec.clone(), db, db_url, dir).unwrap_or_else(|e| panic!("{e:#}"));
        c.db_upgrade();
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

    /// Starts the gateway, masters `m1`..`m<masters>` and, once every master
    /// is ready and linked to the gateway, every worker of the spec; waits
    /// up to `timeout` for each of those steps.
    pub async fn try_start_all(&mut self, masters: usize, timeout: Duration) -> anyhow::Result<()> {
        self.try_start_gateway()?;
        for i in 0..masters {
            self.try_start_master(&format!("m{}", i + 1))?;
        }
        for m in 0..self.masters.len() {
            self.wait_master_linked(m, timeout).await?;
        }
        let names: Vec<String> = self.spec.workers.iter().map(|(n, _)| n.clone()).collect();
        for name in &names {
            self.try_start_worker(name)?;
        }
        self.wait_workers(names.len(), timeout).await
    }

    /// Writes the cluster file into `dir`; starts nothing.
    pub fn prepare(
        spec: ClusterSpec,
        db: Option<TestDb>,
        db_url: String,
        dir: tempfile::TempDir,
    ) -> anyhow::Result<Cluster> {
        let config = dir.path().join("cluster.toml");
        let c = Cluster {
            db,
            db_url,
            config,
            spec,
            gateway_port: 0,
            gateway: None,
            masters: Vec::new(),
            workers: Vec::new(),
            http: reqwest::Client::new(),
            retired: Vec::new(),
            links: HashMap::new(),
            proc_env: Vec::new(),
            dump_on_drop: false,
            bin: try_flotilla_bin()?,
            boots: 0,
            dir,
        };
        c.write_config()?;
        Ok(c)
    }

    /// The cluster file, with the gateway's address once it listens.
    fn write_config(&self) -> anyhow::Result<()> {
        let listen = format!("127.0.0.1:{}", self.gateway_port);
        let text = self.spec.cluster_file(&self.db_url, &listen);
        std::fs::write(&self.config, text).context("write the cluster file")
    }

    /// `flotilla db upgrade` on the cluster's database.
    pub fn db_upgrade(&self) {
        let status = Command::new(&self.bin)
            .args(["db", "upgrade", "--config"])
            .arg(&self.config)
            .status()
            .expect("run db upgrade");
        assert!(status.success(), "db upgrade failed");
    }

    fn log_dir(&self) -> &Path {
        self.dir.path()
    }

    /// `http://<gateway address>`, for workers.
    pub fn gateway_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.gateway_port)
    }

    /// Starts `flotilla ARGS` as a process that listens (see
    /// [`spawn_listening`]), with the cluster's environment and `env`.
    fn spawn_listening(
        &mut self,
        kind: &str,
        args: Vec<String>,
        env: &[(String, String)],
    ) -> anyhow::Result<(Proc, Option<Bound>)> {
        self.boots += 1;
        let name = format!("{kind}-boot{}", self.boots);
        let mut env_all = self.proc_env.clone();
        env_all.extend(env.iter().cloned());
        spawn_listening(&name, &self.bin, &args, &env_all, self.log_dir())
    }

    /// Starts the gateway and waits until it listens: on a port of its own
    /// choosing the first time (then written into the cluster file for the
    /// masters), on the same port when started again.
    pub fn try_start_gateway(&mut self) -> anyhow::Result<()> {
        let mut args = vec![
            "gateway".to_owned(),
            "--config".to_owned(),
            self.config.display().to_string(),
        ];
        if self.gateway_port != 0 {
            args.extend([
                "--listen".to_owned(),
                format!("127.0.0.1:{}", self.gateway_port),
            ]);
        }
        let (proc, bound) = self.spawn_listening("gateway", args, &[])?;
        let Some(bound) = bound else {
            anyhow::bail!("the gateway exited before it listened:\n{}", proc.tail(20));
        };
        self.gateway = Some(proc);
        if self.gateway_port == 0 {
            self.gateway_port = bound.get("grpc")?.port();
            self.write_config()?;
        }
        Ok(())
    }

    pub fn start_gateway(&mut self) {
        self.try_start_gateway().unwrap_or_else(|e| panic!("{e:#}"));
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

    /// Starts master `name` and waits until it listens; returns its index.
    /// A master that exits before it listens is kept (with port 0) for the
    /// test to read its exit code and log.
    pub fn try_start_master(&mut self, name: &str) -> anyhow::Result<usize> {
        let (proc, http) = self.spawn_master(name, 0)?;
        self.masters.push(MasterProc {
            proc,
            name: name.to_owned(),
            http,
        });
        Ok(self.masters.len() - 1)
    }

    pub fn start_master(&mut self, name: &str) -> usize {
        self.try_start_master(name)
            .unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Starts master `name` with its HTTP API on `http` (0: a port of its
    /// own choosing); returns the process and the port it listens on.
    fn spawn_master(&mut self, name: &str, http: u16) -> anyhow::Result<(Proc, u16)> {
        let args = vec![
            "master".to_owned(),
            "--config".to_owned(),
            self.config.display().to_string(),
            "--name".to_owned(),
            name.to_owned(),
            "--http".to_owned(),
            format!("127.0.0.1:{http}"),
        ];
        let mut env = self.spec.master_env.clone();
        if self.spec.relays {
            let db_url = self.db_url.clone();
            env.extend(self.links_of(name).master_env(&db_url));
        }
        let (proc, bound) = self.spawn_listening(&format!("master-{name}"), args, &env)?;
        let port = match bound {
            Some(b) => b.get("http")?.port(),
            None => http,
        };
        Ok((proc, port))
    }

    /// Master `name`'s relays, started on first use.
    fn links_of(&mut self, name: &str) -> &MasterLinks {
        let gateway: SocketAddr = ([127, 0, 0, 1], self.gateway_port).into();
        let db_url = &self.db_url;
        self.links
            .entry(name.to_owned())
            .or_insert_with(|| MasterLinks::start(name, db_url, gateway))
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

    /// Starts master `i` again (same name and HTTP port: the test and its
    /// helpers hold its address) after it exited or was killed.
    pub fn restart_master(&mut self, i: usize) {
        let (name, http) = (self.masters[i].name.clone(), self.masters[i].http);
        let (proc, port) = self
            .spawn_master(&name, http)
            .unwrap_or_else(|e| panic!("{e:#}"));
        self.masters[i].http = port;
        let old = std::mem::replace(&mut self.masters[i].proc, proc);
        self.retired.push(old);
    }

    pub fn kill9_master(&mut self, i: usize) {
        self.masters[i].proc.kill9();
    }

    pub fn signal_master(&self, i: usize, sig: nix::sys::signal::Signal) {
        self.masters[i].proc.signal(sig);
    }

    /// A worker process for the spec's worker `i` (its name and password).
    pub fn spawn_worker(&self, i: usize) -> Proc {
        let (name, password) = &self.spec.workers[i];
        self.try_spawn_worker(name, password)
            .unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Starts a worker process for the spec's worker `name` and keeps it.
    pub fn try_start_worker(&mut self, name: &str) -> anyhow::Result<()> {
        let (_, password) = self
            .spec
            .workers
            .iter()
            .find(|(n, _)| n == name)
            .with_context(|| format!("no worker {name} in the spec"))?;
        let p = self.try_spawn_worker(name, password)?;
        self.workers.push(Some(p));
        Ok(())
    }

    fn try_spawn_worker(&self, name: &str, password: &str) -> anyhow::Result<Proc> {
        let basedir = self.log_dir().join(format!("basedir-{name}"));
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
        let mut env = self.proc_env.clone();
        env.push(("WORKER_PASSWORD".to_owned(), password.to_owned()));
        Proc::try_spawn(
            &format!("worker-{name}"),
            &self.bin,
            &args,
            &env,
            self.log_dir(),
        )
    }

    /// The tail of every process's output, for a failing test.
    pub fn dump(&self) -> String {
        let procs = self
            .gateway
            .iter()
            .chain(self.masters.iter().map(|m| &m.proc))
            .chain(self.workers.iter().flatten())
            .chain(self.retired.iter());
        crate::proc::dump(procs, 60)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.dump_on_drop || std::thread::panicking() {
            eprintln!("{}", self.dump());
        }
    }
}
