//! The error type of this crate: one variant per thing that can go wrong in the lab.

use std::path::PathBuf;

/// Errors of `overseer-lab`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A caller passed an argument that cannot work (empty prompt set, bad threshold...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A prompt file could not be parsed (bad JSON, JSONL line, missing field).
    #[error("{path}: {message}")]
    BadPrompts { path: PathBuf, message: String },
    /// A direction file is missing, truncated or does not hold what the lab writes.
    #[error("direction file {path}: {message}")]
    BadDirection { path: PathBuf, message: String },
    /// A direction applied to a model it does not fit (made for another model).
    #[error(
        "the direction has {hidden} dimensions at layer {layer}, but the model's residual stream has {model_hidden} dimensions and {n_layer} layers: it was made for another model"
    )]
    DirectionMismatch {
        hidden: usize,
        layer: usize,
        model_hidden: usize,
        n_layer: usize,
    },
    /// A GGUF file could not be read, edited or written.
    #[error("gguf {path}: {message}")]
    Gguf { path: PathBuf, message: String },
    /// The out directory holds state of a run with a different configuration.
    #[error(
        "{dir} holds a refusal run with a different configuration ({detail}); use another --out or --restart"
    )]
    StateMismatch { dir: PathBuf, detail: String },
    /// A checkpoint file of a run could not be read back.
    #[error("checkpoint {path}: {message}")]
    BadCheckpoint { path: PathBuf, message: String },
    /// The tokenizer has none of the refusal tokens asked for.
    #[error("no refusal tokens found in the vocabulary for {0:?}")]
    NoRefusalTokens(Vec<String>),
    /// Nothing survived a filter step, so the method cannot go on.
    #[error("{0}")]
    NothingLeft(String),
    /// The threads of side-by-side passes (lanes) could not be started.
    #[error("cannot start the lanes' threads: {0}")]
    Threads(String),
    /// The model runtime failed.
    #[error(transparent)]
    Lm(#[from] overseer_lm::Error),
    /// A tensor operation failed.
    #[error("tensor: {0}")]
    Tensor(#[from] overseer_lm::candle_core::Error),
    /// JSON (de)serialisation failed.
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { path, source }
    }
}

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
