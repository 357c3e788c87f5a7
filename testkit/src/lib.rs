//! flotilla's test kit, shared by the workspace's tests and the bench: real
//! `flotilla` processes ([`Proc`]), whole clusters of them ([`Cluster`]),
//! uniquely named test databases ([`TestDb`]), ports, polling
//! ([`eventually`]), and the fault-injection helpers the chaos tests use
//! (TCP relays, private MariaDB and Galera servers, the build ledger).
//!
//! Processes that listen bind port 0 themselves and report the address they
//! got in a ready file (`--ready-file`), so no port is picked here and bound
//! later by someone else.
//!
//! Integration tests use it as a dev-dependency (`flotilla-testkit`), either
//! directly or through a `tests/common/mod.rs` that re-exports it.

pub mod cluster;
pub mod database;
pub mod galera;
pub mod ledger;
pub mod mariadb;
pub mod metrics_text;
pub mod ports;
pub mod proc;
pub mod relay;
pub mod wait;

pub use cluster::{Cluster, ClusterSpec};
pub use database::TestDb;
pub use ports::free_port;
pub use proc::{Proc, flotilla_bin};
pub use wait::{eventually, wait_for, wait_for_every};
