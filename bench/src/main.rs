//! `flotilla-bench`: measures a flotilla cluster against a real MariaDB.
//!
//! Each run creates its own uniquely named database, runs one scenario,
//! drops the database, prints progress on stderr and exactly one JSON object
//! on the last line of stdout. The exit code is 0 when the scenario's own
//! correctness check passed (no request lost or run twice), 1 when it failed
//! or could not run, 2 on a bad command line.
//!
//! Scenarios (see BENCHMARKS.md for what each measures and the latest
//! figures): `claim`, `latency`, `scale`, `failover`, `memory`, `logs`.
//! `--quick` runs any of them at a small size, for CI.
//!
//! Modules: [`database`] (the throw-away database), [`delay_proxy`]
//! (added network latency to the database), [`seed`] (bulk SQL that
//! fills the queue), [`cluster`] (a cluster of real `flotilla` processes,
//! from the test kit), [`sim_worker`]
//! (light simulated workers speaking the gateway protocol), [`stats`],
//! [`timing`] (clocks, waiting for and checking requests), [`report`] and
//! one module per scenario under [`scenarios`].

mod cluster;
mod database;
mod delay_proxy;
mod report;
mod scenarios;
mod seed;
mod sim_worker;
mod stats;
mod timing;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use report::Report;

#[derive(Debug, Parser)]
#[command(
    name = "flotilla-bench",
    about = "Benchmarks of a flotilla cluster on MariaDB",
    version
)]
struct Cli {
    /// MariaDB server (no database name): a fresh database is created on it.
    #[arg(
        long,
        global = true,
        env = "FLOTILLA_TEST_MYSQL",
        default_value = "mysql://root@127.0.0.1:3306"
    )]
    mysql: String,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// N independent stores run the real claim code against R pending
    /// requests; compared with bare primary-key CAS updates in the same run.
    Claim(scenarios::claim::Args),
    /// Full stack as processes: time from the force API call to the step starting.
    Latency(scenarios::latency::Args),
    /// Claim time and master start time with many pending requests.
    Scale(scenarios::scale::Args),
    /// kill -9 one of three busy masters; time until its requests run elsewhere.
    Failover(scenarios::failover::Args),
    /// Master and gateway memory with many simulated workers attached.
    Memory(scenarios::memory::Args),
    /// One step writing a large log: storage rate and master memory.
    Logs(scenarios::logs::Args),
}

impl Scenario {
    fn name(&self) -> &'static str {
        match self {
            Scenario::Claim(_) => "claim",
            Scenario::Latency(_) => "latency",
            Scenario::Scale(_) => "scale",
            Scenario::Failover(_) => "failover",
            Scenario::Memory(_) => "memory",
            Scenario::Logs(_) => "logs",
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let name = cli.scenario.name();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("flotilla-bench: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(&cli.mysql, cli.scenario));
    let report = match result {
        Ok(r) => r,
        Err(e) => Report::failed(name, format!("{e:#}")),
    };
    let ok = report.ok();
    for p in report.problems() {
        eprintln!("flotilla-bench: CHECK FAILED: {p}");
    }
    println!("{}", report.to_json());
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Parser of a whole number of at least 1 (a bad size is a bad command line, exit 2).
pub(crate) fn positive<T>() -> clap::builder::RangedU64ValueParser<T>
where
    T: TryFrom<u64> + Clone + Send + Sync + 'static,
    <T as TryFrom<u64>>::Error: std::fmt::Display + Send + Sync + 'static,
{
    clap::builder::RangedU64ValueParser::new().range(1..)
}

async fn run(server: &str, mut scenario: Scenario) -> anyhow::Result<Report> {
    let name = scenario.name();
    // `claim --galera`: a cluster of our own, up for the whole run.
    let mut galera = None;
    let mut server = server.to_owned();
    if let Scenario::Claim(a) = &mut scenario
        && a.galera
    {
        eprintln!("[{name}] starting three Galera nodes on loopback ports");
        let g = flotilla_testkit::galera::Galera::start().await;
        a.nodes = g
            .nodes
            .iter()
            .map(|n| format!("mysql://root@127.0.0.1:{}", n.port))
            .collect();
        server = a.nodes[0].clone();
        galera = Some(g);
    }
    let db = database::BenchDb::create(&server, name).await?;
    eprintln!("[{name}] database {}", db.name);
    let result = match scenario {
        Scenario::Claim(a) => scenarios::claim::run(&db, a).await,
        Scenario::Latency(a) => scenarios::latency::run(&db, a).await,
        Scenario::Scale(a) => scenarios::scale::run(&db, a).await,
        Scenario::Failover(a) => scenarios::failover::run(&db, a).await,
        Scenario::Memory(a) => scenarios::memory::run(&db, a).await,
        Scenario::Logs(a) => scenarios::logs::run(&db, a).await,
    };
    db.drop_database().await;
    drop(galera);
    result
}
