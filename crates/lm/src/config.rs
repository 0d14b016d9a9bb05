//! Model hyper-parameters read from GGUF metadata (`{arch}.*` keys), so the forward
//! pass never guesses a shape.

use std::path::Path;

use candle_core::quantized::gguf_file::{Content, Value};
use serde::Serialize;

use crate::{Error, Result};

/// Supported model families. Both are the llama decoder; Qwen2 adds q/k/v biases and
/// uses the NeoX (half-split) RoPE layout, llama the interleaved ("normal") one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Architecture {
    Llama,
    Qwen2,
}

impl Architecture {
    /// Parse `general.architecture`; `None` for an unsupported family.
    pub fn from_gguf_name(name: &str) -> Option<Self> {
        match name {
            "llama" => Some(Self::Llama),
            "qwen2" => Some(Self::Qwen2),
            _ => None,
        }
    }

    /// The name used in GGUF metadata keys (`llama`, `qwen2`).
    pub fn gguf_name(self) -> &'static str {
        match self {
            Self::Llama => "llama",
            Self::Qwen2 => "qwen2",
        }
    }

    /// Whether RoPE rotates the two halves of each head (NeoX layout) rather than
    /// adjacent pairs. llama.cpp: `LLAMA_ROPE_TYPE_NEOX` for qwen2, `NORM` for llama
    /// (the GGUF converter permutes llama's Q/K rows to match the adjacent-pair layout).
    pub fn rope_neox(self) -> bool {
        matches!(self, Self::Qwen2)
    }

    /// Whether the attention projections carry biases.
    pub fn qkv_bias(self) -> bool {
        matches!(self, Self::Qwen2)
    }
}

impl std::fmt::Display for Architecture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.gguf_name())
    }
}

/// Hyper-parameters of a loaded model.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelConfig {
    pub architecture: Architecture,
    /// Decoder layers.
    pub n_layer: usize,
    /// Residual stream width.
    pub hidden: usize,
    /// Query heads.
    pub n_head: usize,
    /// Key/value heads (grouped-query attention: `n_head` is a multiple of it).
    pub n_kv_head: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// MLP inner width.
    pub ffn: usize,
    /// Vocabulary size (rows of the embedding matrix).
    pub vocab: usize,
    /// Trained context length: prompts longer than this are refused.
    pub context_length: usize,
    pub rope_theta: f64,
    pub rms_eps: f64,
    /// The LM head reuses the token embedding (no `output.weight` tensor).
    pub tied_embeddings: bool,
}

/// Integer metadata of any integer type.
pub(crate) fn meta_usize(c: &Content, key: &str) -> Option<usize> {
    match c.metadata.get(key)? {
        Value::U8(v) => Some(*v as usize),
        Value::U16(v) => Some(*v as usize),
        Value::U32(v) => Some(*v as usize),
        Value::U64(v) => usize::try_from(*v).ok(),
        Value::I8(v) => usize::try_from(*v).ok(),
        Value::I16(v) => usize::try_from(*v).ok(),
        Value::I32(v) => usize::try_from(*v).ok(),
        Value::I64(v) => usize::try_from(*v).ok(),
        _ => None,
    }
}

/// Float metadata (f32, f64, or an integer).
pub(crate) fn meta_f64(c: &Content, key: &str) -> Option<f64> {
    match c.metadata.get(key)? {
        Value::F32(v) => Some(f64::from(*v)),
        Value::F64(v) => Some(*v),
        _ => meta_usize(c, key).map(|v| v as f64),
    }
}

/// String metadata.
pub(crate) fn meta_str<'a>(c: &'a Content, key: &str) -> Option<&'a str> {
    match c.metadata.get(key)? {
        Value::String(s) => Some(s.as_str()),
        _ => None,
    }
}

