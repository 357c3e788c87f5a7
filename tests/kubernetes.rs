//! The Kubernetes manifests (deploy/kubernetes): every overlay renders with
//! `kubectl kustomize` and passes the Kubernetes schemas
//! (`kubernetes-validate`, from PyPI, in a virtualenv this test makes); every
//! command, flag, probe and port they name exists in the `flotilla` binary
//! and its cluster file; the grace periods cover the drain; and the preStop
//! command, run against real masters, returns only once the master's builds
//! are done or handed back.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::{Cluster, ClusterSpec, eventually, flotilla_bin, free_port};
use serde_json::Value;

/// The version of `kubernetes-validate` the checks run with (its schemas
/// default to Kubernetes 1.32, the version of the manifests' API).
const VALIDATE_VERSION: &str = "1.32.0";
const KUBERNETES_VERSION: &str = "1.32.0";
/// Kinds whose schemas are not Kubernetes' own (CRDs of operators), checked
/// by the tests below instead.
const CRD_KINDS: &[&str] = &["ServiceMonitor", "MariaDB", "Database", "User", "Grant"];
/// What terminationGracePeriodSeconds keeps above the preStop timeout plus
/// shutdown_grace: time for the hand-back and the exit.
const MARGIN: Duration = Duration::from_secs(30);

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A virtualenv holding the pinned `kubernetes-validate` (and PyYAML, which
/// it brings), made once per target folder.
fn venv() -> &'static Path {
    static VENV: OnceLock<PathBuf> = OnceLock::new();
    VENV.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("kubernetes-validate-{VALIDATE_VERSION}"));
        let ready = dir.join("ready");
        if !ready.exists() {
            let _ = std::fs::remove_dir_all(&dir);
            let o = Command::new("python3")
                .args(["-m", "venv"])
                .arg(&dir)
                .output()
                .expect("python3 (scripts/ensure-tools installs python3-venv)");
            assert!(o.status.success(), "python3 -m venv: {}", text(&o));
            let o = Command::new(dir.join("bin/pip"))
                .args(["install", "-q", "--disable-pip-version-check"])
                .arg(format!("kubernetes-validate=={VALIDATE_VERSION}"))
                .output()
                .expect("pip");
            assert!(o.status.success(), "pip install: {}", text(&o));
            std::fs::write(&ready, VALIDATE_VERSION).unwrap();
        }
        dir
    })
}

fn overlays() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(root().join("deploy/kubernetes/overlays"))
        .expect("deploy/kubernetes/overlays")
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert!(
        names.contains(&"small".to_owned()) && names.contains(&"large".to_owned()),
        "{names:?}"
    );
    names
}

/// `kubectl kustomize` of an overlay, as YAML.
fn render_yaml(overlay: &str) -> String {
    let o = Command::new("kubectl")
        .arg("kustomize")
        .arg(root().join("deploy/kubernetes/overlays").join(overlay))
        .output()
        .expect("kubectl (scripts/ensure-tools installs it)");
    assert!(o.status.success(), "kustomize {overlay}: {}", text(&o));
    String::from_utf8(o.stdout).unwrap()
}

/// The rendered objects of an overlay, as JSON.
fn render(overlay: &str) -> Vec<Value> {
    let yaml = render_yaml(overlay);
    let mut child = Command::new(venv().join("bin/python"))
        .args([
            "-c",
            // Secrets' values decoded beside their data, as `decoded`.
            "import sys, json, yaml, base64\n\
             docs = [d for d in yaml.safe_load_all(sys.stdin) if d]\n\
             for d in docs:\n\
             \x20   if d.get('kind') == 'Secret':\n\
             \x20       d['decoded'] = {k: base64.b64decode(v).decode() for k, v in d.get('data', {}).items()}\n\
             print(json.dumps(docs))",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(yaml.as_bytes())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success());
    serde_json::from_slice(&o.stdout).unwrap()
}

fn object<'a>(objs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objs.iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

/// A generated object (ConfigMap, Secret) by the name before its hash
/// suffix (or by its exact name, for those generated without one).
fn generated<'a>(objs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objs.iter()
        .find(|o| {
            o["kind"] == kind
                && o["metadata"]["name"]
                    .as_str()
                    .and_then(|n| n.strip_prefix(name))
                    .is_some_and(|rest| {
                        rest.is_empty() || (rest.starts_with('-') && !rest[1..].contains('-'))
                    })
        })
        .unwrap_or_else(|| panic!("no {kind} {name}-<hash>"))
}

