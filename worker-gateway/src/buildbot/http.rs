//! The HTTP/1.1 upgrade request of a Buildbot worker, and the gateway's
//! answers to it: `101 Switching Protocols` once a master accepted the
//! worker, `401` (before any upgrade) when it did not.

use base64::Engine as _;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

/// Largest upgrade request read.
const MAX_HEAD_BYTES: usize = 16 * 1024;
const MAX_HEADERS: usize = 64;

/// A parsed upgrade request.
#[derive(Debug)]
pub(crate) struct Upgrade {
    pub key: String,
    /// From `Authorization: Basic`, when present and well-formed.
    pub credentials: Option<(String, String)>,
    /// Bytes read past the end of the request (normally none).
    pub rest: Vec<u8>,
}

/// Why a request is not a usable upgrade; answered with this status.
#[derive(Debug)]
pub(crate) struct BadRequest {
    pub status: u16,
    pub why: String,
}

fn bad(why: impl Into<String>) -> BadRequest {
    BadRequest {
        status: 400,
        why: why.into(),
    }
}

/// Reads the request head. `Ok(None)`: the peer closed before sending one.
pub(crate) async fn read_upgrade(
    stream: &mut (impl AsyncRead + Unpin),
) -> std::io::Result<Option<Result<Upgrade, BadRequest>>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf) {
            Ok(httparse::Status::Complete(len)) => {
                return Ok(Some(parse(&req).map(|(key, credentials)| Upgrade {
                    key,
                    credentials,
                    rest: buf[len..].to_vec(),
                })));
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD_BYTES => continue,
            Ok(httparse::Status::Partial) => {
                return Ok(Some(Err(bad(format!(
                    "request head larger than {MAX_HEAD_BYTES} bytes"
                )))));
            }
            Err(e) => return Ok(Some(Err(bad(format!("malformed HTTP request: {e}"))))),
        }
    }
}

type Parsed = (String, Option<(String, String)>);

fn parse(req: &httparse::Request<'_, '_>) -> Result<Parsed, BadRequest> {
    if req.method != Some("GET") {
        return Err(bad("only GET upgrades to a WebSocket"));
    }
    let header = |name: &str| {
        req.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
            .map(str::trim)
    };
    // Buildbot's worker sends `Upgrade: WebSocket`.
    if !header("upgrade").is_some_and(|u| u.eq_ignore_ascii_case("websocket")) {
        return Err(bad("not a WebSocket upgrade (no `Upgrade: websocket`)"));
    }
    if header("sec-websocket-version") != Some("13") {
        return Err(bad("unsupported Sec-WebSocket-Version (13 expected)"));
    }
    let key = header("sec-websocket-key")
        .filter(|k| !k.is_empty())
        .ok_or_else(|| bad("no Sec-WebSocket-Key"))?
        .to_owned();
    let credentials = match header("authorization") {
        None => None,
        Some(value) => Some(basic(value).ok_or_else(|| bad("malformed Authorization header"))?),
    };
    Ok((key, credentials))
}

/// `Basic base64(name:password)`.
fn basic(value: &str) -> Option<(String, String)> {
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (name, password) = text.split_once(':')?;
    Some((name.to_owned(), password.to_owned()))
}

/// Answers `101 Switching Protocols`.
pub(crate) async fn accept(
    stream: &mut (impl AsyncWrite + Unpin),
    key: &str,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
        derive_accept_key(key.as_bytes())
    );
    stream.write_all(head.as_bytes()).await?;
    stream.flush().await
}

/// Answers with an error status and a one-line text body, then closes.
pub(crate) async fn refuse(
    stream: &mut (impl AsyncWrite + Unpin),
    status: u16,
    why: &str,
) -> std::io::Result<()> {
    let reason = match status {
        400 => "Bad Request",
        401 => "Unauthorized",
        _ => "Service Unavailable",
    };
    let body = format!("{why}\n");
    let mut head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if status == 401 {
        head.push_str("WWW-Authenticate: Basic realm=\"flotilla\"\r\n");
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.flush().await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn read(text: &str) -> Result<Upgrade, BadRequest> {
        let mut input = text.as_bytes();
        read_upgrade(&mut input).await.unwrap().unwrap()
    }

    const REQ: &str = "GET / HTTP/1.1\r\nUser-Agent: AutobahnPython/26.10.2\r\nHost: 127.0.0.1:1\r\nUpgrade: WebSocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: qnFQqW/mVzuPbqdXYEpnHA==\r\nSec-WebSocket-Version: 13\r\n";

    #[tokio::test]
    async fn reads_the_buildbot_workers_upgrade_with_basic_auth() {
        // base64("w1:pa:ss")
        let u = read(&format!("{REQ}Authorization: Basic dzE6cGE6c3M=\r\n\r\n"))
            .await
            .unwrap();
        assert_eq!(u.credentials, Some(("w1".to_owned(), "pa:ss".to_owned())));
        assert_eq!(u.key, "qnFQqW/mVzuPbqdXYEpnHA==");
        let none = read(&format!("{REQ}\r\n")).await.unwrap();
        assert_eq!(none.credentials, None);
    }

    #[tokio::test]
    async fn refuses_malformed_requests() {
        let e = read(&format!("{REQ}Authorization: Basic !!!\r\n\r\n"))
            .await
            .unwrap_err();
        assert_eq!(e.status, 400);
        let e = read("GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap_err();
        assert!(e.why.contains("upgrade"), "{}", e.why);
    }

    #[test]
    fn accept_key_matches_the_capture() {
        assert_eq!(
            derive_accept_key(b"qnFQqW/mVzuPbqdXYEpnHA=="),
            "mhu/cwyqsTYxzZys4yeheFuBuFM="
        );
    }
}