impl ModelConfig {
    /// Read the configuration of `arch` from the GGUF header.
    ///
    /// Errors: [`Error::Metadata`] when a required key is missing or inconsistent.
    pub(crate) fn from_gguf(path: &Path, c: &Content, architecture: Architecture) -> Result<Self> {
        let a = architecture.gguf_name();
        let meta_err = |key: String, reason: &str| Error::Metadata {
            path: path.to_path_buf(),
            key,
            reason: reason.to_string(),
        };
        let req = |suffix: &str| -> Result<usize> {
            let key = format!("{a}.{suffix}");
            match meta_usize(c, &key) {
                Some(v) if v > 0 => Ok(v),
                Some(_) => Err(meta_err(key, "must be positive")),
                None => Err(meta_err(key, "missing or not an integer")),
            }
        };
        let n_layer = req("block_count")?;
        let hidden = req("embedding_length")?;
        let ffn = req("feed_forward_length")?;
        let n_head = req("attention.head_count")?;
        let n_kv_head = meta_usize(c, &format!("{a}.attention.head_count_kv")).unwrap_or(n_head);
        if n_kv_head == 0 || n_head % n_kv_head != 0 {
            return Err(meta_err(
                format!("{a}.attention.head_count_kv"),
                &format!("{n_kv_head} does not divide the {n_head} query heads"),
            ));
        }
        let head_dim = match meta_usize(c, &format!("{a}.attention.key_length")) {
            Some(d) => d,
            None if hidden % n_head == 0 => hidden / n_head,
            None => {
                return Err(meta_err(
                    format!("{a}.attention.head_count"),
                    &format!("{n_head} heads do not divide the hidden size {hidden}"),
                ));
            }
        };
        if head_dim == 0 || head_dim % 2 != 0 {
            return Err(meta_err(
                format!("{a}.attention.key_length"),
                "head size must be even and positive",
            ));
        }
        let context_length = req("context_length")?;
        // Floats are used as they are by every layer: a NaN or non-positive value gives
        // NaN activations and empty or garbage output, never an error.
        let positive = |suffix: &str, default: f64| -> Result<f64> {
            let key = format!("{a}.{suffix}");
            match c.metadata.get(&key) {
                None => Ok(default),
                Some(_) => match meta_f64(c, &key) {
                    Some(v) if v.is_finite() && v > 0.0 => Ok(v),
                    Some(v) => Err(meta_err(
                        key,
                        &format!("{v} is not a positive finite number"),
                    )),
                    None => Err(meta_err(key, "not a number")),
                },
            }
        };
        let rope_theta = positive("rope.freq_base", 10_000.0)?;
        let rms_eps = positive(
            "attention.layer_norm_rms_epsilon",
            match architecture {
                Architecture::Llama => 1e-5,
                Architecture::Qwen2 => 1e-6,
            },
        )?;
        if rms_eps >= 1.0 {
            return Err(meta_err(
                format!("{a}.attention.layer_norm_rms_epsilon"),
                &format!("{rms_eps} is not below 1"),
            ));
        }
        let vocab = match c.tensor_infos.get("token_embd.weight") {
            Some(t) => match t.shape.dims() {
                [rows, _] => *rows,
                dims => {
                    return Err(Error::Corrupt {
                        path: path.to_path_buf(),
                        reason: format!("token_embd.weight has shape {dims:?}, expected 2-D"),
                    });
                }
            },
            None => {
                return Err(Error::MissingTensor {
                    path: path.to_path_buf(),
                    name: "token_embd.weight".into(),
                });
            }
        };
        // Optional keys the forward pass does not read must still agree with it.
        let vocab_key = format!("{a}.vocab_size");
        if vocab == 0 {
            return Err(Error::Corrupt {
                path: path.to_path_buf(),
                reason: "token_embd.weight has no rows (an empty vocabulary)".into(),
            });
        }
        if c.metadata.contains_key(&vocab_key) && meta_usize(c, &vocab_key) != Some(vocab) {
            return Err(meta_err(
                vocab_key,
                &format!("does not match the {vocab} rows of token_embd.weight"),
            ));
        }
        let rope_key = format!("{a}.rope.dimension_count");
        if c.metadata.contains_key(&rope_key) && meta_usize(c, &rope_key) != Some(head_dim) {
            return Err(meta_err(
                rope_key,
                &format!("must equal the head size {head_dim} (partial RoPE is not supported)"),
            ));
        }
        // Shapes the loader multiplies out must fit a usize.
        for (key, x, y) in [
            ("attention.head_count", n_head, head_dim),
            ("attention.head_count_kv", n_kv_head, head_dim),
            ("embedding_length", vocab, hidden),
            ("feed_forward_length", ffn, hidden),
            (
                "context_length",
                context_length,
                n_kv_head.saturating_mul(head_dim),
            ),
        ] {
            if x.checked_mul(y).is_none() {
                return Err(meta_err(format!("{a}.{key}"), "too large"));
            }
        }
        let tied_embeddings = !c.tensor_infos.contains_key("output.weight");
        Ok(Self {
            architecture,
            n_layer,
            hidden,
            n_head,
            n_kv_head,
            head_dim,
            ffn,
            vocab,
            context_length,
            rope_theta,
            rms_eps,
            tied_embeddings,
        })
    }
}
