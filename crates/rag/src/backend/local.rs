//! The embedded runtime as a backend: a GGUF chat model loaded by `overseer-lm`,
//! prompted through its own chat template, one KV-cache session per call (so one
//! loaded model serves concurrent callers). Every front end (CLI, server) answers
//! through this one type, so control-token escaping and copy blocking hold everywhere.
//!
//! Calls share long prompt prefixes: every answer opens with the same system turn, and
//! the follow-up suggestions continue the answer's own conversation. So the KV cache
//! of each call (prompt and reply) is kept, a few entries, most recent first, and the
//! next call forks the entry sharing the longest token prefix with its prompt and
//! feeds only the rest: a question pays for its evidence and question, its follow-ups
//! for one short instruction.

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

/// Cached sessions kept at most.
const PREFIX_CACHE: usize = 4;

/// Shared prefixes shorter than this are fed again rather than forked.
const MIN_SHARED: usize = 16;

/// A cached session: the tokens it was fed and a one-row session holding exactly them.
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
    /// stays intact, and cut to the shared part), or a fresh one; and how many prompt
    /// tokens it already holds. At least the prompt's last token is always left to
    /// feed, so the first sampled token has fresh logits.
    fn session_for(&self, prompt: &[u32], reserve: usize) -> (Session, usize) {
        if let Ok(cache) = self.prefixes.lock() {
            let hit = cache
                .iter()
                .map(|p| {
                    (
                        p,
                        shared_prefix(&p.tokens, prompt).min(prompt.len().saturating_sub(1)),
                    )
                })
                .filter(|&(_, n)| n >= MIN_SHARED)
                .max_by_key(|&(_, n)| n);
            if let Some((p, n)) = hit
                && let Ok(mut s) = p.session.fork(1, reserve)
            {
                s.truncate(n);
                if s.len() == n {
                    return (s, n);
                }
            }
        }
        (self.model.session(1), 0)
    }

    /// Keep `session` (fed exactly `tokens`) for later calls, most recent first; an
    /// entry it extends is replaced.
    fn remember(&self, tokens: Vec<u32>, session: Session) {
        if tokens.len() < MIN_SHARED || session.len() != tokens.len() {
            return;
        }
        let Ok(mut cache) = self.prefixes.lock() else {
            return;
        };
        cache.retain(|p| !tokens.starts_with(&p.tokens));
        cache.insert(0, Prefix { tokens, session });
        cache.truncate(PREFIX_CACHE);
    }
}

/// How many leading tokens `a` and `b` share.
fn shared_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
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
        // What the session was fed: the prompt, then the reply (its last token may not
        // have been fed yet).
        let mut fed = prompt;
        fed.extend_from_slice(&g.tokens);
        let n = fed.len().min(session.len());
        fed.truncate(n);
        session.truncate(n);
        self.remember(fed, session);
        Ok(Completion {
            text: g.text,
            prompt_tokens: Some(g.prompt_tokens + cached),
            cached_tokens: Some(cached),
            completion_tokens: g.tokens.len(),
            first_token: first,
            total: start.elapsed(),
            cancelled,
        })
    }
}
