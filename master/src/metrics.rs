//! Every metric the master exports, named and described in one place.
//!
//! The runtime records them with the `metrics` macros using these constants;
//! [`describe`] gives each its help text and [`HISTOGRAM_BUCKETS`] the bucket
//! bounds the Prometheus exporter uses. Gauges that are cheaper to read than
//! to keep up to date (pending requests per builder, connected workers) are
//! set when `/metrics` is scraped.
//!
//! The gateway exports its own family, `flotilla_gateway_*` (connected
//! masters and workers, routed messages, refused workers, master attaches
//! and fences), recorded in `worker-gateway`; [`describe_gateway`] gives
//! those their help text where the gateway's `/metrics` is served.
//!
//! [`install`] installs the process-wide Prometheus recorder with those
//! bounds and help texts (the master at start, the gateway's `/metrics`).
//!
//! Every exported metric has help text: `promtool check metrics` must pass
//! on every scrape (the tests run it).

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Requests a claim round asked the database for (counter).
pub const CLAIMS_ATTEMPTED: &str = "flotilla_claims_attempted_total";
/// Requests won by a claim compare-and-swap (counter).
pub const CLAIMS_WON: &str = "flotilla_claims_won_total";
/// Requests won that no idle worker could take, unclaimed at once (counter).
pub const CLAIMS_GIVEN_BACK: &str = "flotilla_claims_given_back_total";
/// Claims a renewal found no longer ours; their builds were stopped (counter).
pub const CLAIMS_LOST: &str = "flotilla_claims_lost_total";
/// Seconds one claim round spent in the database (histogram).
pub const CLAIM_SECONDS: &str = "flotilla_claim_seconds";
/// Claims renewed (counter).
pub const CLAIM_RENEWALS: &str = "flotilla_claim_renewals_total";
/// Claims of dead masters or expired leases released by this master (counter).
pub const REAPED_CLAIMS: &str = "flotilla_reaped_claims_total";
/// Times this master fenced itself: no heartbeat confirmed within the fence (counter).
pub const FENCED: &str = "flotilla_fenced_total";
/// Masters this master declared dead (counter).
pub const MASTERS_DECLARED_DEAD: &str = "flotilla_masters_declared_dead_total";
/// Builders whose written claim count was found wrong and corrected (counter).
pub const CLAIM_COUNTS_CORRECTED: &str = "flotilla_claim_counts_corrected_total";
/// Claims this master held but ran no build for, given back (counter).
pub const ORPHANED_CLAIMS: &str = "flotilla_orphaned_claims_total";
/// Incomplete requests without a running build, per `builder` (gauge, set at scrape).
pub const PENDING_REQUESTS: &str = "flotilla_pending_requests";
/// Builds running on this master (gauge).
pub const RUNNING_BUILDS: &str = "flotilla_running_builds";
/// Build duration in seconds, per `builder` and `results` (histogram).
pub const BUILD_DURATION: &str = "flotilla_build_duration_seconds";
/// Builds finished on this master, per `builder` and `results` (counter).
pub const BUILDS_FINISHED: &str = "flotilla_builds_finished_total";
/// Workers attached to this master (gauge, set at scrape).
pub const CONNECTED_WORKERS: &str = "flotilla_connected_workers";
/// Database operations of the background loops that failed (counter).
pub const DATABASE_ERRORS: &str = "flotilla_database_errors_total";
/// Write transactions run again because the database aborted or refused
/// them, per `reason`: `deadlock` (1213: a deadlock victim, or on Galera a
/// certification failure, also at `COMMIT`), `lock_wait_timeout`,
/// `node_not_ready` (1047: a Galera node outside the primary component),
/// `busy` (SQLite) (counter).
pub const DATABASE_RETRIES: &str = "flotilla_database_retries_total";
/// Times the database became reachable again after failing (counter).
pub const DATABASE_RECONNECTS: &str = "flotilla_database_reconnects_total";
/// Build stop requests this master acted on (counter).
pub const BUILDS_STOPPED: &str = "flotilla_builds_stopped_total";
/// Janitor runs finished on this master (counter).
pub const JANITOR_RUNS: &str = "flotilla_janitor_runs_total";
/// Rows the janitor deleted, per `kind` (counter).
pub const JANITOR_DELETED: &str = "flotilla_janitor_deleted_rows_total";
/// HTTP API requests answered, per `status` class (counter).
pub const HTTP_REQUESTS: &str = "flotilla_http_requests_total";
/// Buildsets a scheduler created, per `scheduler` (counter).
pub const SCHEDULER_BUILDSETS: &str = "flotilla_scheduler_buildsets_total";
/// Output or exits from a worker for a command this master did not send it (counter).
pub const FOREIGN_WORKER_MESSAGES: &str = "flotilla_master_foreign_worker_messages_total";
/// Reporter deliveries sent and accepted, per `reporter` (counter).
pub const REPORTER_DELIVERIES_SENT: &str = "flotilla_reporter_deliveries_sent_total";
/// Reporter delivery attempts that failed, per `reporter` and `final`
/// (`true`: given up; `false`: to be tried again) (counter).
pub const REPORTER_DELIVERIES_FAILED: &str = "flotilla_reporter_deliveries_failed_total";
/// Seconds since the oldest reporter delivery still to send was enqueued (gauge).
pub const REPORTER_PENDING_AGE: &str = "flotilla_reporter_pending_age_seconds";

