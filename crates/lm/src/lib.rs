//! `overseer-lm`: the model runtime shared by the literature assistant and the lab.
//!
//! Loads GGUF chat models (architectures `llama` and `qwen2`), tokenizes with the
//! tokenizer stored in the GGUF metadata, renders the model's own chat template,
//! runs an explicit forward pass on candle with a KV cache owned by a `Session`
//! (so one loaded `Model` serves many sessions), and exposes [`Hook`] points on
//! the residual stream to capture and edit activations.

mod config;
mod error;
mod generate;
mod gguf;
mod hooks;
mod linear;
mod model;
mod ngram;
mod sampling;
mod session;
// Tokenizer and chat template (owned by the tokenizer engineer).
mod template;
mod tokenizer;

pub use config::{Architecture, ModelConfig};
pub use error::{Error, Result};
pub use generate::{GenerateOptions, Generation, StopReason, Timings, generate, generate_batch};
pub use gguf::{GgufInfo, TensorInfo, TypeCount};
pub use hooks::{
    Ablation, ActivationAddition, Hook, HookContext, HookList, HookPoint, MeanCapture, Positions,
    RawCapture,
};
pub use linear::{QLinear, amx_available};
pub use model::{
    ForwardOptions, LoadOptions, Logits, Model, PREFILL_CHUNK, Resume, set_cuda_fast_mmq,
    set_kernel_attention_default,
};
pub use ngram::NgramBlock;
pub use sampling::{Sampler, SamplingParams};
pub use session::Session;
pub use template::{CHATML_TEMPLATE, ChatTemplate, Message, Role, defuse};
pub use tokenizer::{DecodeStream, TokenType, Tokenizer};

/// Re-exported so dependents use the same candle as the runtime.
pub use candle_core;
