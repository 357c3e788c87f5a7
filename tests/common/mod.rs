//! The tests' harness: the workspace's test kit (`flotilla-testkit`:
//! processes, clusters, test databases, ports, `eventually`, relays, private
//! MariaDB and Galera servers, the ledger) plus the helpers only these tests
//! use. A test file says `mod common;` and uses `common::…` as before.

#![allow(dead_code, unused_imports)]

pub mod bad_worker;
pub mod browser;
pub mod code_host;

pub use flotilla_testkit::*;

/// The binary under test, as cargo built it for this package's tests.
pub fn flotilla_bin() -> &'static str {
    env!("CARGO_BIN_EXE_flotilla")
}