fn secret_value(secret: &Value, key: &str) -> String {
    secret["decoded"][key]
        .as_str()
        .unwrap_or_else(|| panic!("no {key} in {}", secret["metadata"]["name"]))
        .to_owned()
}

fn pod_spec(workload: &Value) -> &Value {
    match workload["kind"].as_str() {
        Some("Deployment" | "StatefulSet" | "Job") => &workload["spec"]["template"]["spec"],
        k => panic!("not a workload: {k:?}"),
    }
}

fn workloads(objs: &[Value]) -> impl Iterator<Item = &Value> {
    objs.iter().filter(|o| {
        matches!(
            o["kind"].as_str(),
            Some("Deployment" | "StatefulSet" | "Job")
        )
    })
}

fn containers(spec: &Value) -> Vec<&Value> {
    ["initContainers", "containers"]
        .iter()
        .flat_map(|k| spec[k].as_array().into_iter().flatten())
        .collect()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect()
}

/// The cluster file of an overlay's ConfigMap, written out.
fn cluster_file(objs: &[Value], dir: &Path) -> PathBuf {
    let cm = generated(objs, "ConfigMap", "flotilla-cluster");
    let path = dir.join("cluster.toml");
    std::fs::write(&path, cm["data"]["cluster.toml"].as_str().unwrap()).unwrap();
    path
}

/// The cluster file of an overlay's ConfigMap, as JSON (Python's tomllib).
fn cluster_toml(objs: &[Value]) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let file = cluster_file(objs, dir.path());
    let o = Command::new(venv().join("bin/python"))
        .args([
            "-c",
            "import sys, json, tomllib; print(json.dumps(tomllib.load(open(sys.argv[1], 'rb'))))",
        ])
        .arg(&file)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

/// A duration as the cluster file and the CLI write it.
fn duration(s: &str) -> Duration {
    s.parse::<flotilla_master::config::Dur>()
        .unwrap_or_else(|e| panic!("{s}: {e}"))
        .get()
}

/// The environment a container gets: every key of the Secrets it takes
/// whole (`envFrom`), then `env` (values, Secret keys, and the pod's name).
fn env_values(objs: &[Value], c: &Value) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    for from in c["envFrom"].as_array().into_iter().flatten() {
        let secret = from["secretRef"]["name"]
            .as_str()
            .expect("envFrom a Secret");
        let s = object(objs, "Secret", secret);
        for (k, v) in s["decoded"].as_object().unwrap() {
            env.insert(k.clone(), v.as_str().unwrap().to_owned());
        }
    }
    for e in c["env"].as_array().into_iter().flatten() {
        let name = e["name"].as_str().unwrap().to_owned();
        let from = &e["valueFrom"];
        let value = if let Some(v) = e["value"].as_str() {
            v.to_owned()
        } else if !from["secretKeyRef"].is_null() {
            let r = &from["secretKeyRef"];
            let s = object(objs, "Secret", r["name"].as_str().unwrap());
            secret_value(s, r["key"].as_str().unwrap())
        } else if from["fieldRef"]["fieldPath"] == "metadata.name" {
            "pod-name".to_owned()
        } else {
            panic!("{name}: unexpected source {e}")
        };
        env.insert(name, value);
    }
    env
}

fn env_names(objs: &[Value], c: &Value) -> BTreeSet<String> {
    env_values(objs, c).into_keys().collect()
}

