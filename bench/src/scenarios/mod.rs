//! One module per scenario; each exposes `Args` (its command line) and
//! `run(&BenchDb, Args) -> Report`.

pub mod claim;
pub mod failover;
pub mod latency;
pub mod logs;
pub mod memory;
pub mod scale;