/// The gateway's metrics: `(name, kind, help)`.
pub const GATEWAY_METRICS: &[(&str, Kind, &str)] = &[
    (
        "flotilla_gateway_connected_masters",
        Kind::Gauge,
        "Masters linked to this gateway",
    ),
    (
        "flotilla_gateway_connected_workers",
        Kind::Gauge,
        "Workers connected to this gateway",
    ),
    (
        "flotilla_gateway_routed_messages_total",
        Kind::Counter,
        "Messages passed between workers and masters, per direction",
    ),
    (
        "flotilla_gateway_workers_refused_total",
        Kind::Counter,
        "Workers refused (unknown name, wrong password, or no master to take them)",
    ),
    (
        "flotilla_gateway_master_attaches_total",
        Kind::Counter,
        "Master links attached to this gateway",
    ),
    (
        "flotilla_gateway_master_fenced_total",
        Kind::Counter,
        "Masters whose commands were stopped after their link fell silent",
    ),
    (
        "flotilla_gateway_auth_failures_total",
        Kind::Counter,
        "Worker registrations refused for a wrong password or a name held by a live session",
    ),
    (
        "flotilla_gateway_connections",
        Kind::Gauge,
        "Open worker connections, registered or not",
    ),
    (
        "flotilla_gateway_connections_closed_total",
        Kind::Counter,
        "Connections closed by the gateway before registering, per reason",
    ),
    (
        "flotilla_gateway_foreign_messages_total",
        Kind::Counter,
        "Output or exits a worker sent for a command that was not sent to it, per kind",
    ),
    (
        "flotilla_gateway_oversize_messages_total",
        Kind::Counter,
        "Streams ended for a message over the size limit",
    ),
    (
        "flotilla_gateway_sessions_replaced_total",
        Kind::Counter,
        "Worker sessions taken over by a newcomer after failing a liveness probe",
    ),
    (
        "flotilla_gateway_workers_dropped_total",
        Kind::Counter,
        "Workers dropped for silence or a frozen process, per reason",
    ),
];

/// The kind of a metric described by name only.
#[derive(Clone, Copy, Debug)]
pub enum Kind {
    Counter,
    Gauge,
}

/// Bucket bounds (seconds) of each histogram.
pub const HISTOGRAM_BUCKETS: &[(&str, &[f64])] = &[
    (
        CLAIM_SECONDS,
        &[
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
        ],
    ),
    (
        BUILD_DURATION,
        &[
            0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0,
        ],
    ),
];

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process-wide Prometheus recorder (once; later calls reuse it).
pub fn install() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let mut builder = PrometheusBuilder::new();
            for (name, buckets) in HISTOGRAM_BUCKETS {
                builder =
                    match builder.set_buckets_for_metric(Matcher::Full((*name).into()), buckets) {
                        Ok(b) => b,
                        Err(e) => {
                            tracing::warn!(metric = name, error = %e, "bad histogram buckets");
                            return None;
                        }
                    };
            }
            match builder.install_recorder() {
                Ok(h) => {
                    // The master and the gateway may share a process (quickstart).
                    describe();
                    describe_gateway();
                    Some(h)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "metrics recorder not installed");
                    None
                }
            }
        })
        .clone()
}

