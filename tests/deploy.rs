//! The deployment files: the compose topology comes up as plain processes
//! (deploy/local-cluster) and builds through every master.

mod common;

use std::process::Command;

#[test]
fn the_compose_topology_runs_as_processes() {
    let out = Command::new("deploy/local-cluster")
        .args(["--check", "--bin", common::flotilla_bin()])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run deploy/local-cluster");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    for m in ["master1", "master2", "master3"] {
        assert!(text.contains(m), "status lists {m}: {text}");
    }
    assert_eq!(text.matches("): success").count(), 3, "{text}");
}

#[test]
fn the_compose_file_parses() {
    let out = Command::new("docker-compose")
        .args(["-f", "docker-compose.yml", "config", "-q"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("docker-compose is installed by scripts/ensure-tools");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
