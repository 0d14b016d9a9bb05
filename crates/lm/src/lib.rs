//! `overseer-lm`: the model runtime shared by the literature assistant and the lab.
//!
//! Loads GGUF chat models (architectures `llama` and `qwen2`), tokenizes with the
//! tokenizer stored in the GGUF metadata, renders the model's own chat template,
//! runs an explicit forward pass on candle with a KV cache owned by a `Session`
//! (so one loaded `Model` serves many sessions), and exposes [`Hook`] points on
//! the residual stream to capture and edit activations.

mod error;
mod hooks;
// Tokenizer and chat template (owned by the tokenizer engineer).
mod template;
mod tokenizer;

pub use error::{Error, Result};
pub use hooks::{
    Ablation, ActivationAddition, Hook, HookContext, HookList, HookPoint, MeanCapture, Positions,
    RawCapture,
};

/// Re-exported so dependents use the same candle as the runtime.
pub use candle_core;