/// Gives every metric its help text (once the recorder is installed).
pub fn describe() {
    use ::metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        CLAIMS_ATTEMPTED,
        "Requests a claim round asked the database for"
    );
    describe_counter!(CLAIMS_WON, "Requests won by a claim compare-and-swap");
    describe_counter!(
        CLAIMS_GIVEN_BACK,
        "Requests won that no idle worker could take, unclaimed at once"
    );
    describe_counter!(
        CLAIMS_LOST,
        "Claims a renewal found no longer ours (their builds were stopped)"
    );
    describe_histogram!(
        CLAIM_SECONDS,
        Unit::Seconds,
        "Time one claim round spent in the database"
    );
    describe_counter!(CLAIM_RENEWALS, "Claims renewed");
    describe_counter!(
        FENCED,
        "Times this master fenced itself because no heartbeat was confirmed in time"
    );
    describe_counter!(MASTERS_DECLARED_DEAD, "Masters this master declared dead");
    describe_counter!(
        CLAIM_COUNTS_CORRECTED,
        "Builders whose written claim count was found wrong and corrected"
    );
    describe_counter!(
        ORPHANED_CLAIMS,
        "Claims this master held but ran no build for, given back"
    );
    describe_counter!(
        REAPED_CLAIMS,
        "Claims of dead masters or expired leases released by this master"
    );
    describe_gauge!(
        PENDING_REQUESTS,
        "Incomplete build requests without a running build, per builder"
    );
    describe_gauge!(RUNNING_BUILDS, "Builds running on this master");
    describe_histogram!(
        BUILD_DURATION,
        Unit::Seconds,
        "Build duration per builder and result"
    );
    describe_counter!(
        BUILDS_FINISHED,
        "Builds finished on this master per builder and result"
    );
    describe_gauge!(CONNECTED_WORKERS, "Workers attached to this master");
    describe_counter!(
        DATABASE_ERRORS,
        "Database operations of the background loops that failed"
    );
    describe_counter!(
        DATABASE_RECONNECTS,
        "Times the database became reachable again after failing"
    );
    describe_counter!(
        DATABASE_RETRIES,
        "Write transactions run again after the database aborted or refused them (deadlock or Galera certification, lock wait timeout, Galera node not ready, SQLite busy)"
    );
    describe_counter!(BUILDS_STOPPED, "Build stop requests this master acted on");
    describe_counter!(JANITOR_RUNS, "Janitor runs finished on this master");
    describe_counter!(JANITOR_DELETED, "Rows the janitor deleted, per kind");
    describe_counter!(
        HTTP_REQUESTS,
        "HTTP API requests answered, per status class"
    );
    describe_counter!(
        SCHEDULER_BUILDSETS,
        "Buildsets created by schedulers, per scheduler"
    );
    describe_counter!(
        FOREIGN_WORKER_MESSAGES,
        "Output or exits from a worker for a command this master did not send it"
    );
    describe_counter!(
        REPORTER_DELIVERIES_SENT,
        "Reporter deliveries sent and accepted, per reporter"
    );
    describe_counter!(
        REPORTER_DELIVERIES_FAILED,
        "Reporter delivery attempts that failed, per reporter and whether it was given up (final)"
    );
    describe_gauge!(
        REPORTER_PENDING_AGE,
        Unit::Seconds,
        "Age of the oldest reporter delivery still to send"
    );
}

/// Gives the gateway's metrics their help text (once the recorder is installed).
pub fn describe_gateway() {
    for (name, kind, help) in GATEWAY_METRICS {
        match kind {
            Kind::Counter => ::metrics::describe_counter!(*name, *help),
            Kind::Gauge => ::metrics::describe_gauge!(*name, *help),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                rust_files(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }

    /// A metric recorded under a name spelt out where it is recorded would
    /// escape [`super::describe`] and the operations guide.
    #[test]
    fn metrics_are_recorded_by_the_names_in_this_file() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        rust_files(&src, &mut files);
        assert!(files.len() > 20, "{files:?}");
        let mut literal = Vec::new();
        for file in files.iter().filter(|f| !f.ends_with("metrics.rs")) {
            let text = std::fs::read_to_string(file).unwrap();
            for (n, line) in text.lines().enumerate() {
                for mac in ["counter!(", "gauge!(", "histogram!("] {
                    let after = line.split(mac).skip(1);
                    if after.map(str::trim_start).any(|a| a.starts_with('"')) {
                        literal.push(format!("{}:{}", file.display(), n + 1));
                    }
                }
            }
        }
        assert!(
            literal.is_empty(),
            "metric names spelt out instead of named in metrics.rs: {literal:#?}"
        );
    }
}
