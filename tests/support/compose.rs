//! The services of `docker-compose.yml` as `docker-compose config` resolves
//! them (anchors and merges applied), read as JSON.

use std::process::Command;

use serde_json::Value;

/// `services` of the resolved compose file.
pub fn services() -> serde_json::Map<String, Value> {
    let root = env!("CARGO_MANIFEST_DIR");
    let resolved = Command::new("docker-compose")
        .args(["-f", "docker-compose.yml", "config"])
        .current_dir(root)
        .output()
        .expect("docker-compose is installed by scripts/ensure-tools");
    assert!(
        resolved.status.success(),
        "{}",
        String::from_utf8_lossy(&resolved.stderr)
    );
    // docker-compose writes YAML; PyYAML (a dependency of docker-compose) reads it.
    let mut py = Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml; json.dump(yaml.safe_load(sys.stdin), sys.stdout)",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    {
        use std::io::Write;
        py.stdin
            .take()
            .unwrap()
            .write_all(&resolved.stdout)
            .unwrap();
    }
    let out = py.wait_with_output().expect("python3 yaml");
    assert!(
        out.status.success(),
        "cannot read the resolved compose file"
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("compose file as JSON");
    v["services"].as_object().cloned().expect("services")
}
