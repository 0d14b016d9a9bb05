//! Server settings. The defaults are the safe ones: no admin token (admin endpoints off),
//! CORS off, modest body/query limits and a per-client rate limit.

use std::path::PathBuf;
use std::time::Duration;

/// Everything the router needs to know besides its back ends.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Data directory: the index lives here and lab runs are found under it.
    pub data_dir: PathBuf,
    /// Bearer token for admin endpoints; `None` disables them.
    pub admin_token: Option<String>,
    /// Largest request body accepted on ordinary endpoints (bytes).
    pub max_body_bytes: usize,
    /// Largest body accepted by `POST /api/ingest` (bytes).
    pub max_ingest_bytes: usize,
    /// Largest query string (bytes, before decoding).
    pub max_query_bytes: usize,
    /// Largest question / message text (characters).
    pub max_text_chars: usize,
    /// Sustained requests per second per client IP on `/api` and `/v1`; 0 disables it.
    pub rate_per_sec: u32,
    /// Burst allowance of the rate limit.
    pub rate_burst: u32,
    /// Origins allowed by CORS; empty = CORS off, `*` = any origin.
    pub cors_origins: Vec<String>,
    /// Generation jobs that may wait for the worker; more get 503 + Retry-After.
    pub queue_capacity: usize,
    /// Upper bound on `max_tokens` of one generation.
    pub max_tokens_cap: usize,
    /// Largest `k` for search and ask.
    pub max_k: usize,
    /// Extra folders searched for lab runs (besides `DATA/lab`, `DATA/refusal`, `DATA/runs`).
    pub lab_roots: Vec<PathBuf>,
    /// Largest total text of a chat-completions conversation (characters).
    pub max_chat_chars: usize,
    /// Default `max_tokens` of a chat completion.
    pub default_max_tokens: usize,
    /// Longest wait for a request's headers, counted from the connection's first byte
    /// or, on a kept-alive connection, from the end of the previous response: a
    /// connection that stalls or idles longer is closed.
    pub header_read_timeout: Duration,
    /// Longest wait for the next piece of a request body; the request then fails.
    pub body_read_timeout: Duration,
}

impl ServerConfig {
    /// Safe defaults for a data directory.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        ServerConfig {
            data_dir: data_dir.into(),
            admin_token: None,
            max_body_bytes: 256 * 1024,
            max_ingest_bytes: 32 * 1024 * 1024,
            max_query_bytes: 4096,
            max_text_chars: 4000,
            rate_per_sec: 20,
            rate_burst: 60,
            cors_origins: Vec::new(),
            queue_capacity: 8,
            max_tokens_cap: 1024,
            max_k: 50,
            lab_roots: Vec::new(),
            max_chat_chars: 16_000,
            default_max_tokens: 256,
            header_read_timeout: Duration::from_secs(15),
            body_read_timeout: Duration::from_secs(30),
        }
    }
}
