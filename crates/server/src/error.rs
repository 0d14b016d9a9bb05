//! Errors: the crate's [`Error`] (start-up and back-end failures) and [`ApiError`], the
//! one shape every HTTP error takes on the wire: `{"error": code, "message": text}`.
//! Messages are written for the client; internal details (paths, back-end error chains)
//! go to the `tracing` log only, never into a response.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// Errors of `overseer-server`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A caller passed a value the server cannot use.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// Reading a file of the data directory (lab runs, admin token) failed.
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The generation worker thread could not be started.
    #[error("cannot start the generation worker: {0}")]
    Worker(String),
}

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What a back end ([`crate::Literature`], [`crate::Generator`]) reports when it fails.
/// The variant decides the HTTP status; the text of `Internal` is logged, not sent.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The request itself is wrong (bad filter, unknown mode): 400 with this message.
    #[error("{0}")]
    BadRequest(String),
    /// The back end cannot serve yet (empty index, no model): 503 with this message.
    #[error("{0}")]
    Unavailable(String),
    /// Something failed inside: 500 with a generic message; the text is only logged.
    #[error("{0}")]
    Internal(String),
}

/// An HTTP error response: status, a stable machine-readable code and a human message.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Seconds for a `Retry-After` header (503 when the queue is full, 429).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", message)
    }
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }
    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; the server log has the details",
        )
    }
    pub fn with_retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }
    /// The JSON body, `{"error": code, "message": text}`.
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({"error": self.code, "message": self.message})
    }
}

impl From<BackendError> for ApiError {
    fn from(e: BackendError) -> Self {
        match e {
            BackendError::BadRequest(m) => ApiError::bad_request(m),
            BackendError::Unavailable(m) => ApiError::unavailable(m),
            BackendError::Internal(m) => {
                tracing::error!(error = %m, "back-end failure");
                ApiError::internal()
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, axum::Json(self.body())).into_response();
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"overseer-admin\""),
            );
        }
        resp
    }
}
