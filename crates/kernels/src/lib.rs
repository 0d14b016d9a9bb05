//! `overseer-kernels`: quantized GGML block formats and SIMD matmul kernels for CPU
//! inference.
//!
//! candle's CPU backend has SIMD dot products for only some formats and runs Q4_1 and
//! Q5_0 (the bulk of common small GGUF chat models) in scalar code; this crate gives
//! every format llama.cpp's small models use a runtime-dispatched AVX2 kernel (with a
//! portable scalar fallback; no global `target-cpu` flags) and a multi-threaded matmul
//! that quantizes activations to 8 bits once per call, as llama.cpp does (many-row
//! calls on AVX-512 VNNI CPUs run `vpdpbusd` kernels over sixteen activation rows at
//! once, `vnni`); plus the
//! attention over the model's f16 KV cache, which candle cannot read without converting;
//! AMX bf16 tiles for many-row matmuls; vectorised reductions over logit rows.

mod amx;
mod attention;
mod dtype;
mod error;
mod logits;
mod matrix;
mod pool;
mod quant;

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod vnni;

#[cfg(test)]
mod tests;

pub use amx::Bf16Matrix;
pub use attention::{Attention, KvView};
pub use dtype::GgmlDType;
pub use error::{Error, Result};
pub use logits::{exp_approx, kl_divergence, log_sum_exp, max_lanes};
pub use matrix::{Bytes, Level, QMatrix};
