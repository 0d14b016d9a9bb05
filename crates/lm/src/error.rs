//! The one error type of the runtime; every variant names what went wrong and,
//! for file problems, which file.

use std::path::PathBuf;

/// Errors of the model runtime.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: cannot read file: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a GGUF file (bad magic {magic:?})")]
    BadMagic { path: PathBuf, magic: [u8; 4] },
    #[error("{path}: truncated or corrupt GGUF: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("{path}: unsupported architecture '{arch}' (supported: llama, qwen2)")]
    UnsupportedArchitecture { path: PathBuf, arch: String },
    #[error("{path}: missing tensor '{name}'")]
    MissingTensor { path: PathBuf, name: String },
    #[error("{path}: missing or invalid metadata '{key}': {reason}")]
    Metadata {
        path: PathBuf,
        key: String,
        reason: String,
    },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("chat template: {0}")]
    Template(String),
    #[error("prompt of {tokens} tokens does not fit the context of {context} tokens")]
    ContextOverflow { tokens: usize, context: usize },
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("hook: {0}")]
    Hook(String),
    #[error("tensor backend: {0}")]
    Candle(#[from] candle_core::Error),
}

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
