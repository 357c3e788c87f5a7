//! HTTP client for the client commands (`force`, `sendchange`, `status`,
//! `drain`, ...): any master's API, with the admin token when one is set.

use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

#[derive(Debug)]
pub enum ClientError {
    Unreachable(String),
    Unauthorized(String),
    Status(u16, String),
    Decode(String),
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientError::Unreachable(m) => write!(f, "API unreachable: {m}"),
            ClientError::Unauthorized(m) => {
                write!(
                    f,
                    "refused by the API (FLOTILLA_ADMIN_TOKEN or FLOTILLA_READ_TOKEN missing or wrong): {m}"
                )
            }
            ClientError::Status(code, m) => write!(f, "API answered {code}: {m}"),
            ClientError::Decode(m) => write!(f, "unexpected answer from the API: {m}"),
        }
    }
}

#[derive(Clone, Debug)]
pub struct ApiClient {
    base: String,
    http: reqwest::Client,
    token: Option<String>,
}

const ATTEMPTS: u32 = 4;

impl ApiClient {
    /// The admin token (`FLOTILLA_ADMIN_TOKEN`) serves for reading too; a
    /// read-only client gives `FLOTILLA_READ_TOKEN`.
    pub fn new(base: &str) -> ApiClient {
        let var = |name: &str| std::env::var(name).ok().filter(|t| !t.is_empty());
        let token = var("FLOTILLA_ADMIN_TOKEN").or_else(|| var("FLOTILLA_READ_TOKEN"));
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(3))
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap_or_default();
        ApiClient {
            base: base.trim_end_matches('/').to_owned(),
            http,
            token,
        }
    }

    fn authed(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }

    fn get_req(&self, path: &str) -> reqwest::RequestBuilder {
        self.authed(self.http.get(self.url(path)))
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.send(|| self.get_req(path)).await
    }

    pub async fn get_text(&self, path: &str) -> Result<String, ClientError> {
        let resp = self.execute(|| self.get_req(path)).await?;
        resp.text()
            .await
            .map_err(|e| ClientError::Decode(e.to_string()))
    }

    /// The body as bytes (a log read from a byte offset may end inside a character).
    pub async fn get_bytes(&self, path: &str) -> Result<Vec<u8>, ClientError> {
        let resp = self.execute(|| self.get_req(path)).await?;
        resp.bytes()
            .await
            .map(|b| b.to_vec())
            .map_err(|e| ClientError::Decode(e.to_string()))
    }

    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        self.send(|| self.authed(self.http.post(self.url(path)).json(body)))
            .await
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    async fn send<T: DeserializeOwned>(
        &self,
        make: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<T, ClientError> {
        let resp = self.execute(make).await?;
        let text = resp
            .text()
            .await
            .map_err(|e| ClientError::Decode(e.to_string()))?;
        serde_json::from_str(&text).map_err(|e| ClientError::Decode(format!("{e}: {text}")))
    }

    /// Sends with retries while the API cannot be reached; maps error statuses.
    async fn execute(
        &self,
        make: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, ClientError> {
        let mut delay = Duration::from_millis(200);
        let mut attempt = 0;
        loop {
            attempt += 1;
            match make().send().await {
                Ok(resp) => {
                    let status = resp.status();
                    if status.is_success() {
                        return Ok(resp);
                    }
                    let body = resp.text().await.unwrap_or_default();
                    let message = serde_json::from_str::<serde_json::Value>(&body)
                        .ok()
                        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
                        .unwrap_or(body);
                    if status.as_u16() == 401 || status.as_u16() == 403 {
                        return Err(ClientError::Unauthorized(message));
                    }
                    if status.is_server_error() && status.as_u16() == 503 && attempt < ATTEMPTS {
                        tokio::time::sleep(delay).await;
                        delay *= 2;
                        continue;
                    }
                    return Err(ClientError::Status(status.as_u16(), message));
                }
                Err(e) if (e.is_connect() || e.is_timeout()) && attempt < ATTEMPTS => {
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
                Err(e) if e.is_connect() || e.is_timeout() => {
                    return Err(ClientError::Unreachable(format!("{}: {e}", self.base)));
                }
                Err(e) => return Err(ClientError::Unreachable(e.to_string())),
            }
        }
    }
}
