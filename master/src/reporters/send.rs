//! Sending one prepared delivery and judging the answer: 2xx is sent; 429,
//! 5xx, a rate-limit 403, a timeout or a broken connection are tried again
//! after a backoff (or the wait the server names); any other answer is
//! final and logged.

use std::time::Duration;

use chrono::{DateTime, Utc};
use hmac::{KeyInit, Mac};
use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use sha2::Sha256;

use crate::config::ReporterConfig;
use crate::db::{Delivery, DeliveryOutcome};
use crate::secrets::Secrets;

/// The header carrying the http reporter's signature: `sha256=<hex>`, the
/// HMAC-SHA256 of the body keyed with the reporter's secret.
pub const SIGNATURE_HEADER: &str = "X-Flotilla-Signature";

/// Longest wait between attempts (a `Retry-After` may ask for more, up to an hour).
const MAX_BACKOFF: Duration = Duration::from_secs(300);
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);
/// The wait after a rate limit's refusal that names none.
const UNNAMED_RATE_LIMIT_WAIT: Duration = Duration::from_secs(60);

/// The wait before attempt `attempts + 1`: 1 s doubling, capped, with up
/// to a fifth more at random so masters do not retry in step.
pub fn backoff(attempts: i64) -> Duration {
    let exp = u32::try_from(attempts.clamp(0, 16)).unwrap_or(16);
    let base = Duration::from_secs(1u64 << exp).min(MAX_BACKOFF);
    let jitter = rand::random::<f64>() * 0.2;
    base.mul_f64(1.0 + jitter)
}

/// How long the server asks us to wait before the next attempt, capped:
/// `Retry-After` (seconds or an HTTP-date), else, on an answer of a spent
/// rate limit, until the limit's reset (`x-ratelimit-reset` of GitHub,
/// `ratelimit-reset` of GitLab: Unix seconds). `None`: the server did not
/// say, or named a moment already past.
fn server_wait(headers: &HeaderMap, now: DateTime<Utc>) -> Option<Duration> {
    let text = |name: &str| headers.get(name)?.to_str().ok().map(str::trim);
    let until = |at: DateTime<Utc>| (at - now).to_std().ok().filter(|d| !d.is_zero());
    let wait = if let Some(v) = text("retry-after") {
        match v.parse::<u64>() {
            Ok(secs) => Some(Duration::from_secs(secs)),
            Err(_) => DateTime::parse_from_rfc2822(v)
                .ok()
                .and_then(|at| until(at.with_timezone(&Utc))),
        }
    } else if rate_limit_spent(headers) {
        ["x-ratelimit-reset", "ratelimit-reset"]
            .iter()
            .find_map(|name| text(name)?.parse::<i64>().ok())
            .and_then(|secs| DateTime::from_timestamp(secs, 0))
            .and_then(until)
    } else {
        None
    };
    wait.map(|w| w.min(MAX_RETRY_AFTER))
}

/// The answer says the client's rate limit is used up (`x-ratelimit-remaining`
/// or `ratelimit-remaining` is 0).
fn rate_limit_spent(headers: &HeaderMap) -> bool {
    ["x-ratelimit-remaining", "ratelimit-remaining"]
        .iter()
        .any(|name| {
            headers
                .get(*name)
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
                == Some("0")
        })
}

/// The answer is a rate limit's refusal: a 403 or 429 with a spent
/// `x-ratelimit-remaining`, with a `Retry-After`, or saying so in its body
/// (GitHub's secondary limits may answer 403 with only a message).
fn rate_limited(status: StatusCode, headers: &HeaderMap, body: &str) -> bool {
    (status == StatusCode::FORBIDDEN || status == StatusCode::TOO_MANY_REQUESTS)
        && (rate_limit_spent(headers)
            || headers.contains_key("retry-after")
            || body.to_ascii_lowercase().contains("rate limit"))
}

/// Whether an answer that is not a success is worth trying again: 429,
/// any 5xx, and a rate limit's 403. Anything else (401, 404, 422, a 403 for
/// missing rights) is final.
fn worth_retrying(status: StatusCode, headers: &HeaderMap, body: &str) -> bool {
    status == StatusCode::TOO_MANY_REQUESTS
        || status.is_server_error()
        || rate_limited(status, headers, body)
}

