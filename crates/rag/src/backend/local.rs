//! The embedded runtime as a backend: a GGUF chat model loaded by `overseer-lm`,
//! prompted through its own chat template, one fresh KV-cache session per call (so
//! one loaded model serves concurrent callers).

use std::ops::ControlFlow;
use std::path::Path;
use std::time::Instant;

use overseer_lm::{GenerateOptions, LoadOptions, Message, Model, SamplingParams};

use super::{Backend, ChatMessage, ChatRole, Completion, GenParams};
use crate::Result;

/// The largest context used even if the model supports more: prompt processing on a
/// CPU grows with it, and answers need far less.
const MAX_WINDOW: usize = 4096;

/// A local GGUF chat model.
pub struct LocalBackend {
    model: Model,
    name: String,
}

impl std::fmt::Debug for LocalBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalBackend")
            .field("name", &self.name)
            .finish()
    }
}

/// Chat markup in retrieved text or questions must not act as control tokens:
/// `<|im_end|>` inside a passage would otherwise end the turn.
fn defuse(text: &str) -> String {
    text.replace("<|", "<\u{200b}|").replace("|>", "|\u{200b}>")
}

impl LocalBackend {
    /// Load the model at `path` with `threads` kernel threads.
    pub fn load(path: &Path, threads: usize) -> Result<Self> {
        let opts = LoadOptions {
            threads: Some(threads.max(1)),
            ..LoadOptions::default()
        };
        let model = Model::load(path, &opts)?;
        Ok(Self::new(model))
    }

    /// Wrap an already loaded model.
    pub fn new(model: Model) -> Self {
        let name = model
            .info()
            .name
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "local".to_string());
        Self { model, name }
    }

    pub fn model(&self) -> &Model {
        &self.model
    }
}

impl Backend for LocalBackend {
    fn describe(&self) -> String {
        format!("local:{}", self.name)
    }

    fn context_window(&self) -> usize {
        self.model.config().context_length.min(MAX_WINDOW)
    }

    fn count_tokens(&self, text: &str) -> usize {
        // The tokenizer only fails on pathological input; estimate then.
        self.model
            .tokenizer()
            .encode(text, false)
            .map_or_else(|_| text.len().div_ceil(3), |t| t.len())
    }

    fn chat(
        &self,
        messages: &[ChatMessage],
        params: &GenParams,
        on_text: &mut dyn FnMut(&str) -> ControlFlow<()>,
    ) -> Result<Completion> {
        let start = Instant::now();
        let msgs: Vec<Message> = messages
            .iter()
            .map(|m| {
                let c = defuse(&m.content);
                match m.role {
                    ChatRole::System => Message::system(c),
                    ChatRole::User => Message::user(c),
                    ChatRole::Assistant => Message::assistant(c),
                }
            })
            .collect();
        let prompt = self.model.encode_chat(&msgs, true)?;
        let opts = GenerateOptions {
            max_tokens: params.max_tokens,
            sampling: SamplingParams {
                temperature: params.temperature,
                seed: params.seed,
                ..SamplingParams::greedy()
            },
            stop: params.stop.clone(),
        };
        let mut session = self.model.session(1);
        let mut first = None;
        let mut cancelled = false;
        let g = overseer_lm::generate(&self.model, &mut session, &prompt, &opts, None, &mut |t| {
            if first.is_none() {
                first = Some(start.elapsed());
            }
            let flow = on_text(t);
            cancelled |= flow.is_break();
            flow
        })?;
        Ok(Completion {
            text: g.text,
            prompt_tokens: Some(g.prompt_tokens),
            completion_tokens: g.tokens.len(),
            first_token: first,
            total: start.elapsed(),
            cancelled,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_markup_is_defused() {
        let d = defuse("a <|im_end|> b");
        assert!(!d.contains("<|") && !d.contains("|>"), "{d}");
    }
}
