//! What tests and the bench ask a cluster's masters over their HTTP API,
//! and the waits built on it.

use std::collections::HashSet;
use std::time::Duration;

use anyhow::Context;
use serde_json::Value;

use super::Cluster;
use crate::wait::{eventually, wait_for};

/// Rows per page when listing workers.
const PAGE: usize = 500;

impl Cluster {
    /// `http://<addr>` of master `m`'s API.
    pub fn api(&self, m: usize) -> String {
        format!("http://127.0.0.1:{}", self.masters[m].http)
    }

    /// The API of any master whose process is still running.
    pub fn any_api(&mut self) -> String {
        let i = self
            .masters
            .iter_mut()
            .position(|m| m.proc.running())
            .expect("a running master");
        self.api(i)
    }

    /// JSON of a successful GET, else None.
    pub async fn get(&self, url: &str) -> Option<Value> {
        let resp = self.http.get(url).send().await.ok()?;
        if !resp.status().is_success() {
            return None;
        }
        resp.json().await.ok()
    }

    /// Text of a successful GET, else None.
    pub async fn get_text(&self, url: &str) -> Option<String> {
        let resp = self.http.get(url).send().await.ok()?;
        if !resp.status().is_success() {
            return None;
        }
        resp.text().await.ok()
    }

    /// Waits until master `m` is ready (its database reachable) and linked to the gateway.
    pub async fn wait_master_linked(&self, m: usize, timeout: Duration) -> anyhow::Result<()> {
        let url = format!("{}/readyz", self.api(m));
        let what = format!(
            "master {} ready and linked to the gateway",
            self.masters[m].name
        );
        wait_for(&what, timeout, || async {
            self.get(&url)
                .await
                .filter(|v| v["gateway_links"].as_u64() >= Some(1))
                .map(|_| ())
        })
        .await
    }

    /// Waits until every master has a link to the gateway.
    pub async fn wait_linked(&self) {
        for m in 0..self.masters.len() {
            self.wait_master_linked(m, Duration::from_secs(30))
                .await
                .unwrap_or_else(|e| panic!("{e:#}"));
        }
    }

    /// Waits until every master is ready and every worker whose password is
    /// right is attached to some master.
    pub async fn wait_ready(&self) {
        for m in 0..self.masters.len() {
            let url = format!("{}/readyz", self.api(m));
            eventually(
                &format!("master {m} ready"),
                Duration::from_secs(30),
                || async {
                    self.http
                        .get(&url)
                        .send()
                        .await
                        .ok()
                        .filter(|r| r.status().is_success())
                        .map(|_| ())
                },
            )
            .await;
        }
        let good = self
            .spec
            .workers
            .iter()
            .filter(|(n, p)| *p == format!("{n}-secret"))
            .count();
        self.wait_workers(good, Duration::from_secs(30))
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
    }

    /// Waits until `n` workers are attached to masters.
    pub async fn wait_workers(&self, n: usize, timeout: Duration) -> anyhow::Result<()> {
        wait_for(&format!("{n} workers attached"), timeout, || async {
            (self.connected_workers().await >= n).then_some(())
        })
        .await
    }

    /// The connected workers master `m` lists (every master lists the whole
    /// cluster's workers), a page at a time.
    async fn connected_rows(&self, m: usize) -> Vec<Value> {
        let mut rows = Vec::new();
        for page in 0.. {
            let url = format!(
                "{}/api/v1/workers?connected=true&limit={PAGE}&offset={}",
                self.api(m),
                page * PAGE
            );
            let Some(Value::Array(ws)) = self.get(&url).await else {
                break;
            };
            let last = ws.len() < PAGE;
            rows.extend(
                ws.into_iter()
                    .filter(|w| w["connected"] == Value::Bool(true)),
            );
            if last {
                break;
            }
        }
        rows
    }

    /// Workers attached to any master that answers, counted once by name.
    pub async fn connected_workers(&self) -> usize {
        let mut names = HashSet::new();
        for m in 0..self.masters.len() {
            let rows = self.connected_rows(m).await;
            names.extend(
                rows.iter()
                    .filter_map(|w| w["name"].as_str().map(str::to_owned)),
            );
        }
        names.len()
    }

    /// Workers attached to master `m` itself.
    pub async fn workers_on(&self, m: usize) -> usize {
        let me = self.masters[m].name.as_str();
        self.connected_rows(m)
            .await
            .iter()
            .filter(|w| w["master"].as_str() == Some(me))
            .count()
    }

    /// Posts `body` to master `m`'s `/api/v1/force`; returns the first request id.
    pub async fn try_force(&self, m: usize, body: &Value) -> anyhow::Result<i64> {
        let resp = self
            .http
            .post(format!("{}/api/v1/force", self.api(m)))
            .json(body)
            .send()
            .await
            .context("POST /api/v1/force")?;
        let status = resp.status();
        let v: Value = resp.json().await.context("the answer to force")?;
        anyhow::ensure!(status.is_success(), "force failed: {status} {v}");
        v["buildrequest_ids"][0]
            .as_i64()
            .with_context(|| format!("no request id in {v}"))
    }

    /// Forces one build of `revision` through master `m`'s API; returns the request id.
    pub async fn force(&self, m: usize, builder: &str, revision: &str) -> i64 {
        let body = serde_json::json!({"builder": builder, "revision": revision, "branch": "main", "repository": "test"});
        self.try_force(m, &body)
            .await
            .unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Waits until every request is complete; returns their JSON rows.
    pub async fn wait_complete(&self, m: usize, ids: &[i64], timeout: Duration) -> Vec<Value> {
        let mut rows = Vec::new();
        for id in ids {
            let url = format!("{}/api/v1/buildrequests/{id}", self.api(m));
            let row = eventually(&format!("request {id} complete"), timeout, || async {
                self.get(&url)
                    .await
                    .filter(|r| r["complete"] == Value::Bool(true))
            })
            .await;
            rows.push(row);
        }
        rows
    }

    pub async fn builds_of(&self, m: usize, request: i64) -> Vec<Value> {
        let url = format!("{}/api/v1/builds?buildrequest_id={request}", self.api(m));
        match self.get(&url).await {
            Some(Value::Array(a)) => a,
            _ => Vec::new(),
        }
    }

    pub async fn step_log(&self, m: usize, build: i64, step: i64) -> String {
        let url = format!("{}/api/v1/builds/{build}/steps/{step}/log", self.api(m));
        self.get_text(&url).await.unwrap_or_default()
    }

    pub async fn connect_db(&self) -> sqlx::mysql::MySqlConnection {
        use sqlx::Connection;
        sqlx::mysql::MySqlConnection::connect(&self.db_url)
            .await
            .expect("connect to the test database")
    }
}
