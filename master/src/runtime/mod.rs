//! The tasks of a running master, each started by [`crate::master`]: its
//! links to the gateway(s), the claim loop, the builds it runs, the
//! heartbeat and its watchdog, and the maintenance loop (renewal, reaping,
//! stop requests, rebalancing); and its incarnations in the database.

pub(crate) mod build;
mod build_log;
pub(crate) mod claim_loop;
pub(crate) mod heartbeat;
pub(crate) mod incarnation;
pub(crate) mod link;
pub(crate) mod maintenance;
mod reaper;
mod rebalance;
mod steps;
mod stop_requests;
