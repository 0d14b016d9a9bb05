//! The error type of this crate.

/// Errors of `overseer-kernels`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The number of columns is not a multiple of the format's block size.
    #[error("{dtype:?}: {cols} columns is not a multiple of the block size {block}")]
    BadColumns {
        dtype: crate::GgmlDType,
        cols: usize,
        block: usize,
    },
    /// The byte buffer does not hold exactly `rows x cols` elements of the format.
    #[error("{dtype:?} {rows}x{cols}: expected {expected} bytes, got {got}")]
    BadLength {
        dtype: crate::GgmlDType,
        rows: usize,
        cols: usize,
        expected: usize,
        got: usize,
    },
    /// A matmul argument has the wrong length.
    #[error("matmul shape mismatch: {0}")]
    Shape(String),
    /// The GGML type id is not one of the supported block formats.
    #[error("unsupported GGML type id {0}")]
    UnsupportedType(u32),
}

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
