//! The bench's clusters of real `flotilla` processes: the test kit's
//! [`Cluster`], with the cluster file settings and the calls of the bench.
//!
//! Process output goes to files in a temporary directory; set
//! `BENCH_KEEP=1` to keep it, `BENCH_DUMP=1` to print its tail at the end
//! and `BENCH_RUST_LOG` to raise the log level.

use std::time::Duration;

use anyhow::Context;
use flotilla_testkit::cluster::Cluster;
use flotilla_testkit::cluster::{ClusterSpec, toml_list};

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
        toml_list(names)
    }

    /// Writes the cluster file (the product's defaults but for the timings
    /// above and 10 database connections per process); starts nothing yet.
    pub fn cluster(self) -> anyhow::Result<Cluster> {
        let mut spec = ClusterSpec::new(0, 0, &self.builders_toml);
        spec.workers = self
            .workers
            .iter()
            .map(|n| (n.clone(), format!("{n}-secret")))
            .collect();
        spec.heartbeat_interval = "";
        spec.master_timeout = "";
        spec.claim_renew_interval = "";
        spec.claim_lease = "";
        spec.shutdown_grace = "";
        spec.poll_interval = "";
        spec.database_extra = "max_connections = 10\n".to_owned();
        spec.cluster_extra = format!(
            "heartbeat_interval = \"{}\"\nmaster_timeout = \"{}\"\n",
            self.heartbeat_interval, self.master_timeout
        );
        if let Some(p) = &self.poll_interval {
            spec.cluster_extra += &format!("poll_interval = \"{p}\"\n");
        }
        let keep = std::env::var_os("BENCH_KEEP").is_some();
        let dir = tempfile::Builder::new()
            .prefix("flotilla-bench-")
            .disable_cleanup(keep)
            .tempdir()
            .context("create a temporary directory")?;
        if keep {
            eprintln!("keeping {}", dir.path().display());
        }
        let mut c = Cluster::prepare(spec, None, self.database_url, dir)?;
        let log = std::env::var("BENCH_RUST_LOG").unwrap_or_else(|_| "warn".into());
        c.proc_env = vec![("RUST_LOG".to_owned(), log)];
        c.http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()?;
        c.dump_on_drop = std::env::var_os("BENCH_DUMP").is_some();
        Ok(c)
    }
}

/// Names `w0001 ..` for `n` workers.
pub fn worker_names(n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("w{i:04}")).collect()
}

/// Forces one build of `builder` through master `m`; returns its request id.
pub async fn force(cluster: &Cluster, m: usize, builder: &str) -> anyhow::Result<i64> {
    let body = serde_json::json!({"builder": builder, "branch": "main", "repository": "bench"});
    cluster.try_force(m, &body).await
}
