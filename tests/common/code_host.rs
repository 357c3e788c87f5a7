//! A stand-in for the GitHub and GitLab APIs (and any webhook receiver):
//! a plain HTTP/1.1 server on a loopback port that records every request
//! and answers each by a plan the test sets — a status, a 429 with
//! `Retry-After`, a 403 of a spent rate limit, a hang (no answer, the connection held open), or a
//! closed connection — and, when the plan is empty, 201 (or, with
//! `fail_percent`, a 500 at random). `stop` takes it away (connections
//! refused) and `start_on` brings it back on the same port.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How to answer one request.
#[derive(Clone, Copy, Debug)]
pub enum Answer {
    Status(u16),
    /// 429 with `Retry-After: <secs>`.
    TooMany(u64),
    /// GitHub's answer to a spent rate limit: 403 with
    /// `x-ratelimit-remaining: 0` and `x-ratelimit-reset` `<secs>` from now.
    RateLimited(u64),
    /// Read the request, never answer.
    Hang,
    /// Read the request, close the connection.
    Close,
}

/// One recorded request.
#[derive(Clone, Debug)]
pub struct Call {
    pub method: String,
    pub path: String,
    /// Lower-case names.
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
    /// The status answered (0: none).
    pub answered: u16,
}

impl Call {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

#[derive(Default)]
struct Shared {
    calls: Vec<Call>,
    plan: VecDeque<Answer>,
    fail_percent: u32,
}

pub struct CodeHost {
    pub addr: SocketAddr,
    shared: Arc<Mutex<Shared>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for CodeHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CodeHost({})", self.addr)
    }
}

impl CodeHost {
    pub async fn start() -> CodeHost {
        Self::start_on(super::free_port()).await
    }

    pub async fn start_on(port: u16) -> CodeHost {
        let mut host = CodeHost {
            addr: ([127, 0, 0, 1], port).into(),
            shared: Arc::default(),
            task: None,
        };
        host.listen().await;
        host
    }

    async fn listen(&mut self) {
        let listener = TcpListener::bind(self.addr).await.expect("bind code host");
        let shared = self.shared.clone();
        self.task = Some(tokio::spawn(async move {
            loop {
                let Ok((conn, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(serve(conn, shared.clone()));
            }
        }));
    }

    /// The base URL (`http://127.0.0.1:port`).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stop accepting: connections are refused until `resume`.
    pub fn stop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }

    /// Accept again on the same port (after `stop`).
    pub async fn resume(&mut self) {
        // The aborted task's listener is dropped asynchronously.
        for _ in 0..100 {
            if std::net::TcpListener::bind(self.addr).is_ok() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        self.listen().await;
    }

    /// Answer the next requests so, in order.
    pub fn plan(&self, answers: &[Answer]) {
        self.shared
            .lock()
            .unwrap()
            .plan
            .extend(answers.iter().copied());
    }

    /// Answer this share of unplanned requests with 500.
    pub fn fail_percent(&self, percent: u32) {
        self.shared.lock().unwrap().fail_percent = percent;
    }

    pub fn calls(&self) -> Vec<Call> {
        self.shared.lock().unwrap().calls.clone()
    }
}

impl Drop for CodeHost {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn serve(mut conn: TcpStream, shared: Arc<Mutex<Shared>>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        match conn.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or_default().split(' ');
    let method = first.next().unwrap_or_default().to_owned();
    let path = first.next().unwrap_or_default().to_owned();
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let len: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < len {
        match conn.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => body.extend_from_slice(&chunk[..n]),
        }
    }
    let answer = {
        let mut s = shared.lock().unwrap();
        let answer = s.plan.pop_front().unwrap_or_else(|| {
            if s.fail_percent > 0 && rand::random::<u32>() % 100 < s.fail_percent {
                Answer::Status(500)
            } else {
                Answer::Status(201)
            }
        });
        let answered = match answer {
            Answer::Status(c) => c,
            Answer::TooMany(_) => 429,
            Answer::RateLimited(_) => 403,
            Answer::Hang | Answer::Close => 0,
        };
        s.calls.push(Call {
            method,
            path,
            headers,
            body,
            answered,
        });
        answer
    };
    let (code, extra) = match answer {
        Answer::Status(c) => (c, String::new()),
        Answer::TooMany(secs) => (429, format!("Retry-After: {secs}\r\n")),
        Answer::RateLimited(secs) => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs();
            let reset = now + secs;
            (
                403,
                format!("x-ratelimit-remaining: 0\r\nx-ratelimit-reset: {reset}\r\n"),
            )
        }
        Answer::Hang => {
            tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
            return;
        }
        Answer::Close => return,
    };
    let text = "{}";
    let resp = format!(
        "HTTP/1.1 {code} X\r\nContent-Type: application/json\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{text}",
        text.len()
    );
    let _ = conn.write_all(resp.as_bytes()).await;
    let _ = conn.shutdown().await;
}
