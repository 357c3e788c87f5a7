//! Following one build from the terminal: each step's header when it
//! starts, its output as it is written (read from the step log by byte
//! offset, so nothing is printed twice), and a line with its result when it
//! ends. Used by `flotilla logs BUILD --follow` and by `--wait`.
//!
//! Steps are shown numbered from 1 ("step 2/3"), as on the dashboard; the
//! API numbers them from 0.

use std::io::Write;

use serde::Deserialize;

use crate::client::{ApiClient, ClientError};

#[derive(Debug, Deserialize)]
pub struct Build {
    pub id: i64,
    pub number: i64,
    pub builder: String,
    pub worker: Option<String>,
    pub master: Option<String>,
    pub complete_at: Option<String>,
    pub results: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Step {
    number: i64,
    name: String,
    started_at: Option<String>,
    complete_at: Option<String>,
    results: Option<String>,
}

/// Progress through one build's steps.
#[derive(Debug)]
pub struct Follower {
    pub build_id: i64,
    /// Each printed line starts with this (the builder, when several builds interleave).
    prefix: String,
    /// The step being printed (API number) and the bytes of its log printed so far.
    step: i64,
    offset: usize,
    header_done: bool,
    /// An unfinished last line, held back until its end arrives.
    partial: Vec<u8>,
}

impl Follower {
    pub fn new(build_id: i64, prefix: String) -> Follower {
        Follower {
            build_id,
            prefix,
            step: 0,
            offset: 0,
            header_done: false,
            partial: Vec::new(),
        }
    }

    /// Writes to standard output (progress and results go to standard error).
    fn emit(&self, text: &str) {
        let mut out = std::io::stdout().lock();
        for line in text.lines() {
            let _ = writeln!(out, "{}{line}", self.prefix);
        }
        let _ = out.flush();
    }

    /// Prints whatever is new. Returns the build once it is complete and
    /// every step's output has been printed.
    pub async fn poll(&mut self, api: &ApiClient) -> Result<Option<Build>, ClientError> {
        // The build first: if it is complete now, the steps read next are final.
        let build: Build = api
            .get(&format!("/api/v1/builds/{}", self.build_id))
            .await?;
        let steps: Vec<Step> = api
            .get(&format!("/api/v1/builds/{}/steps", self.build_id))
            .await?;
        let total = steps.len();
        let from = self.step;
        for s in steps.iter().filter(|s| s.number >= from) {
            if s.started_at.is_none() {
                break;
            }
            if !self.header_done {
                self.emit(&format!(
                    "=== step {}/{total}: {} ===",
                    s.number + 1,
                    s.name
                ));
                self.header_done = true;
            }
            let path = format!(
                "/api/v1/builds/{}/steps/{}/log?offset={}",
                self.build_id, s.number, self.offset
            );
            match api.get_bytes(&path).await {
                Ok(bytes) => {
                    self.offset += bytes.len();
                    self.partial.extend_from_slice(&bytes);
                    if let Some(end) = self.partial.iter().rposition(|&b| b == b'\n') {
                        let whole: Vec<u8> = self.partial.drain(..=end).collect();
                        self.emit(&String::from_utf8_lossy(&whole));
                    }
                }
                // A step that never ran (skipped) has no log.
                Err(ClientError::Status(404, _)) => {}
                Err(e) => return Err(e),
            }
            // Steps finish before their build: a step still open in a build
            // that ended was interrupted (its master went away or stopped it).
            if s.complete_at.is_none() && build.complete_at.is_none() {
                return Ok(None);
            }
            self.flush();
            let outcome = match (&s.complete_at, s.results.as_deref()) {
                (Some(_), r) => r.unwrap_or("-").to_owned(),
                (None, _) => "interrupted".to_owned(),
            };
            self.emit(&format!(
                "=== step {}/{total}: {}: {outcome} ===",
                s.number + 1,
                s.name,
            ));
            self.step = s.number + 1;
            self.offset = 0;
            self.header_done = false;
        }
        if build.complete_at.is_some() {
            return Ok(Some(build));
        }
        Ok(None)
    }
}

impl Follower {
    /// Prints an unfinished last line as it is (when no more will be read).
    pub fn flush(&mut self) {
        if !self.partial.is_empty() {
            let rest = std::mem::take(&mut self.partial);
            self.emit(&String::from_utf8_lossy(&rest));
        }
    }
}

/// Exit code for a build's result: 0 for success or warnings.
pub fn is_good(results: &str) -> bool {
    results == "success" || results == "warnings"
}
