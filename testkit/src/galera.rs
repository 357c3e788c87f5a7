//! A three-node Galera cluster on loopback for one test: three `mariadbd`
//! with their own data folders and ports, `wsrep_on`, one cluster address
//! naming all three group ports. The first node bootstraps the cluster
//! (`--wsrep-new-cluster`) on a fresh data folder; the others join with an
//! empty one and receive a full state transfer (rsync). A node stopped
//! cleanly and started again rejoins by incremental state transfer.
//!
//! Galera comes with Debian's `galera-4` package (`scripts/ensure-mariadb`
//! installs it). Every server is killed when the cluster is dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use sqlx::{Connection, Executor};

use crate::mariadb::{install_db, mariadbd};
use crate::ports::free_port;
use crate::proc::stop_child;

/// The Galera provider library of Debian's `galera-4`.
pub const PROVIDER: &str = "/usr/lib/galera/libgalera_smm.so";

/// How long a node may take to join (a full state transfer included).
const JOIN_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug)]
pub struct GaleraNode {
    /// SQL port.
    pub port: u16,
    /// Group communication port (`gmcast.listen_addr`).
    gcomm: u16,
    /// Incremental state transfer port.
    ist: u16,
    /// Full state transfer port.
    sst: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl GaleraNode {
    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }
}

#[derive(Debug)]
pub struct Galera {
    pub dir: tempfile::TempDir,
    pub nodes: Vec<GaleraNode>,
    name: String,
}

