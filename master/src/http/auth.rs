//! Who may do what over HTTP, decided in one middleware.
//!
//! - Health checks (`/healthz`, `/readyz`) and `/metrics` are always open:
//!   supervisors and scrapers hold no secrets.
//! - Webhooks check their provider's own secret (see `hooks`).
//! - With `[api] read_token_env`, everything else needs the read token or
//!   the admin token, as `Authorization: Bearer <token>` or as the password
//!   of HTTP basic auth (any user name), so a browser can ask for it: a
//!   refusal carries `WWW-Authenticate: Basic`. Step logs can hold sensitive
//!   output; this keeps them from whoever can reach the port.
//! - With `[api] admin_token_env`, every `POST` needs the admin token.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use crate::state::MasterState;

/// Paths anyone may read.
fn is_open(path: &str) -> bool {
    matches!(
        path,
        "/healthz" | "/readyz" | "/metrics" | "/api/v1/openapi.json"
    ) || path.starts_with("/api/v1/hooks/")
}

pub async fn require_tokens(
    State(state): State<Arc<MasterState>>,
    req: Request,
    next: Next,
) -> Result<Response, Response> {
    let path = req.uri().path().to_owned();
    if is_open(&path) {
        return Ok(next.run(req).await);
    }
    let api = &state.config.api;
    let admin = secret(api.admin_token_env.as_deref());
    let given = credential(req.headers());
    let is_admin = admin
        .as_deref()
        .zip(given.as_deref())
        .is_some_and(|(a, g)| constant_time_eq(a.as_bytes(), g.as_bytes()));
    if let Some(var) = api.read_token_env.as_deref() {
        let read = secret(Some(var));
        let may_read = is_admin
            || read
                .as_deref()
                .zip(given.as_deref())
                .is_some_and(|(r, g)| constant_time_eq(r.as_bytes(), g.as_bytes()));
        if !may_read {
            tracing::debug!(%path, "refused a request without the read token");
            let mut resp = ApiError::Unauthorized.into_response();
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Basic realm=\"flotilla\", charset=\"UTF-8\""),
            );
            return Err(resp);
        }
    }
    if req.method() == Method::POST && api.admin_token_env.is_some() && !is_admin {
        tracing::warn!(%path, "refused a write without the right admin token");
        return Err(ApiError::Unauthorized.into_response());
    }
    Ok(next.run(req).await)
}

/// The value of the variable a `*_env` key names; a variable that is unset
/// or empty matches no token (a master without it refuses everyone).
fn secret(var: Option<&str>) -> Option<String> {
    var.and_then(|v| std::env::var(v).ok())
        .filter(|s| !s.is_empty())
}

/// The token of a request: a bearer token, or the password of basic auth.
fn credential(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    if let Some(token) = value.strip_prefix("Bearer ") {
        return Some(token.trim().to_owned());
    }
    let encoded = value.strip_prefix("Basic ")?;
    let decoded = String::from_utf8(base64_decode(encoded.trim())?).ok()?;
    decoded
        .split_once(':')
        .map(|(_, password)| password.to_owned())
}

/// Standard base64 (with or without padding), as basic auth sends it.
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    fn value(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    }
    let s = s.trim_end_matches('=').as_bytes();
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    for chunk in s.chunks(4) {
        if chunk.len() == 1 {
            return None;
        }
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= value(c)? << (18 - 6 * i);
        }
        let bytes = n.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    Some(out)
}

pub(super) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_auth_passwords_decode() {
        // "ops:s3cret" and "u:p?" (padding), as browsers send them.
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            "Basic b3BzOnMzY3JldA==".parse().unwrap(),
        );
        assert_eq!(credential(&h).as_deref(), Some("s3cret"));
        h.insert(header::AUTHORIZATION, "Basic dTpwPw==".parse().unwrap());
        assert_eq!(credential(&h).as_deref(), Some("p?"));
        h.insert(header::AUTHORIZATION, "Bearer tok".parse().unwrap());
        assert_eq!(credential(&h).as_deref(), Some("tok"));
        h.insert(header::AUTHORIZATION, "Basic !!!".parse().unwrap());
        assert_eq!(credential(&h), None);
    }
}