/// The hex HMAC-SHA256 of `body` under `key`.
pub fn sign(key: &[u8], body: &[u8]) -> String {
    let mut mac = <hmac::Hmac<Sha256> as KeyInit>::new_from_slice(key)
        .expect("HMAC takes a key of any length");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

fn env(var: &str) -> Result<String, String> {
    std::env::var(var).map_err(|_| format!("environment variable {var} is not set"))
}

/// The API token of a github or gitlab reporter.
fn token(reporter: &ReporterConfig, secrets: &Secrets) -> Result<String, String> {
    credential(
        secrets,
        reporter.token_env.as_deref(),
        reporter.token_secret.as_deref(),
    )?
    .ok_or_else(|| format!("reporter {:?} has no token", reporter.name))
}

/// A credential from the environment variable `var` or the secret `secret`
/// (configuration allows one of them); `None` when neither is set.
fn credential(
    secrets: &Secrets,
    var: Option<&str>,
    secret: Option<&str>,
) -> Result<Option<String>, String> {
    match (var, secret) {
        (Some(var), _) => env(var).map(Some),
        (None, Some(name)) => secrets.resolve(name).map(Some).map_err(|e| e.to_string()),
        (None, None) => Ok(None),
    }
}

/// Send `delivery` for `reporter`, waiting at most `timeout`.
pub async fn send(
    client: &reqwest::Client,
    reporter: &ReporterConfig,
    secrets: &Secrets,
    delivery: &Delivery,
    timeout: Duration,
) -> DeliveryOutcome {
    let horizon = reporter.retry_horizon.get();
    let refused = |error: String| DeliveryOutcome::Refused {
        http_status: 0,
        error,
    };
    let request = match build_request(client, reporter, secrets, delivery) {
        Ok(r) => r,
        Err(e) => return refused(e),
    };
    let failed = |http_status: Option<u16>, error: String, delay: Option<Duration>| {
        DeliveryOutcome::Failed {
            http_status,
            error,
            delay: delay.unwrap_or_else(|| backoff(delivery.attempts)),
            horizon,
        }
    };
    match request.timeout(timeout).send().await {
        Err(e) if e.is_timeout() => failed(None, format!("no answer within {timeout:?}"), None),
        Err(e) => failed(None, format!("request failed: {e}"), None),
        Ok(resp) => {
            let status = resp.status();
            let code = status.as_u16();
            if status.is_success() {
                return DeliveryOutcome::Sent { http_status: code };
            }
            let headers = resp.headers().clone();
            let body = resp.text().await.unwrap_or_default();
            // A rate limit that names no wait: GitHub asks for a minute.
            let wait = server_wait(&headers, Utc::now()).or_else(|| {
                rate_limited(status, &headers, &body).then_some(UNNAMED_RATE_LIMIT_WAIT)
            });
            let retry = worth_retrying(status, &headers, &body);
            let text: String = body.chars().take(300).collect();
            let error = format!("HTTP {code}: {text}");
            if retry {
                failed(Some(code), error, wait)
            } else {
                DeliveryOutcome::Refused {
                    http_status: code,
                    error,
                }
            }
        }
    }
}

fn build_request(
    client: &reqwest::Client,
    reporter: &ReporterConfig,
    secrets: &Secrets,
    delivery: &Delivery,
) -> Result<reqwest::RequestBuilder, String> {
    let body = delivery.body.clone();
    let req = match reporter.kind.as_str() {
        "http" => {
            let url = reporter.url.as_deref().unwrap_or_default();
            let mut req = client
                .post(url)
                .header("X-Flotilla-Event", delivery.phase.name())
                .header("X-Flotilla-Delivery", delivery.id.to_string());
            let key = credential(
                secrets,
                reporter.secret_env.as_deref(),
                reporter.signing_secret.as_deref(),
            )?;
            if let Some(key) = key {
                let sig = sign(key.as_bytes(), body.as_bytes());
                req = req.header(SIGNATURE_HEADER, format!("sha256={sig}"));
            }
            req
        }
        "github" => {
            let token = token(reporter, secrets)?;
            client
                .post(format!("{}{}", reporter.api_base(), delivery.target))
                .bearer_auth(token)
                .header("Accept", "application/vnd.github+json")
                .header("X-GitHub-Api-Version", "2022-11-28")
        }
        _ => {
            let token = token(reporter, secrets)?;
            client
                .post(format!("{}{}", reporter.api_base(), delivery.target))
                .header("PRIVATE-TOKEN", token)
        }
    };
    Ok(req
        .header("Content-Type", "application/json")
        .header(
            "User-Agent",
            concat!("flotilla/", env!("CARGO_PKG_VERSION")),
        )
        .body(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        assert!(backoff(0) >= Duration::from_secs(1) && backoff(0) < Duration::from_secs(2));
        assert!(backoff(3) >= Duration::from_secs(8));
        assert!(backoff(40) <= MAX_BACKOFF.mul_f64(1.2));
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.insert(*name, value.parse().unwrap());
        }
        h
    }

    #[test]
    fn the_server_names_the_wait_in_seconds_a_date_or_a_rate_limit_reset() {
        let now = DateTime::parse_from_rfc3339("2026-11-30T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let wait = |pairs: &[(&'static str, &str)]| server_wait(&headers(pairs), now);
        assert_eq!(
            wait(&[("retry-after", " 7 ")]),
            Some(Duration::from_secs(7))
        );
        assert_eq!(
            wait(&[("retry-after", "Mon, 30 Nov 2026 10:00:30 GMT")]),
            Some(Duration::from_secs(30))
        );
        // A date already past, or nonsense: the client's own backoff.
        assert_eq!(
            wait(&[("retry-after", "Mon, 30 Nov 2026 09:00:00 GMT")]),
            None
        );
        assert_eq!(wait(&[("retry-after", "soon")]), None);
        assert_eq!(
            wait(&[("retry-after", "99999")]),
            Some(MAX_RETRY_AFTER),
            "capped"
        );
        let reset = (now.timestamp() + 90).to_string();
        assert_eq!(
            wait(&[
                ("x-ratelimit-remaining", "0"),
                ("x-ratelimit-reset", &reset)
            ]),
            Some(Duration::from_secs(90))
        );
        assert_eq!(
            wait(&[("ratelimit-remaining", "0"), ("ratelimit-reset", &reset)]),
            Some(Duration::from_secs(90))
        );
        // A reset with budget left is not a request to wait.
        assert_eq!(
            wait(&[
                ("x-ratelimit-remaining", "12"),
                ("x-ratelimit-reset", &reset)
            ]),
            None
        );
        assert_eq!(wait(&[]), None);
    }

    #[test]
    fn a_rate_limit_403_is_retried_and_a_rights_403_is_final() {
        let judge = |code: u16, pairs: &[(&'static str, &str)]| {
            worth_retrying(StatusCode::from_u16(code).unwrap(), &headers(pairs), "{}")
        };
        assert!(judge(429, &[]));
        assert!(judge(500, &[]));
        assert!(judge(503, &[]));
        assert!(judge(403, &[("x-ratelimit-remaining", "0")]));
        assert!(judge(403, &[("retry-after", "60")]));
        assert!(!judge(403, &[("x-ratelimit-remaining", "4999")]));
        assert!(!judge(403, &[]));
        assert!(!judge(401, &[]));
        assert!(!judge(404, &[]));
        assert!(!judge(422, &[("retry-after", "60")]));
        // GitHub's secondary limit may say so only in the body.
        let secondary = r#"{"message": "You have exceeded a secondary rate limit."}"#;
        assert!(worth_retrying(
            StatusCode::FORBIDDEN,
            &HeaderMap::new(),
            secondary
        ));
        assert!(rate_limited(
            StatusCode::FORBIDDEN,
            &HeaderMap::new(),
            secondary
        ));
        let rights = r#"{"message": "Resource not accessible by integration"}"#;
        assert!(!worth_retrying(
            StatusCode::FORBIDDEN,
            &HeaderMap::new(),
            rights
        ));
        assert!(!rate_limited(
            StatusCode::NOT_FOUND,
            &HeaderMap::new(),
            secondary
        ));
    }

    #[test]
    fn the_signature_is_the_hmac_of_the_body() {
        // RFC 4231 test case 2.
        assert_eq!(
            sign(b"Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