impl Galera {
    /// Starts three nodes and waits until all are synced members of one
    /// three-node cluster (about 10–20 s).
    pub async fn start() -> Galera {
        assert!(
            Path::new(PROVIDER).exists(),
            "{PROVIDER} is missing: install galera-4 (scripts/ensure-mariadb)"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        // The rsync state transfer's daemon runs as `nobody` when started by
        // root: it must be able to enter the joiners' data folders.
        allow_all(dir.path());
        let mut nodes = Vec::new();
        for i in 0..3 {
            let node_dir = dir.path().join(format!("node{}", i + 1));
            std::fs::create_dir_all(node_dir.join("data")).expect("node folder");
            allow_all(&node_dir);
            allow_all(&node_dir.join("data"));
            nodes.push(GaleraNode {
                port: free_port(),
                gcomm: free_port(),
                ist: free_port(),
                sst: free_port(),
                dir: node_dir,
                child: None,
            });
        }
        install_db(&nodes[0].data());
        let mut g = Galera {
            name: format!("flotilla_{}", std::process::id()),
            dir,
            nodes,
        };
        g.spawn(0, true);
        g.wait_synced(0, 1).await;
        g.spawn(1, false);
        g.spawn(2, false);
        for i in 0..3 {
            g.wait_synced(i, 3).await;
        }
        g
    }

    /// `mysql://` URL of `database` on node `i`.
    pub fn url(&self, i: usize, database: &str) -> String {
        format!("mysql://root@127.0.0.1:{}/{database}", self.nodes[i].port)
    }

    /// Creates a uniquely named database (replicated to every node) and
    /// returns its name.
    pub async fn create_database(&self, prefix: &str) -> String {
        let name = format!("flotilla_{prefix}_{}", std::process::id());
        let mut c = sqlx::MySqlConnection::connect(&self.url(0, ""))
            .await
            .expect("connect to node 1");
        c.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE `{name}`")))
            .await
            .expect("create database");
        let _ = c.close().await;
        name
    }

    fn spawn(&mut self, i: usize, bootstrap: bool) {
        let address = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.gcomm))
            .collect::<Vec<_>>()
            .join(",");
        let n = &self.nodes[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(n.dir.join("server.log"))
            .expect("server log");
        let mut cmd = mariadbd(&n.dir, n.port);
        cmd.args([
            "--innodb-flush-log-at-trx-commit=2",
            "--binlog-format=ROW",
            "--innodb-autoinc-lock-mode=2",
            "--wsrep-on=ON",
            "--wsrep-sst-method=rsync",
        ])
            .arg(format!("--wsrep-provider={PROVIDER}"))
            .arg(format!("--wsrep-cluster-address=gcomm://{address}"))
            .arg(format!("--wsrep-cluster-name={}", self.name))
            .arg(format!("--wsrep-node-name=node{}", i + 1))
            .arg(format!("--wsrep-node-address=127.0.0.1:{}", n.gcomm))
            .arg(format!("--wsrep-sst-receive-address=127.0.0.1:{}", n.sst))
            .arg(format!(
                "--wsrep-provider-options=gmcast.listen_addr=tcp://127.0.0.1:{};ist.recv_addr=127.0.0.1:{};gcache.size=64M",
                n.gcomm, n.ist
            ));
        if bootstrap {
            cmd.arg("--wsrep-new-cluster");
        }
        // Every statement each node runs, for hunting a failure (the
        // cluster's folder is then kept: its path is printed).
        if std::env::var_os("FLOTILLA_GALERA_GENERAL_LOG").is_some() {
            cmd.arg("--general-log=1").arg(format!(
                "--general-log-file={}",
                n.dir.join("general.log").display()
            ));
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start mariadbd");
        self.nodes[i].child = Some(child);
    }

    /// A status variable of node `i`, if it answers.
    pub async fn status(&self, i: usize, variable: &str) -> Option<String> {
        let mut c = sqlx::MySqlConnection::connect(&self.url(i, ""))
            .await
            .ok()?;
        let v: Option<String> = sqlx::query_scalar(
            "SELECT CAST(VARIABLE_VALUE AS CHAR) FROM information_schema.GLOBAL_STATUS \
             WHERE VARIABLE_NAME = ?",
        )
        .bind(variable.to_uppercase())
        .fetch_optional(&mut c)
        .await
        .ok()
        .flatten();
        let _ = c.close().await;
        v
    }

    /// Waits until node `i` is synced in a cluster of `size` nodes.
    pub async fn wait_synced(&self, i: usize, size: usize) {
        let start = Instant::now();
        loop {
            let state = self.status(i, "wsrep_local_state_comment").await;
            let members = self.status(i, "wsrep_cluster_size").await;
            if state.as_deref() == Some("Synced") && members == Some(size.to_string()) {
                return;
            }
            assert!(
                start.elapsed() < JOIN_TIMEOUT,
                "Galera node {} not synced in a cluster of {size} after {JOIN_TIMEOUT:?} \
                 (state {state:?}, size {members:?})\n{}",
                i + 1,
                self.log_tail(i)
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Stops node `i` cleanly (its position saved, so it can rejoin by
    /// incremental state transfer) and waits until the others see two nodes.
    pub async fn stop_node(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            tokio::task::spawn_blocking(move || stop_child(&mut child, Duration::from_secs(60)))
                .await
                .expect("stop a Galera node");
        }
        for j in (0..3).filter(|j| *j != i) {
            self.wait_synced(j, 2).await;
        }
    }

    /// Starts node `i` again and waits until the cluster has three synced nodes.
    pub async fn start_node(&mut self, i: usize) {
        self.spawn(i, false);
        for j in 0..3 {
            self.wait_synced(j, 3).await;
        }
    }

    /// The last lines of node `i`'s server log.
    pub fn log_tail(&self, i: usize) -> String {
        let text =
            std::fs::read_to_string(self.nodes[i].dir.join("server.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().rev().take(40).collect();
        lines.into_iter().rev().collect::<Vec<_>>().join("\n")
    }
}

impl Drop for Galera {
    fn drop(&mut self) {
        if std::env::var_os("FLOTILLA_GALERA_GENERAL_LOG").is_some() {
            let kept = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("tempdir"));
            eprintln!("Galera folders kept in {}", kept.keep().display());
        }
        for n in &mut self.nodes {
            if let Some(mut child) = n.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

fn allow_all(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o777))
        .expect("open up a Galera folder");
}
