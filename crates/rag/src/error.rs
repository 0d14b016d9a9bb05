//! The error type of this crate.

/// Errors of `overseer-rag`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A caller passed something unusable (empty question, k = 0, ...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The question is longer than [`crate::MAX_QUESTION_CHARS`].
    #[error("question too long: {chars} characters (at most {max}); shorten it")]
    QuestionTooLong { chars: usize, max: usize },
    /// The index holds no documents.
    #[error("the index is empty: run `overseer ingest` first")]
    EmptyIndex,
    /// Retrieval failed inside the index.
    #[error("retrieval failed: {0}")]
    Index(#[from] overseer_index::Error),
    /// The local model failed.
    #[error("local model failed: {0}")]
    Model(#[from] overseer_lm::Error),
    /// The remote server could not be reached (after retries).
    #[error("cannot reach the LLM server at {url}: {reason}")]
    Connect { url: String, reason: String },
    /// The remote server did not answer in time.
    #[error("the LLM server at {url} timed out: {reason}")]
    Timeout { url: String, reason: String },
    /// The remote server answered with an HTTP error status.
    #[error("the LLM server at {url} returned HTTP {status}: {body}")]
    Status {
        url: String,
        status: u16,
        body: String,
    },
    /// The remote server answered with something that is not a chat completion.
    #[error("the LLM server at {url} sent an unreadable response: {reason}")]
    BadResponse { url: String, reason: String },
    /// A topic file (the digest's taxonomy) is malformed.
    #[error("{path}:{line}: bad taxonomy: {reason}")]
    Taxonomy {
        path: String,
        line: usize,
        reason: String,
    },
    /// A digest's stored state (watermark, cache, saved digests) could not be read or
    /// written.
    #[error("digest store {path}: {reason}")]
    DigestStore { path: String, reason: String },
    /// The context budget cannot hold even the question.
    #[error("the model's context ({window} tokens) is too small for the prompt ({needed} tokens)")]
    ContextTooSmall { window: usize, needed: usize },
}

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
