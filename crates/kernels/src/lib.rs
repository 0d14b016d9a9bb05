//! `overseer-kernels`: Quantized block formats and SIMD matmul kernels for CPU inference.

mod error;

pub use error::{Error, Result};