fn master_container(objs: &[Value]) -> &Value {
    let d = object(objs, "Deployment", "flotilla-master");
    pod_spec(d)["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "master")
        .expect("a container named master")
}

fn prestop(objs: &[Value]) -> Vec<String> {
    strings(&master_container(objs)["lifecycle"]["preStop"]["exec"]["command"])
}

#[test]
fn every_overlay_renders_and_passes_the_kubernetes_schemas() {
    let dir = tempfile::tempdir().unwrap();
    for overlay in overlays() {
        let path = dir.path().join(format!("{overlay}.yaml"));
        std::fs::write(&path, render_yaml(&overlay)).unwrap();
        let o = Command::new(venv().join("bin/kubernetes-validate"))
            .args(["--strict", "-k", KUBERNETES_VERSION])
            .arg(&path)
            .output()
            .unwrap();
        let out = text(&o);
        assert!(o.status.success(), "{overlay}: {out}");
        let objs = render(&overlay);
        let passed = out.matches(" passed for resource ").count();
        let crds = objs
            .iter()
            .filter(|o| CRD_KINDS.contains(&o["kind"].as_str().unwrap()))
            .count();
        assert_eq!(
            passed + crds,
            objs.len(),
            "{overlay}: every object checked: {out}"
        );
        for line in out.lines().filter(|l| l.contains("Couldn't find schema")) {
            assert!(
                CRD_KINDS
                    .iter()
                    .any(|k| line.contains(&format!("kind {k} "))),
                "{overlay}: {line}"
            );
        }
        for (kind, name) in [
            ("Deployment", "flotilla-master"),
            ("Service", "flotilla-master"),
            ("PodDisruptionBudget", "flotilla-master"),
            ("StatefulSet", "flotilla-gateway"),
            ("Service", "flotilla-gateway"),
            ("Service", "flotilla-gateway-pods"),
            ("PodDisruptionBudget", "flotilla-gateway"),
            ("StatefulSet", "flotilla-worker"),
            ("Job", "flotilla-db-upgrade"),
        ] {
            object(&objs, kind, name);
        }
    }
    // The validator does reject a broken object.
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        render_yaml("small").replacen("replicas: 2", "replicas: two", 1),
    )
    .unwrap();
    let o = Command::new(venv().join("bin/kubernetes-validate"))
        .args(["--strict", "-k", KUBERNETES_VERSION])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!o.status.success(), "{}", text(&o));
}

