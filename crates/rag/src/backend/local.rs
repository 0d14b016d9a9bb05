//! The embedded runtime as a backend: a GGUF chat model loaded by `overseer-lm`,
//! prompted through its own chat template, one KV-cache session per call (so one
//! loaded model serves concurrent callers). Every front end (CLI, server) answers
//! through this one type, so control-token escaping and copy blocking hold everywhere.
//!
//! The answer prompt opens with a fixed system turn and worked example: the KV cache
//! of everything before the last message is kept (a few entries, most recent first)
//! and forked for the next call whose prompt starts with the same tokens, so each
//! question pays only for its own evidence and question.

use std::ops::ControlFlow;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use overseer_lm::{
    GenerateOptions, LoadOptions, Message, Model, NgramBlock, SamplingParams, Session,
};

use super::{Backend, ChatMessage, ChatRole, Completion, GenParams};
use crate::Result;

/// The largest context used even if the model supports more: prompt processing on a
/// CPU grows with it, and answers need far less.
const MAX_WINDOW: usize = 4096;

/// Cached prompt prefixes kept at most.
const PREFIX_CACHE: usize = 4;

/// A cached prompt prefix: its tokens and a one-row session holding exactly them.
struct Prefix {
    tokens: Vec<u32>,
    session: Session,
}

/// A local GGUF chat model.
pub struct LocalBackend {
    model: Arc<Model>,
    name: String,
    prefixes: Mutex<Vec<Prefix>>,
}

impl std::fmt::Debug for LocalBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalBackend")
            .field("name", &self.name)
            .finish()
    }
}

/// The runtime's messages. Chat markup in retrieved text or questions cannot act as
/// control tokens: the chat template defuses it in every message
/// ([`overseer_lm::defuse`], applied by `ChatTemplate::render`).
fn to_messages(messages: &[ChatMessage]) -> Vec<Message> {
    messages
        .iter()
        .map(|m| {
            let c = m.content.clone();
            match m.role {
                ChatRole::System => Message::system(c),
                ChatRole::User => Message::user(c),
                ChatRole::Assistant => Message::assistant(c),
            }
        })
        .collect()
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
        Self::shared(Arc::new(model))
    }

    /// Wrap a model shared with other users (the server's chat endpoint).
    pub fn shared(model: Arc<Model>) -> Self {
        let name = model
            .info()
            .name
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "local".to_string());
        Self {
            model,
            name,
            prefixes: Mutex::new(Vec::new()),
        }
    }

    pub fn model(&self) -> &Model {
        &self.model
    }

    /// The prompt tokens for `messages`, as [`Backend::chat`] feeds them: chat markup
    /// inside a message is text, never a control token.
    pub fn encode(&self, messages: &[ChatMessage]) -> Result<Vec<u32>> {
        Ok(self.model.encode_chat(&to_messages(messages), true)?)
    }

    /// A session holding the longest cached prefix of `prompt` (forked, so the cache
    /// stays intact), or a fresh one; and how many prompt tokens it already holds.
    fn session_for(&self, prompt: &[u32], reserve: usize) -> (Session, usize) {
        if let Ok(cache) = self.prefixes.lock() {
            let hit = cache
                .iter()
                .filter(|p| p.tokens.len() < prompt.len() && prompt.starts_with(&p.tokens))
                .max_by_key(|p| p.tokens.len());
            if let Some(p) = hit
                && let Ok(s) = p.session.fork(1, reserve)
            {
                return (s, p.tokens.len());
            }
        }
        (self.model.session(1), 0)
    }

    /// Keep the KV cache of `prefix` (a prefix of what `session` was fed) for later
    /// calls, unless it is already kept.
    fn remember(&self, prefix: &[u32], mut session: Session) {
        if prefix.is_empty() || session.len() < prefix.len() {
            return;
        }
        let Ok(mut cache) = self.prefixes.lock() else {
            return;
        };
        if let Some(i) = cache.iter().position(|p| p.tokens == prefix) {
            let p = cache.remove(i);
            cache.insert(0, p);
            return;
        }
        session.truncate(prefix.len());
        if session.len() != prefix.len() {
            return;
        }
        cache.insert(
            0,
            Prefix {
                tokens: prefix.to_vec(),
                session,
            },
        );
        cache.truncate(PREFIX_CACHE);
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
        let msgs = to_messages(messages);
        let prompt = self.model.encode_chat(&msgs, true)?;
        // Everything before the last message: the part a later call may share.
        let prefix = match msgs.len() {
            0 | 1 => Vec::new(),
            n => self
                .model
                .encode_chat(&msgs[..n - 1], false)
                .ok()
                .filter(|p| prompt.starts_with(p))
                .unwrap_or_default(),
        };
        let block = NgramBlock::copies(params.copy_ngram, &params.avoid_copying);
        let opts = GenerateOptions {
            max_tokens: params.max_tokens,
            min_tokens: params.min_tokens,
            sampling: SamplingParams {
                temperature: params.temperature,
                seed: params.seed,
                ..SamplingParams::greedy()
            },
            stop: params.stop.clone(),
            block: block.with_repeats(params.repeat_ngram),
        };
        let ctx = self.model.config().context_length;
        let reserve = (prompt.len() + params.max_tokens).min(ctx);
        let (mut session, cached) = self.session_for(&prompt, reserve);
        let mut first = None;
        let mut cancelled = false;
        let g = overseer_lm::generate(
            &self.model,
            &mut session,
            &prompt[cached..],
            &opts,
            None,
            &mut |t| {
                if first.is_none() {
                    first = Some(start.elapsed());
                }
                let flow = on_text(t);
                cancelled |= flow.is_break();
                flow
            },
        )?;
        if prefix.len() > cached {
            self.remember(&prefix, session);
        } else if !prefix.is_empty() {
            // Refresh its place in the cache.
            if let Ok(mut cache) = self.prefixes.lock()
                && let Some(i) = cache.iter().position(|p| p.tokens == prefix)
            {
                let p = cache.remove(i);
                cache.insert(0, p);
            }
        }
        Ok(Completion {
            text: g.text,
            prompt_tokens: Some(g.prompt_tokens + cached),
            completion_tokens: g.tokens.len(),
            first_token: first,
            total: start.elapsed(),
            cancelled,
        })
    }
}
