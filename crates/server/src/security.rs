//! The "safe by default" rules, each a small middleware or helper: admin bearer token,
//! body and query size limits, a per-client rate limit, identifier checks that stop path
//! traversal, and a JSON extractor whose rejections are `{error, message}` JSON with a
//! useful message (400 for malformed JSON, 413 for an oversized body).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::rejection::JsonRejection;
use axum::extract::{ConnectInfo, FromRequest, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

use crate::error::ApiError;
use crate::state::AppState;

/// `Authorization: Bearer <token>` must match the configured admin token.
/// No token configured: 403 (admin endpoints are off). Missing header: 401. Wrong: 403.
pub(crate) fn check_admin(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(expected) = state.config.admin_token.as_deref() else {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "admin_disabled",
            "admin endpoints are disabled on this server: start it with OVERSEER_ADMIN_TOKEN \
             set or --admin-token-file FILE",
        ));
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    match given {
        None => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "this endpoint needs an admin token: send 'Authorization: Bearer <token>'",
        )),
        Some(t) if tokens_equal(t, expected) => Ok(()),
        Some(_) => {
            tracing::warn!("admin request with a wrong token");
            Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "the admin token is not valid",
            ))
        }
    }
}

/// Compare hashes of both tokens so the time taken says nothing about the token.
fn tokens_equal(a: &str, b: &str) -> bool {
    let ha = Sha256::digest(a.as_bytes());
    let hb = Sha256::digest(b.as_bytes());
    ha.iter()
        .zip(hb.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

/// Refuse oversized query strings and declared bodies before any handler runs.
/// (Bodies without a length are bounded by `DefaultBodyLimit` in the extractors.)
pub(crate) async fn size_limits(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let cfg = &state.config;
    if let Some(q) = req.uri().query()
        && q.len() > cfg.max_query_bytes
    {
        return Err(ApiError::too_large(format!(
            "query string of {} bytes is over the limit of {} bytes",
            q.len(),
            cfg.max_query_bytes
        )));
    }
    let limit = if req.uri().path() == "/api/ingest" {
        cfg.max_ingest_bytes
    } else {
        cfg.max_body_bytes
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(n) = declared
        && n > limit as u64
    {
        return Err(ApiError::too_large(format!(
            "request body of {n} bytes is over the limit of {limit} bytes"
        )));
    }
    Ok(next.run(req).await)
}

/// Per-client-IP token buckets (sustained rate + burst).
pub(crate) struct RateLimit {
    limiter: DefaultKeyedRateLimiter<IpAddr>,
    calls: AtomicU64,
}

impl RateLimit {
    /// `None` when `per_sec` is 0 (rate limiting off).
    pub fn new(per_sec: u32, burst: u32) -> Option<Arc<RateLimit>> {
        let rate = NonZeroU32::new(per_sec)?;
        let burst = NonZeroU32::new(burst.max(per_sec)).unwrap_or(rate);
        Some(Arc::new(RateLimit {
            limiter: RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst)),
            calls: AtomicU64::new(0),
        }))
    }

    /// `Err(seconds to wait)` when the client is over its rate.
    fn check(&self, ip: IpAddr) -> Result<(), u64> {
        // Forget idle clients now and then so the table stays small.
        if self.calls.fetch_add(1, Ordering::Relaxed) % 4096 == 4095 {
            self.limiter.retain_recent();
        }
        self.limiter.check_key(&ip).map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            wait.as_secs().max(1)
        })
    }
}

/// The client's IP: the socket peer (no proxy headers are trusted).
fn client_ip(req: &Request) -> IpAddr {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.0.ip())
}

pub(crate) async fn rate_limit(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    if let Some(rl) = &state.rate_limit
        && let Err(wait) = rl.check(client_ip(&req))
    {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "too many requests from this client; slow down",
        )
        .with_retry_after(wait));
    }
    Ok(next.run(req).await)
}

/// A document id may be looked up only if it cannot name anything outside the index:
/// no `..`, no backslash, no leading `/`, no control characters, bounded length. Ids are
/// only ever keys in the index (never file paths), and documents ingested from folders
/// have path-like ids (`notes/agenda.md`), so an inner `/` (sent as `%2F`) is allowed.
pub(crate) fn safe_document_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 512
        && !id.contains("..")
        && !id.starts_with('/')
        && !id.contains('\\')
        && !id.chars().any(char::is_control)
}

/// A lab run id or plot name: `[A-Za-z0-9._-]`, not starting with a dot.
pub(crate) fn safe_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 200
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// `axum::Json` with rejections turned into `{error, message}`: malformed or mistyped
/// JSON is a 400 that says what is wrong; an oversized body is a 413.
#[derive(Debug)]
pub(crate) struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(ApiJson(v)),
            Err(rej) => Err(json_rejection(rej)),
        }
    }
}

fn json_rejection(rej: JsonRejection) -> ApiError {
    match rej.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::too_large("request body is over the size limit"),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the body as JSON with 'Content-Type: application/json'",
        ),
        // Syntax errors (400) and wrong shapes (422) both become 400 with serde's message,
        // which names the field and position but nothing about the server.
        _ => ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            format!("invalid JSON body: {}", rej.body_text()),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_that_could_escape_are_refused() {
        for bad in [
            "",
            "..",
            "../x",
            "a/../b",
            "/etc/passwd",
            "a\\b",
            "x\0",
            "..%2f",
            &"a".repeat(600),
        ] {
            assert!(!safe_document_id(bad), "{bad:?}");
        }
        for good in [
            "3f2a9c",
            "arxiv:2401.0001",
            "lesswrong_abc-def",
            "notes/agenda.md",
        ] {
            assert!(safe_document_id(good), "{good:?}");
        }
        for bad in ["", ".hidden", "a/b", "../run", "r u n", "run%2F"] {
            assert!(!safe_name(bad), "{bad:?}");
        }
        assert!(safe_name("qwen-2024.run_1"));
    }

    #[test]
    fn token_comparison() {
        assert!(tokens_equal("s3cret", "s3cret"));
        assert!(!tokens_equal("s3cret", "s3cret "));
        assert!(!tokens_equal("", "x"));
    }

    #[test]
    fn rate_limit_refuses_after_the_burst() {
        let rl = RateLimit::new(1, 3).expect("non-zero rate");
        let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
        for _ in 0..3 {
            assert!(rl.check(ip).is_ok());
        }
        assert!(rl.check(ip).is_err());
        // Another client has its own bucket.
        assert!(rl.check(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1))).is_ok());
        assert!(RateLimit::new(0, 5).is_none());
    }
}