/// `flotilla <words...> --help`: the options that command takes.
fn options_of(words: &[String]) -> String {
    let o = Command::new(flotilla_bin())
        .args(words)
        .arg("--help")
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "flotilla {words:?} --help: {}",
        text(&o)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Every command line of the manifests: containers of the flotilla image
/// (its entrypoint is the binary) and exec hooks and probes.
fn command_lines(objs: &[Value]) -> Vec<(String, Vec<String>)> {
    let mut lines = Vec::new();
    for w in workloads(objs) {
        for c in containers(pod_spec(w)) {
            let name = format!("{}/{}", w["metadata"]["name"], c["name"]);
            let image = c["image"].as_str().unwrap();
            assert!(
                image.starts_with("flotilla:") || image.starts_with("flotilla@"),
                "{name}: {image}"
            );
            assert!(
                c["command"].is_null(),
                "{name}: the image's entrypoint runs"
            );
            let mut argv = vec!["flotilla".to_owned()];
            argv.extend(strings(&c["args"]));
            lines.push((name.clone(), argv));
            for hook in [&c["lifecycle"]["preStop"], &c["lifecycle"]["postStart"]] {
                if !hook["exec"].is_null() {
                    lines.push((format!("{name} hook"), strings(&hook["exec"]["command"])));
                }
            }
            for probe in ["readinessProbe", "livenessProbe", "startupProbe"] {
                if !c[probe]["exec"].is_null() {
                    lines.push((
                        format!("{name} {probe}"),
                        strings(&c[probe]["exec"]["command"]),
                    ));
                }
            }
        }
    }
    lines
}

#[test]
fn every_command_and_flag_of_the_manifests_exists_in_the_binary() {
    let top = options_of(&[]);
    for overlay in overlays() {
        let objs = render(&overlay);
        let lines = command_lines(&objs);
        assert!(lines.len() >= 5, "{overlay}: {lines:?}");
        for (what, argv) in lines {
            assert_eq!(argv[0], "flotilla", "{overlay} {what}: {argv:?}");
            // The subcommand words, then its options.
            let mut words = Vec::new();
            let mut rest = argv[1..].iter().peekable();
            let mut help = top.clone();
            while let Some(w) = rest.peek() {
                if w.starts_with('-') {
                    break;
                }
                let listed = help
                    .lines()
                    .any(|l| l.trim_start().starts_with(&format!("{w} ")));
                if !listed {
                    break;
                }
                words.push((*w).clone());
                rest.next();
                help = options_of(&words);
            }
            assert!(
                !words.is_empty(),
                "{overlay} {what}: no command in {argv:?}"
            );
            for a in rest.filter(|a| a.starts_with("--")) {
                let flag = a.split('=').next().unwrap();
                assert!(
                    help.contains(&format!("{flag} ")) || help.contains(&format!("{flag}\n")),
                    "{overlay} {what}: `flotilla {}` has no {flag}",
                    words.join(" ")
                );
            }
            // $(VAR) is expanded from the container's own environment.
            for a in &argv {
                if let Some(var) = a.split("$(").nth(1).and_then(|s| s.split(')').next()) {
                    let w = workloads(&objs)
                        .flat_map(|w| containers(pod_spec(w)))
                        .any(|c| env_names(&objs, c).contains(var));
                    assert!(w, "{overlay} {what}: $({var}) is set nowhere");
                }
            }
        }
        // The preStop drains this pod's master and waits.
        let pre = prestop(&objs);
        assert_eq!(
            &pre[..4],
            ["flotilla", "drain", "--wait", "--timeout"],
            "{pre:?}"
        );
        let env = env_names(&objs, master_container(&objs));
        assert!(env.contains("FLOTILLA_MASTER_NAME"), "{overlay}");
        let name_from = master_container(&objs)["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == "FLOTILLA_MASTER_NAME")
            .unwrap();
        assert_eq!(
            name_from["valueFrom"]["fieldRef"]["fieldPath"], "metadata.name",
            "{overlay}: each pod is its own master"
        );
    }
}

/// A port of a container by name or number.
fn container_port(c: &Value, port: &Value) -> u16 {
    if let Some(n) = port.as_u64() {
        return n as u16;
    }
    let name = port.as_str().unwrap();
    c["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == name)
        .and_then(|p| p["containerPort"].as_u64())
        .unwrap_or_else(|| panic!("{}: no port {name}", c["name"])) as u16
}

fn port_of(listen: &str) -> u16 {
    listen.rsplit(':').next().unwrap().parse().unwrap()
}

#[tokio::test]
async fn probes_ports_and_names_match_the_binary_and_the_cluster_file() {
    let http = reqwest::Client::new();
    for overlay in overlays() {
        let objs = render(&overlay);
        let toml = cluster_toml(&objs);
        let api_port = port_of(toml["api"]["listen"].as_str().unwrap());
        let gw_port = port_of(toml["gateway"]["listen"].as_str().unwrap());
        let metrics_port = port_of(toml["gateway"]["metrics_listen"].as_str().unwrap());

        // Masters: the probes ask the API port.
        let m = master_container(&objs);
        for probe in ["readinessProbe", "livenessProbe"] {
            assert_eq!(container_port(m, &m[probe]["httpGet"]["port"]), api_port);
        }
        assert_eq!(m["readinessProbe"]["httpGet"]["path"], "/readyz");
        assert_eq!(m["livenessProbe"]["httpGet"]["path"], "/healthz");
        let pre = prestop(&objs);
        let api = pre.iter().position(|a| a == "--api").map(|i| &pre[i + 1]);
        assert_eq!(
            api.map(|a| port_of(a)),
            Some(api_port),
            "{overlay}: preStop asks this pod's API"
        );

        // Gateways: probes on the metrics address; one URL per pod in [gateway] urls.
        let gw = object(&objs, "StatefulSet", "flotilla-gateway");
        let g = &pod_spec(gw)["containers"][0];
        for probe in ["readinessProbe", "livenessProbe"] {
            assert_eq!(
                container_port(g, &g[probe]["httpGet"]["port"]),
                metrics_port
            );
        }
        assert_eq!(container_port(g, &Value::from("grpc")), gw_port);
        let replicas = gw["spec"]["replicas"].as_u64().unwrap();
        let headless = gw["spec"]["serviceName"].as_str().unwrap();
        let hs = object(&objs, "Service", headless);
        assert_eq!(hs["spec"]["clusterIP"], "None");
        let urls: Vec<String> = toml["gateway"]["urls"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u.as_str().unwrap().to_owned())
            .collect();
        let want: Vec<String> = (0..replicas)
            .map(|i| format!("http://flotilla-gateway-{i}.{headless}:{gw_port}"))
            .collect();
        assert_eq!(urls, want, "{overlay}: masters link to every gateway pod");

        // Services target ports the pods have.
        for (svc, container) in [
            ("flotilla-master", m),
            ("flotilla-gateway", g),
            ("flotilla-gateway-pods", g),
        ] {
            for p in object(&objs, "Service", svc)["spec"]["ports"]
                .as_array()
                .unwrap()
            {
                container_port(container, &p["targetPort"]);
            }
        }

        // Workers: pod names are the cluster file's worker names, each with
        // its password in the Secret, and each password_env set on the masters.
        let ws = object(&objs, "StatefulSet", "flotilla-worker");
        let n = ws["spec"]["replicas"].as_u64().unwrap();
        let workers = toml["workers"].as_array().unwrap();
        let names: Vec<&str> = workers
            .iter()
            .map(|w| w["name"].as_str().unwrap())
            .collect();
        let pods: Vec<String> = (0..n).map(|i| format!("flotilla-worker-{i}")).collect();
        assert_eq!(names, pods, "{overlay}");
        let passwords = generated(&objs, "Secret", "flotilla-worker-passwords");
        let menv = env_names(&objs, m);
        for w in workers {
            secret_value(passwords, w["name"].as_str().unwrap());
            let var = w["password_env"].as_str().expect("password_env");
            assert!(menv.contains(var), "{overlay}: masters lack {var}");
        }
        let wargs = strings(&pod_spec(ws)["containers"][0]["args"]);
        let gw_url = &wargs[wargs.iter().position(|a| a == "--gateway").unwrap() + 1];
        assert_eq!(gw_url, &format!("http://flotilla-gateway:{gw_port}"));
        // Secrets named by *_env keys reach the masters.
        let admin = toml["api"]["admin_token_env"].as_str().unwrap();
        assert!(menv.contains(admin) && menv.contains("FLOTILLA_DATABASE__URL"));
        let url = secret_value(
            generated(&objs, "Secret", "flotilla-secrets"),
            "FLOTILLA_DATABASE__URL",
        );
        assert!(url.starts_with("mysql://"), "{url}");

        // The gateway, run with the overlay's own cluster file, serves the probes.
        let dir = tempfile::tempdir().unwrap();
        let file = cluster_file(&objs, dir.path());
        let (mut gateway, bound) = common::cluster::Proc::listening(
            "gateway",
            &[
                "gateway".to_owned(),
                "--config".to_owned(),
                file.display().to_string(),
                "--listen".to_owned(),
                "127.0.0.1:0".to_owned(),
                "--metrics".to_owned(),
                "127.0.0.1:0".to_owned(),
            ],
            &[],
            dir.path(),
        );
        let metrics = bound.get("metrics").unwrap();
        for probe in ["readinessProbe", "livenessProbe"] {
            let path = g[probe]["httpGet"]["path"].as_str().unwrap().to_owned();
            let url = format!("http://{metrics}{path}");
            eventually(&format!("gateway {url}"), Duration::from_secs(20), || {
                let http = http.clone();
                let url = url.clone();
                async move {
                    let r = http.get(&url).send().await.ok()?;
                    r.status().is_success().then_some(())
                }
            })
            .await;
        }
        gateway.kill9();
    }

    // The masters' probe paths, on a real master: ready, live, then not
    // ready while draining.
    let mut spec = ClusterSpec::new(1, 0, "");
    spec.builders_toml.clear();
    let cluster = Cluster::start("k8s_probes", spec).await;
    let objs = render("small");
    let m = master_container(&objs);
    for probe in ["readinessProbe", "livenessProbe"] {
        let path = m[probe]["httpGet"]["path"].as_str().unwrap();
        let r = http
            .get(format!("{}{path}", cluster.api(0)))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{path}: {}", r.status());
    }
    let o = Command::new(flotilla_bin())
        .args(["drain", "--api", &cluster.api(0), "m1"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let ready = format!(
        "{}{}",
        cluster.api(0),
        m["readinessProbe"]["httpGet"]["path"].as_str().unwrap()
    );
    eventually(
        "not ready while draining",
        Duration::from_secs(10),
        || async {
            let r = http.get(&ready).send().await.ok()?;
            (r.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE).then_some(())
        },
    )
    .await;
}

#[test]
fn the_cluster_file_of_every_overlay_passes_check_with_the_pods_environment() {
    for overlay in overlays() {
        let objs = render(&overlay);
        let dir = tempfile::tempdir().unwrap();
        let file = cluster_file(&objs, dir.path());
        let mut cmd = Command::new(flotilla_bin());
        cmd.args(["check", "--config"]).arg(&file);
        for (var, value) in env_values(&objs, master_container(&objs)) {
            cmd.env(var, value);
        }
        let o = cmd.output().unwrap();
        let out = text(&o);
        assert!(o.status.success(), "{overlay}: {out}");
        assert!(!out.contains("not set"), "{overlay}: {out}");
        // Without the masters' environment, the notes show what is missing
        // (so the check above can fail).
        let o = Command::new(flotilla_bin())
            .args(["check", "--config"])
            .arg(&file)
            .env_remove("WORKER_0_PASSWORD")
            .output()
            .unwrap();
        assert!(text(&o).contains("WORKER_0_PASSWORD"), "{}", text(&o));
    }
}

#[test]
fn grace_periods_cover_the_drain_and_shutdown_grace() {
    for overlay in overlays() {
        let objs = render(&overlay);
        let toml = cluster_toml(&objs);
        let grace = duration(toml["cluster"]["shutdown_grace"].as_str().unwrap());
        let pre = prestop(&objs);
        let timeout = duration(&pre[pre.iter().position(|a| a == "--timeout").unwrap() + 1]);
        let d = object(&objs, "Deployment", "flotilla-master");
        let term = Duration::from_secs(
            pod_spec(d)["terminationGracePeriodSeconds"]
                .as_u64()
                .expect("terminationGracePeriodSeconds"),
        );
        // Kubernetes counts the preStop hook inside the grace period; after
        // it, SIGTERM gives what still runs shutdown_grace before hand-back.
        assert!(
            term >= timeout + grace + MARGIN,
            "{overlay}: terminationGracePeriodSeconds {term:?} < preStop --timeout {timeout:?} + shutdown_grace {grace:?} + {MARGIN:?}"
        );
        assert!(
            timeout >= grace,
            "{overlay}: the preStop waits at least shutdown_grace"
        );
        // Rolling updates bring a new master up before an old one drains.
        let ru = &d["spec"]["strategy"]["rollingUpdate"];
        assert_eq!(ru["maxUnavailable"], 0, "{overlay}");
        // The PDBs allow a node drain to proceed (one pod at a time).
        for pdb in ["flotilla-master", "flotilla-gateway"] {
            let p = object(&objs, "PodDisruptionBudget", pdb);
            assert_eq!(p["spec"]["maxUnavailable"], 1, "{overlay} {pdb}");
        }
        // Masters spread over nodes.
        let aff = &pod_spec(d)["affinity"]["podAntiAffinity"];
        assert!(!aff.is_null(), "{overlay}: anti-affinity");
        // The Job runs the migration.
        let job = object(&objs, "Job", "flotilla-db-upgrade");
        let args = strings(&pod_spec(job)["containers"][0]["args"]);
        assert_eq!(&args[..2], ["db", "upgrade"]);
    }
}

#[test]
fn the_operator_components_carry_what_flotilla_needs() {
    let objs = render("galera");
    let db = object(&objs, "MariaDB", "flotilla-db");
    assert_eq!(db["apiVersion"], "k8s.mariadb.com/v1alpha1");
    assert_eq!(db["spec"]["galera"]["enabled"], true);
    assert!(db["spec"]["replicas"].as_u64() >= Some(3));
    let url = secret_value(
        generated(&objs, "Secret", "flotilla-secrets"),
        "FLOTILLA_DATABASE__URL",
    );
    let (creds, rest) = url
        .strip_prefix("mysql://")
        .unwrap()
        .split_once('@')
        .unwrap();
    let (user, password) = creds.split_once(':').unwrap();
    assert_eq!(
        rest, "flotilla-db-primary:3306/flotilla",
        "writes go to one node"
    );
    let database = object(&objs, "Database", "flotilla");
    assert_eq!(database["spec"]["mariaDbRef"]["name"], "flotilla-db");
    let u = object(&objs, "User", user);
    let pw_ref = &u["spec"]["passwordSecretKeyRef"];
    let pw_secret = generated(&objs, "Secret", pw_ref["name"].as_str().unwrap());
    assert_eq!(
        secret_value(pw_secret, pw_ref["key"].as_str().unwrap()),
        password,
        "the URL's password is the user's"
    );
    let grant = object(&objs, "Grant", "flotilla");
    assert_eq!(grant["spec"]["database"], "flotilla");
    assert_eq!(grant["spec"]["username"], user);
    // Kustomize renamed the generated Secrets and the references to them.
    let root = &db["spec"]["rootPasswordSecretKeyRef"]["name"];
    assert!(
        objs.iter()
            .any(|o| o["kind"] == "Secret" && o["metadata"]["name"] == *root)
    );
    assert!(
        objs.iter()
            .any(|o| o["kind"] == "Secret" && o["metadata"]["name"] == pw_ref["name"])
    );

    let objs = render("large");
    for (sm, svc) in [
        ("flotilla-master", "flotilla-master"),
        ("flotilla-gateway", "flotilla-gateway"),
    ] {
        let m = object(&objs, "ServiceMonitor", sm);
        let want = m["spec"]["selector"]["matchLabels"].as_object().unwrap();
        let services: Vec<&Value> = objs
            .iter()
            .filter(|o| {
                o["kind"] == "Service" && want.iter().all(|(k, v)| o["metadata"]["labels"][k] == *v)
            })
            .collect();
        assert!(
            services.iter().any(|s| s["metadata"]["name"] == svc),
            "{sm}"
        );
        for e in m["spec"]["endpoints"].as_array().unwrap() {
            assert_eq!(e["path"], "/metrics");
            let port = &e["port"];
            assert!(
                services.iter().any(|s| s["spec"]["ports"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|p| p["name"] == *port)),
                "{sm}: no selected Service has port {port}"
            );
        }
    }
}

// ---- the preStop command against real masters ----

/// The preStop command of the manifests, run as the kubelet would (in the
/// master's container: FLOTILLA_MASTER_NAME set), with `--api` pointed at `api`.
/// The preStop command of the small overlay, rendered once: rendering runs
/// kubectl and Python, which can take many seconds on a loaded machine and
/// must not count toward the times the preStop tests observe.
fn small_prestop() -> &'static [String] {
    static ARGV: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    ARGV.get_or_init(|| prestop(&render("small")))
}

fn spawn_prestop(master_name: &str, api: &str, timeout: Option<&str>) -> std::process::Child {
    let mut argv = small_prestop().to_vec();
    let i = argv.iter().position(|a| a == "--api").unwrap();
    argv[i + 1] = api.to_owned();
    if let Some(t) = timeout {
        let i = argv.iter().position(|a| a == "--timeout").unwrap();
        argv[i + 1] = t.to_owned();
    }
    Command::new(flotilla_bin())
        .args(&argv[1..])
        .env("FLOTILLA_MASTER_NAME", master_name)
        .env_remove("FLOTILLA_API")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn sleeper_spec(masters: usize, seconds: u32, grace: &'static str) -> ClusterSpec {
    let mut spec = ClusterSpec::new(masters, 1, "");
    spec.shutdown_grace = grace;
    spec.builders_toml = format!(
        "[[builders]]\nname = \"sleep\"\nworkers = {}\n  [[builders.steps]]\n  name = \"s\"\n  command = [\"sleep\", \"{seconds}\"]\n",
        spec.worker_list()
    );
    spec
}

/// Forces a build and waits until it runs; returns (request, master name).
async fn running_build(cluster: &Cluster) -> (i64, String) {
    let req = cluster.force(0, "sleep", "abc").await;
    let build = eventually("the build runs", Duration::from_secs(30), || async {
        cluster
            .builds_of(0, req)
            .await
            .into_iter()
            .find(|b| b["complete_at"].is_null() && b["master"].is_string())
    })
    .await;
    (req, build["master"].as_str().unwrap().to_owned())
}

fn wait_child(child: &mut std::process::Child, limit: Duration) -> Option<i32> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Some(s) = child.try_wait().unwrap() {
            return s.code();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

fn child_output(child: std::process::Child) -> String {
    text(&child.wait_with_output().unwrap())
}

#[tokio::test]
async fn prestop_returns_only_when_the_masters_build_is_done() {
    let cluster = Cluster::start("k8s_prestop_done", sleeper_spec(1, 5, "20s")).await;
    let (req, master) = running_build(&cluster).await;
    assert_eq!(master, "m1");
    let mut pre = spawn_prestop("m1", &cluster.api(0), None);
    // The build still runs: the hook must not return.
    assert_eq!(wait_child(&mut pre, Duration::from_secs(2)), None);
    let code = tokio::task::spawn_blocking(move || {
        let code = wait_child(&mut pre, Duration::from_secs(30));
        (code, child_output(pre))
    })
    .await
    .unwrap();
    assert_eq!(code.0, Some(0), "{}", code.1);
    // When it returned, the build had finished (successfully: not cut short).
    let r: Value = cluster
        .get(&format!("{}/api/v1/buildrequests/{req}", cluster.api(0)))
        .await
        .unwrap();
    assert_eq!(r["complete"], true, "{r}");
    assert_eq!(r["results"], "success", "{r}");
    // And the master is drained: the Service no longer sends it requests.
    let ready: Value = cluster
        .http
        .get(format!("{}/readyz", cluster.api(0)))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["draining"], true, "{ready}");
    assert_eq!(ready["ready"], false, "{ready}");
}

#[tokio::test]
async fn prestop_times_out_with_a_failure_while_a_build_runs() {
    let cluster = Cluster::start("k8s_prestop_timeout", sleeper_spec(1, 60, "20s")).await;
    let (req, _) = running_build(&cluster).await;
    let start = Instant::now();
    let mut pre = spawn_prestop("m1", &cluster.api(0), Some("2s"));
    let code = wait_child(&mut pre, Duration::from_secs(20));
    let out = child_output(pre);
    assert_eq!(code, Some(1), "{out}");
    assert!(start.elapsed() >= Duration::from_secs(2), "{out}");
    assert!(out.contains("timed out"), "{out}");
    let r: Value = cluster
        .get(&format!("{}/api/v1/buildrequests/{req}", cluster.api(0)))
        .await
        .unwrap();
    assert_eq!(r["complete"], false, "still running: {r}");
}

#[tokio::test]
async fn prestop_returns_once_the_build_is_handed_back() {
    // Two masters: the hook asks the other's API, since the drained master
    // leaves (SIGTERM after shutdown_grace hands its build back).
    let cluster = Cluster::start("k8s_prestop_handback", sleeper_spec(2, 120, "3s")).await;
    let (req, master) = running_build(&cluster).await;
    let i = cluster.master_index(&master);
    let other = 1 - i;
    let mut pre = spawn_prestop(&master, &cluster.api(other), None);
    assert_eq!(wait_child(&mut pre, Duration::from_secs(2)), None);
    cluster.signal_master(i, nix::sys::signal::Signal::SIGTERM);
    let (code, out) = tokio::task::spawn_blocking(move || {
        let code = wait_child(&mut pre, Duration::from_secs(40));
        (code, child_output(pre))
    })
    .await
    .unwrap();
    assert_eq!(code, Some(0), "{out}");
    // The request is no longer held by the drained master: handed back.
    let r: Value = cluster
        .get(&format!(
            "{}/api/v1/buildrequests/{req}",
            cluster.api(other)
        ))
        .await
        .unwrap();
    let masters: Vec<Value> = cluster
        .get(&format!("{}/api/v1/masters", cluster.api(other)))
        .await
        .and_then(|v| serde_json::from_value(v).ok())
        .unwrap();
    let gone = !masters.iter().any(|m| m["name"] == master.as_str());
    assert!(
        gone || r["claimed_by_master"] != master.as_str(),
        "{r} {masters:?}"
    );
    let builds = cluster.builds_of(other, req).await;
    assert!(
        builds
            .iter()
            .any(|b| b["master"] == master.as_str() && b["results"] == "retry"),
        "the drained master's build ended retry: {builds:?}"
    );
}

#[test]
fn drain_wait_of_a_master_that_is_not_there_has_nothing_to_wait_for() {
    // No API at all: unavailable.
    let o = Command::new(flotilla_bin())
        .args(["drain", "--wait", "--api"])
        .arg(format!("http://127.0.0.1:{}", free_port()))
        .env("FLOTILLA_MASTER_NAME", "nobody")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(69), "{}", text(&o));
    // --timeout needs --wait.
    let o = Command::new(flotilla_bin())
        .args(["drain", "--timeout", "5m", "m1"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
}

#[tokio::test]
async fn prestop_of_an_idle_master_returns_once_the_master_has_taken_up_the_drain() {
    let cluster = Cluster::start("k8s_prestop_idle", sleeper_spec(2, 1, "20s")).await;
    small_prestop();
    // Its own API (the preStop case): done as soon as the master itself
    // drains, well before the settle time.
    let start = Instant::now();
    let mut pre = spawn_prestop("m1", &cluster.api(0), None);
    let code = tokio::task::spawn_blocking(move || {
        let code = wait_child(&mut pre, Duration::from_secs(30));
        (code, child_output(pre))
    })
    .await
    .unwrap();
    assert_eq!(code.0, Some(0), "{}", code.1);
    assert!(
        start.elapsed() < Duration::from_secs(14),
        "{:?}",
        start.elapsed()
    );
    let ready: Value = cluster
        .http
        .get(format!("{}/readyz", cluster.api(0)))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        ready["draining"], true,
        "the master had taken up the drain: {ready}"
    );
    // Through another master's API it cannot see that, so it waits out the
    // time a master takes to notice a drain (no claim shows up meanwhile).
    let start = Instant::now();
    let mut pre = spawn_prestop("m2", &cluster.api(0), None);
    let code = tokio::task::spawn_blocking(move || {
        let code = wait_child(&mut pre, Duration::from_secs(40));
        (code, child_output(pre))
    })
    .await
    .unwrap();
    assert_eq!(code.0, Some(0), "{}", code.1);
    assert!(
        start.elapsed() >= Duration::from_secs(15),
        "{:?}",
        start.elapsed()
    );
}
