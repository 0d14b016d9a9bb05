//! The error type of this crate.

use std::path::PathBuf;

/// Errors of `overseer-index`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A caller passed something unusable (empty query, k = 0, bad date, ...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// Reading or writing a file failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The full-text engine failed.
    #[error("full-text index: {0}")]
    Tantivy(#[from] tantivy::TantivyError),
    /// The index on disk was written by an incompatible version of overseer.
    #[error(
        "the index in {} was written by an incompatible version ({found}; this build reads {expected}): re-ingest (run `overseer ingest --reset ...` or delete that folder)",
        dir.display()
    )]
    IncompatibleVersion {
        dir: PathBuf,
        found: String,
        expected: String,
    },
    /// The index was built with another embedding model.
    #[error(
        "the index in {} was built with embedder {index} but {current} is loaded: re-ingest (run `overseer ingest --reset ...`)",
        dir.display()
    )]
    EmbedderMismatch {
        dir: PathBuf,
        index: String,
        current: String,
    },
    /// Another ingest holds the lock on this data directory.
    #[error("another ingest is running on {} (lock file {})", dir.display(), lock.display())]
    Locked { dir: PathBuf, lock: PathBuf },
    /// A file of the index is damaged or inconsistent.
    #[error("index file {} is damaged: {reason}; re-ingest", path.display())]
    Corrupt { path: PathBuf, reason: String },
    /// The embedding model failed to load or run.
    #[error("embedding model: {0}")]
    Embedding(String),
    /// An embedding model folder is missing a file or holds an unusable one.
    #[error("embedding model in {}: {reason}", path.display())]
    EmbedModel { path: PathBuf, reason: String },
    /// The embedding model's tokenizer failed on a text.
    #[error("tokenizer: {0}")]
    Tokenize(String),
    /// An evaluation file (BEIR queries/qrels) is malformed.
    #[error("{}:{line}: {reason}", path.display())]
    EvalInput {
        path: PathBuf,
        line: usize,
        reason: String,
    },
}

impl Error {
    /// Shorthand for an [`Error::Io`].
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }
}

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
