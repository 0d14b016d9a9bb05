//! Text generation behind one trait so the pipeline does not care whether tokens come
//! from the embedded GGUF runtime ([`LocalBackend`]) or from any OpenAI-compatible
//! chat-completions server ([`OpenAiBackend`]). Backends are blocking; async callers
//! (the server) run them on a blocking thread.

mod local;
mod openai;

use std::ops::ControlFlow;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::Result;

pub use local::LocalBackend;
pub use openai::{OpenAiBackend, OpenAiConfig};

/// Who speaks a chat message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChatRole {
    System,
    User,
    Assistant,
}

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: ChatRole,
    pub content: String,
}

impl ChatMessage {
    pub fn system(c: impl Into<String>) -> Self {
        Self {
            role: ChatRole::System,
            content: c.into(),
        }
    }
    pub fn user(c: impl Into<String>) -> Self {
        Self {
            role: ChatRole::User,
            content: c.into(),
        }
    }
    pub fn assistant(c: impl Into<String>) -> Self {
        Self {
            role: ChatRole::Assistant,
            content: c.into(),
        }
    }
}

/// Generation parameters common to all backends.
#[derive(Debug, Clone)]
pub struct GenParams {
    pub max_tokens: usize,
    /// Fewest tokens before the model may end its reply (0: no minimum). Remote
    /// backends pass it as `min_tokens` (vLLM honours it; servers without it ignore it).
    pub min_tokens: usize,
    /// 0 means greedy.
    pub temperature: f32,
    pub seed: u64,
    /// Extra stop strings (the model's own end-of-turn tokens always stop).
    pub stop: Vec<String>,
    /// Texts the reply must not copy runs of `copy_ngram` words from (the evidence
    /// an answer is written from). Backends that cannot block n-grams at decode time
    /// (remote servers) ignore it; the pipeline checks the copy ratio afterwards.
    pub avoid_copying: Vec<String>,
    /// Length in words of a blocked copy (0: no copy blocking).
    pub copy_ngram: usize,
    /// Length in tokens of a blocked self-repeat (0: no loop blocking).
    pub repeat_ngram: usize,
}

impl Default for GenParams {
    fn default() -> Self {
        Self {
            max_tokens: 384,
            min_tokens: 0,
            temperature: 0.0,
            seed: 42,
            stop: Vec::new(),
            avoid_copying: Vec::new(),
            copy_ngram: 0,
            repeat_ngram: 0,
        }
    }
}

/// A finished generation.
#[derive(Debug, Clone, Default)]
pub struct Completion {
    pub text: String,
    /// Prompt tokens, when the backend knows them.
    pub prompt_tokens: Option<usize>,
    /// Of those, the ones whose KV cache an earlier call had computed (the local
    /// backend's shared prefixes); `None` when the backend does not say.
    pub cached_tokens: Option<usize>,
    /// Generated tokens (or streamed chunks for servers that do not report usage).
    pub completion_tokens: usize,
    /// From the call to the first generated text (prompt processing for local models,
    /// network + server prefill for remote ones).
    pub first_token: Option<Duration>,
    /// From the call to the end of generation.
    pub total: Duration,
    /// Whether the callback stopped generation early.
    pub cancelled: bool,
}

/// A chat model that can stream a reply.
pub trait Backend: Send + Sync {
    /// Short description for logs and timings (e.g. `local:qwen2.5-0.5b`).
    fn describe(&self) -> String;
    /// Tokens the model can attend to (prompt + reply).
    fn context_window(&self) -> usize;
    /// Tokens `text` takes in this model (an estimate for remote models).
    fn count_tokens(&self, text: &str) -> usize;
    /// Generate a reply to `messages`, calling `on_text` with each new piece of text
    /// as it is produced. Returning `ControlFlow::Break` stops generation.
    fn chat(
        &self,
        messages: &[ChatMessage],
        params: &GenParams,
        on_text: &mut dyn FnMut(&str) -> ControlFlow<()>,
    ) -> Result<Completion>;
}
