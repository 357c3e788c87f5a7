//! The ledger: an independent record of what actually ran. Each build step
//! of the chaos tests appends a line when it starts and when it ends (or is
//! killed), so the tests can check executions against the database.

use std::collections::HashMap;
use std::path::Path;

/// The builder whose step writes the ledger, for a cluster file.
pub fn ledger_builder(name: &str, workers: &str, ledger: &Path, sleep: &str) -> String {
    let l = ledger.display();
    // `sleep & wait` lets the TERM trap run at once when the worker kills the step.
    let script = format!(
        "L={l}; ID=$FLOTILLA_BUILDREQUEST_ID; B=$FLOTILLA_BUILD_ID; \
         trap 'echo \"$ID $B killed $(date +%s%N) $FLOTILLA_MASTER\" >> $L; exit 143' TERM INT; \
         echo \"$ID $B start $(date +%s%N) $FLOTILLA_MASTER\" >> $L; \
         sleep {sleep} & wait $!; \
         echo \"$ID $B end $(date +%s%N) $FLOTILLA_MASTER\" >> $L"
    );
    format!(
        "[[builders]]\nname = \"{name}\"\nworkers = {workers}\n  [[builders.steps]]\n  name = \"ledger\"\n  command = [\"sh\", \"-c\", {}]\n  timeout = \"60s\"\n",
        toml_string(&script)
    )
}

fn toml_string(s: &str) -> String {
    let escaped = s.replace('\\', "\\\\").replace('"', "\\\"");
    format!("\"{escaped}\"")
}

/// One execution of a request's step.
#[derive(Clone, Debug, Default)]
pub struct Execution {
    pub request: i64,
    pub build: i64,
    pub start_ns: i128,
    pub end_ns: Option<i128>,
    pub killed: bool,
    pub master: String,
}

impl Execution {
    /// When the execution began: its start line, or for one killed before
    /// it wrote that line, the moment of the kill.
    pub fn began(&self) -> i128 {
        if self.start_ns == 0 {
            self.end_ns.unwrap_or(0)
        } else {
            self.start_ns
        }
    }
}

/// Executions by build id.
pub fn read(ledger: &Path) -> Vec<Execution> {
    let text = std::fs::read_to_string(ledger).unwrap_or_default();
    let mut by_build: HashMap<i64, Execution> = HashMap::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 4 {
            continue;
        }
        let (Ok(request), Ok(build), Ok(t)) = (f[0].parse(), f[1].parse(), f[3].parse::<i128>())
        else {
            continue;
        };
        let e = by_build.entry(build).or_insert_with(|| Execution {
            request,
            build,
            ..Default::default()
        });
        match f[2] {
            "start" => {
                e.start_ns = t;
                e.master = f.get(4).unwrap_or(&"").to_string();
            }
            "end" => e.end_ns = Some(t),
            "killed" => {
                e.end_ns = Some(t);
                e.killed = true;
            }
            _ => {}
        }
    }
    let mut v: Vec<Execution> = by_build.into_values().collect();
    v.sort_by_key(|e| e.start_ns);
    v
}

/// Checks that every execution ended (or was killed) and that no two
/// executions of one request overlapped in time. Returns the problems found.
pub fn check(executions: &[Execution]) -> Vec<String> {
    let mut problems = Vec::new();
    let mut by_request: HashMap<i64, Vec<&Execution>> = HashMap::new();
    for e in executions {
        if e.start_ns == 0 {
            // Killed between setting its trap and writing its start line:
            // the step ran for an instant, which the overlap check still
            // counts at the moment of the kill.
            if e.killed {
                by_request.entry(e.request).or_default().push(e);
                continue;
            }
            problems.push(format!(
                "build {} of request {} ended without a start",
                e.build, e.request
            ));
            continue;
        }
        if e.end_ns.is_none() {
            problems.push(format!(
                "build {} of request {} (master {}) never ended nor was killed",
                e.build, e.request, e.master
            ));
        }
        by_request.entry(e.request).or_default().push(e);
    }
    for (req, mut runs) in by_request {
        runs.sort_by_key(|e| e.began());
        for pair in runs.windows(2) {
            let (a, b) = (pair[0], pair[1]);
            let a_end = a.end_ns.unwrap_or(i128::MAX);
            if b.began() < a_end {
                problems.push(format!(
                    "request {req}: build {} (master {}) started {} ms before build {} (master {}) ended",
                    b.build,
                    b.master,
                    (a_end - b.began()) / 1_000_000,
                    a.build,
                    a.master
                ));
            }
        }
    }
    problems
}
