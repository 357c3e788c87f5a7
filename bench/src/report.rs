//! The one JSON object a run prints: the scenario, its parameters and
//! figures, `ok`, and the correctness problems found (if any).

use serde_json::{Map, Value};

#[derive(Debug)]
pub struct Report {
    scenario: &'static str,
    fields: Map<String, Value>,
    problems: Vec<String>,
}

impl Report {
    pub fn new(scenario: &'static str) -> Report {
        Report {
            scenario,
            fields: Map::new(),
            problems: Vec::new(),
        }
    }

    /// A run that could not finish (setup failed, a service was unreachable).
    pub fn failed(scenario: &'static str, error: String) -> Report {
        let mut r = Report::new(scenario);
        r.set("error", error.clone());
        r.problems.push(error);
        r
    }

    pub fn set(&mut self, key: &str, value: impl Into<Value>) {
        self.fields.insert(key.to_owned(), value.into());
    }

    /// Records a failed correctness check unless `holds`.
    pub fn check(&mut self, holds: bool, what: impl FnOnce() -> String) {
        if !holds {
            self.problems.push(what());
        }
    }

    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }

    pub fn problems(&self) -> &[String] {
        &self.problems
    }

    pub fn to_json(&self) -> String {
        let mut out = Map::new();
        out.insert("scenario".to_owned(), self.scenario.into());
        for (k, v) in &self.fields {
            out.insert(k.clone(), v.clone());
        }
        out.insert("ok".to_owned(), self.ok().into());
        if !self.problems.is_empty() {
            out.insert("problems".to_owned(), self.problems.clone().into());
        }
        Value::Object(out).to_string()
    }
}

/// Milliseconds with three decimals, for figures.
pub fn ms(d: std::time::Duration) -> f64 {
    (d.as_secs_f64() * 1_000_000.0).round() / 1000.0
}

/// A figure rounded to three decimals.
pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
