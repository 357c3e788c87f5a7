//! Tests of loading the cluster file.

use std::path::Path;

use super::*;

const SAMPLE: &str = r#"
[database]
url = "mysql://root@127.0.0.1:3306/flotilla"

[cluster]
heartbeat_interval = "1s"
master_timeout = "5s"

[[workers]]
name = "w1"
password = "pw"

[[builders]]
name = "unit"
workers = ["w1"]
  [[builders.steps]]
  name = "test"
  command = ["sh", "-c", "echo $FLOTILLA_REVISION"]
  timeout = "10m"

[[schedulers]]
name = "main"
kind = "single-branch"
branch = "main"
tree_stable_timer = "0s"
builders = ["unit"]
"#;

fn load(text: &str, env: &[(&str, &str)]) -> Result<ClusterConfig, ConfigError> {
    let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
    ClusterConfig::from_toml(text, Path::new("cluster.toml"), env)
}

#[test]
fn loads_the_sample_of_the_contract() {
    let c = load(SAMPLE, &[]).unwrap();
    assert_eq!(c.database.url, "mysql://root@127.0.0.1:3306/flotilla");
    assert_eq!(c.cluster.master_timeout, Dur::secs(5));
    assert_eq!(c.cluster.claim_lease, Dur::secs(1800));
    assert_eq!(c.builders[0].steps[0].timeout, Some(Dur::secs(600)));
    assert!(c.builders[0].steps[0].halt_on_failure);
    assert_eq!(
        c.gateway.master_urls(),
        vec!["http://127.0.0.1:9989".to_string()]
    );
}

#[test]
fn an_unknown_key_is_named_with_its_line() {
    let text = SAMPLE.replace(
        "master_timeout = \"5s\"",
        "master_timeout = \"5s\"\nmaster_timout = \"5s\"",
    );
    let err = load(&text, &[]).unwrap_err().to_string();
    assert!(err.contains("master_timout"), "{err}");
    assert!(err.contains("line 8"), "{err}");
    assert!(err.starts_with("cluster.toml"), "{err}");
}

#[test]
fn environment_overrides_keys() {
    let c = load(
        SAMPLE,
        &[
            ("FLOTILLA_DATABASE__URL", "sqlite://x.sqlite"),
            ("FLOTILLA_CLUSTER__MASTER_TIMEOUT", "9s"),
            ("FLOTILLA_GATEWAY__URLS", r#"["http://a:1", "http://b:2"]"#),
            ("FLOTILLA_UNRELATED", "x"),
        ],
    )
    .unwrap();
    assert_eq!(c.database.url, "sqlite://x.sqlite");
    assert_eq!(c.cluster.master_timeout, Dur::secs(9));
    assert_eq!(c.gateway.master_urls().len(), 2);
}

#[test]
fn a_bad_environment_override_names_the_variable() {
    let err = load(SAMPLE, &[("FLOTILLA_CLUSTER__MASTER_TIMEOUT", "soon")])
        .unwrap_err()
        .to_string();
    assert!(err.contains("FLOTILLA_CLUSTER__MASTER_TIMEOUT"), "{err}");
}

#[test]
fn a_builder_naming_an_unknown_worker_is_refused() {
    let text = SAMPLE.replace("workers = [\"w1\"]", "workers = [\"w9\"]");
    let err = load(&text, &[]).unwrap_err().to_string();
    assert!(
        err.contains("builders[0].workers") && err.contains("w9"),
        "{err}"
    );
}

#[test]
fn timings_must_make_sense() {
    let text = SAMPLE.replace("master_timeout = \"5s\"", "master_timeout = \"1s\"");
    let err = load(&text, &[]).unwrap_err().to_string();
    assert!(err.contains("cluster.master_timeout"), "{err}");
}

#[test]
fn an_unknown_scheduler_kind_is_refused() {
    let text = SAMPLE.replace("single-branch", "sometimes");
    let err = load(&text, &[]).unwrap_err().to_string();
    assert!(err.contains("schedulers[0].kind"), "{err}");
}

#[test]
fn a_worker_needs_one_password_source() {
    let text = SAMPLE.replace("password = \"pw\"", "");
    assert!(
        load(&text, &[])
            .unwrap_err()
            .to_string()
            .contains("workers[0]")
    );
}

#[test]
fn a_lease_shorter_than_two_renewals_and_a_timeout_is_refused() {
    let text = SAMPLE.replace(
        "master_timeout = \"5s\"",
        "master_timeout = \"5s\"\nclaim_renew_interval = \"10s\"\nclaim_lease = \"24s\"",
    );
    let err = load(&text, &[]).unwrap_err().to_string();
    assert!(err.contains("cluster.claim_lease"), "{err}");
    assert!(err.contains("2 x cluster.claim_renew_interval"), "{err}");
    let text = SAMPLE.replace(
        "master_timeout = \"5s\"",
        "master_timeout = \"5s\"\nclaim_renew_interval = \"10s\"\nclaim_lease = \"25s\"",
    );
    load(&text, &[]).unwrap();
}

#[test]
fn toml_errors_keep_their_line_breaks() {
    let text = SAMPLE.replace(
        "master_timeout = \"5s\"",
        "master_timeout = \"5s\"\nmaster_timout = \"5s\"",
    );
    let err = load(&text, &[]).unwrap_err().to_string();
    let lines: Vec<&str> = err.lines().collect();
    assert!(lines.len() >= 3, "{err}");
    assert!(lines[0].contains("line 8"), "{err}");
    // The caret under the column stands on its own line, under the key.
    assert!(
        lines
            .iter()
            .any(|l| l.trim_start().starts_with('|') && l.contains('^')),
        "{err}"
    );
    assert!(
        lines.iter().any(|l| l.contains("master_timout = ")),
        "{err}"
    );
}
