//! `promtool check metrics` (Debian's `prometheus` package, installed by
//! `scripts/ensure-tools`) on a scrape: every metric needs help text and a
//! name that follows the Prometheus conventions.

use std::io::Write;
use std::process::{Command, Stdio};

/// Panics with promtool's complaints unless `scrape` passes.
pub fn check_metrics(what: &str, scrape: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is missing: run scripts/ensure-tools (scripts/test does)");
    child
        .stdin
        .take()
        .expect("promtool stdin")
        .write_all(scrape.as_bytes())
        .expect("feed promtool");
    let out = child.wait_with_output().expect("run promtool");
    assert!(
        out.status.success(),
        "promtool check metrics fails on {what}:\n{}{}\n----- scrape -----\n{scrape}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
