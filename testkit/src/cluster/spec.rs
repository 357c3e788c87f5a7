//! What a cluster is made of, and the cluster file written from it.

use std::fmt::Write as _;
use std::time::Duration;

#[derive(Clone, Debug)]
pub struct ClusterSpec {
    /// Masters [`Cluster::start`](super::Cluster::start) starts (`m1`, `m2`, …).
    pub masters: usize,
    /// (worker name, password it connects with); the cluster file holds `<name>-secret`.
    pub workers: Vec<(String, String)>,
    /// `[[builders]]` sections.
    pub builders_toml: String,
    /// `[cluster]` timings; an empty one is left out (the product's default).
    pub heartbeat_interval: &'static str,
    pub master_timeout: &'static str,
    pub claim_renew_interval: &'static str,
    pub claim_lease: &'static str,
    pub shutdown_grace: &'static str,
    pub poll_interval: &'static str,
    /// Extra environment for the masters (secrets named by `*_env` keys).
    pub master_env: Vec<(String, String)>,
    /// A database of the test's own (e.g. on a private server); default: a fresh one on the shared server.
    pub database_url: Option<String>,
    /// Extra `[database]` keys (TOML lines), e.g. `max_connections = 10`.
    pub database_extra: String,
    /// Route each master's database connections and its gateway link through
    /// relays of its own ([`MasterLinks`](super::MasterLinks)), for injecting network faults.
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
    /// `masters` masters and workers `w1`..`w<workers>` with short timings, for tests.
    pub fn new(masters: usize, workers: usize, builders_toml: &str) -> ClusterSpec {
        ClusterSpec {
            masters,
            workers: (1..=workers)
                .map(|i| (format!("w{i}"), format!("w{i}-secret")))
                .collect(),
            builders_toml: builders_toml.to_owned(),
            heartbeat_interval: "500ms",
            master_timeout: "4s",
            claim_renew_interval: "2s",
            claim_lease: "60s",
            shutdown_grace: "20s",
            poll_interval: "200ms",
            master_env: Vec::new(),
            database_url: None,
            database_extra: String::new(),
            relays: false,
            cluster_extra: String::new(),
            gateway_extra: String::new(),
            master_start_gap: Duration::ZERO,
        }
    }

    /// All workers of the spec, for a builder's `workers = [...]`.
    pub fn worker_list(&self) -> String {
        let names: Vec<String> = self.workers.iter().map(|(n, _)| n.clone()).collect();
        toml_list(&names)
    }

    /// The cluster file: the database at `database_url`, the gateway
    /// listening at (and reached by masters at) `gateway_listen`.
    pub fn cluster_file(&self, database_url: &str, gateway_listen: &str) -> String {
        let mut t = format!("[database]\nurl = \"{database_url}\"\n");
        push_lines(&mut t, &self.database_extra);
        t.push_str("\n[cluster]\n");
        let timings = [
            ("heartbeat_interval", self.heartbeat_interval),
            ("master_timeout", self.master_timeout),
            ("claim_renew_interval", self.claim_renew_interval),
            ("claim_lease", self.claim_lease),
            ("shutdown_grace", self.shutdown_grace),
            ("poll_interval", self.poll_interval),
        ];
        for (key, value) in timings.iter().filter(|(_, v)| !v.is_empty()) {
            let _ = writeln!(t, "{key} = \"{value}\"");
        }
        push_lines(&mut t, &self.cluster_extra);
        let _ = write!(t, "\n[gateway]\nlisten = \"{gateway_listen}\"\n");
        push_lines(&mut t, &self.gateway_extra);
        t.push('\n');
        for (name, _) in &self.workers {
            let _ = write!(
                t,
                "[[workers]]\nname = \"{name}\"\npassword = \"{name}-secret\"\n\n"
            );
        }
        t.push_str(&self.builders_toml);
        t
    }
}

/// `["a", "b"]` for a TOML list of names.
pub fn toml_list(names: &[String]) -> String {
    let quoted: Vec<String> = names.iter().map(|n| format!("\"{n}\"")).collect();
    format!("[{}]", quoted.join(", "))
}

/// Appends TOML lines, ending them with a newline.
fn push_lines(t: &mut String, lines: &str) {
    if !lines.is_empty() {
        t.push_str(lines);
        if !lines.ends_with('\n') {
            t.push('\n');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ClusterSpec;

    #[test]
    fn empty_timings_are_left_out_and_extras_kept() {
        let mut spec = ClusterSpec::new(1, 2, "[[builders]]\nname = \"b\"\n");
        spec.claim_lease = "";
        spec.database_extra = "max_connections = 10".to_owned();
        let file = spec.cluster_file("mysql://root@db/x", "127.0.0.1:0");
        assert!(
            file.contains("max_connections = 10\n\n[cluster]\n"),
            "{file}"
        );
        assert!(file.contains("claim_renew_interval = \"2s\"\n"), "{file}");
        assert!(!file.contains("claim_lease"), "{file}");
        assert!(file.contains("listen = \"127.0.0.1:0\""), "{file}");
        assert!(
            file.contains("name = \"w2\"\npassword = \"w2-secret\""),
            "{file}"
        );
        assert!(file.ends_with("name = \"b\"\n"), "{file}");
        assert_eq!(spec.worker_list(), "[\"w1\", \"w2\"]");
    }
}
