//! Text generation on top of the forward pass: one streaming conversation
//! ([`generate`]) or many prompts at once in a left-padded batch ([`generate_batch`]),
//! with stop tokens (the tokenizer's end-of-generation set), stop strings, a token limit
//! and prefill/decode timings.

use std::ops::ControlFlow;
use std::time::Instant;

use serde::Serialize;

use crate::hooks::Hook;
use crate::model::{ForwardOptions, Logits, Model};
use crate::ngram::NgramBlock;
use crate::sampling::{Sampler, SamplingParams};
use crate::session::Session;
use crate::template::Message;
use crate::tokenizer::DecodeStream;
use crate::{Error, Result};

/// Options of a generation.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateOptions {
    /// Most tokens to generate.
    pub max_tokens: usize,
    /// Fewest tokens to generate: end-of-generation tokens are masked until this many
    /// were produced (stop strings and `max_tokens` still end it).
    pub min_tokens: usize,
    pub sampling: SamplingParams,
    /// Generation ends when the text contains one of these; the stop string itself is
    /// not part of the result.
    pub stop: Vec<String>,
    /// N-grams decoding must not produce (copies of a reference, self-repeats).
    pub block: NgramBlock,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self {
            max_tokens: 256,
            min_tokens: 0,
            sampling: SamplingParams::greedy(),
            stop: Vec::new(),
            block: NgramBlock::default(),
        }
    }
}

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// The model produced an end-of-generation token (EOS, EOT, `<|im_end|>`, ...).
    Eos,
    /// The text reached one of the stop strings.
    StopString,
    /// `max_tokens` were generated.
    MaxTokens,
    /// The context is full.
    ContextFull,
    /// The streaming callback asked to stop.
    Cancelled,
}

/// Wall-clock time of the two phases.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Timings {
    /// Tokens fed in the prefill (all rows, padding excluded).
    pub prefill_tokens: usize,
    pub prefill_secs: f64,
    /// Decode steps (one token per row per step).
    pub decode_tokens: usize,
    pub decode_secs: f64,
}

impl Timings {
    /// Prompt tokens per second.
    pub fn prefill_tok_s(&self) -> f64 {
        rate(self.prefill_tokens, self.prefill_secs)
    }

    /// Generated tokens per second (per row).
    pub fn decode_tok_s(&self) -> f64 {
        rate(self.decode_tokens, self.decode_secs)
    }
}

fn rate(n: usize, secs: f64) -> f64 {
    if secs > 0.0 { n as f64 / secs } else { 0.0 }
}

/// The result of one generation.
#[derive(Debug, Clone, Serialize)]
pub struct Generation {
    /// The generated text, without the end token or stop string.
    pub text: String,
    /// The generated tokens, without the end token.
    pub tokens: Vec<u32>,
    pub stop_reason: StopReason,
    /// Tokens of the prompt fed in this call.
    pub prompt_tokens: usize,
    pub timings: Timings,
}

/// Tracks one row's text: decodes incrementally, finds stop strings, and releases
/// only text that cannot be the start of a stop string.
struct TextState {
    decoder: DecodeStream,
    text: String,
    emitted: usize,
}

impl TextState {
    fn new() -> Self {
        Self {
            decoder: DecodeStream::new(),
            text: String::new(),
            emitted: 0,
        }
    }

    /// Add a token. Returns the newly releasable text and whether a stop string was hit
    /// (then `text` is cut before it).
    fn push(&mut self, model: &Model, id: u32, stop: &[String]) -> Result<(String, bool)> {
        let piece = self.decoder.push(model.tokenizer(), id)?;
        self.text.push_str(&piece);
        // A stop string cannot start in text already released (we hold back any
        // suffix that is a prefix of a stop string), so search from `emitted`.
        let hit = stop
            .iter()
            .filter(|s| !s.is_empty())
            .filter_map(|s| self.text[self.emitted..].find(s.as_str()))
            .min();
        if let Some(at) = hit {
            let end = self.emitted + at;
            self.text.truncate(end);
            return Ok((self.release(end), true));
        }
        let mut hold = 0;
        for s in stop {
            for (k, _) in s.char_indices().skip(1) {
                if k > hold && self.text.ends_with(&s[..k]) {
                    hold = k;
                }
            }
        }
        let end = (self.text.len() - hold).max(self.emitted);
        Ok((self.release(end), false))
    }

    fn release(&mut self, end: usize) -> String {
        let out = self.text[self.emitted..end].to_string();
        self.emitted = end;
        out
    }

    /// Everything not yet released, including an unfinished character.
    fn finish(&mut self) -> String {
        let rest = self.decoder.finish();
        self.text.push_str(&rest);
        let end = self.text.len();
        self.release(end)
    }
}

/// Most candidates refused in one step for continuing a copy or a loop; after that the
/// next candidate is taken as is (a model that only wants to copy is not forced into
/// noise).
const MAX_REFUSALS: usize = 32;

/// Sample the next token, refusing candidates that would continue a copied or
/// repeated run of words (see [`NgramBlock::refuses`]).
fn pick(
    model: &Model,
    sampler: &mut Sampler,
    logits: &mut [f32],
    block: &NgramBlock,
    text: &str,
    may_end: bool,
) -> Result<u32> {
    let tok = model.tokenizer();
    if !may_end {
        for &id in tok.eog_ids() {
            if let Some(l) = logits.get_mut(id as usize) {
                *l = f32::NEG_INFINITY;
            }
        }
    }
    for _ in 0..MAX_REFUSALS {
        let id = sampler.sample(logits);
        if tok.is_eog(id) {
            return Ok(id);
        }
        let piece = String::from_utf8_lossy(tok.token_bytes(id)?);
        if !block.refuses(text, &piece) {
            return Ok(id);
        }
        if let Some(l) = logits.get_mut(id as usize) {
            *l = f32::NEG_INFINITY;
        }
    }
    Ok(sampler.sample(logits))
}

/// Lend the hook to one forward call (shortening the trait object's lifetime).
fn reborrow<'s>(h: &'s mut Option<&mut dyn Hook>) -> Option<&'s mut dyn Hook> {
    match h {
        Some(h) => Some(&mut **h),
        None => None,
    }
}

impl Model {
    /// Render `messages` with the chat template and tokenize them (adding BOS when the
    /// tokenizer wants one and the template did not write it).
    ///
    /// Errors: [`Error::Template`], [`Error::Tokenizer`].
    pub fn encode_chat(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<Vec<u32>> {
        let text = self
            .chat_template()
            .render(messages, add_generation_prompt)?;
        self.encode_prompt(&text)
    }

    /// Tokenize a raw prompt (special tokens written in the text are recognised), adding
    /// BOS when the tokenizer wants one and the text does not already start with it.
    ///
    /// Errors: [`Error::Tokenizer`].
    pub fn encode_prompt(&self, text: &str) -> Result<Vec<u32>> {
        let tok = self.tokenizer();
        let bos_written = tok
            .bos_id()
            .and_then(|b| tok.token_text(b))
            .is_some_and(|b| !b.is_empty() && text.starts_with(b));
        tok.encode(text, tok.add_bos() && !bos_written)
    }
}

/// Generate a continuation of `prompt` in a one-row session, streaming text to `on_text`.
///
/// The session may already hold earlier turns: `prompt` is appended to them. `prompt`
/// must not be empty (its last token's logits start the generation). `on_text` gets
/// decoded text increments that never split a UTF-8 character and never contain (a
/// prefix of) a stop string; returning `ControlFlow::Break` stops the generation.
///
/// Errors: [`Error::InvalidArgument`] (session of more than one row, empty prompt),
/// [`Error::ContextOverflow`] when the prompt does not fit, and the forward pass errors.
pub fn generate(
    model: &Model,
    s: &mut Session,
    prompt: &[u32],
    o: &GenerateOptions,
    mut hooks: Option<&mut dyn Hook>,
    on_text: &mut dyn FnMut(&str) -> ControlFlow<()>,
) -> Result<Generation> {
    if s.batch() != 1 {
        return Err(Error::InvalidArgument(format!(
            "generate needs a one-row session, this one has {} rows",
            s.batch()
        )));
    }
    if prompt.is_empty() {
        return Err(Error::InvalidArgument("empty prompt".into()));
    }
    o.sampling.validate()?;
    let ctx = model.config().context_length;
    if s.is_empty() && s.reserved == 0 {
        s.reserve((prompt.len() + o.max_tokens).min(ctx));
    }
    let mut timings = Timings::default();
    let t0 = Instant::now();
    let logits = model.forward(
        s,
        &[prompt.to_vec()],
        ForwardOptions {
            hooks: reborrow(&mut hooks),
            logits: Logits::Last,
        },
    )?;
    let mut logits = logits.squeeze(0)?.to_vec1::<f32>()?;
    timings.prefill_tokens = prompt.len();
    timings.prefill_secs = t0.elapsed().as_secs_f64();

    let mut sampler = Sampler::new(o.sampling);
    let mut state = TextState::new();
    let mut tokens = Vec::new();
    let t1 = Instant::now();
    let stop_reason = loop {
        if tokens.len() >= o.max_tokens {
            break StopReason::MaxTokens;
        }
        let may_end = tokens.len() >= o.min_tokens;
        let id = pick(
            model,
            &mut sampler,
            &mut logits,
            &o.block,
            &state.text,
            may_end,
        )?;
        if model.tokenizer().is_eog(id) {
            break StopReason::Eos;
        }
        tokens.push(id);
        let (piece, hit) = state.push(model, id, &o.stop)?;
        if !piece.is_empty() && on_text(&piece).is_break() {
            break StopReason::Cancelled;
        }
        if hit {
            break StopReason::StopString;
        }
        if tokens.len() >= o.max_tokens {
            break StopReason::MaxTokens;
        }
        if s.len() >= ctx {
            break StopReason::ContextFull;
        }
        let out = model.forward(
            s,
            &[vec![id]],
            ForwardOptions {
                hooks: reborrow(&mut hooks),
                logits: Logits::Last,
            },
        )?;
        logits = out.squeeze(0)?.to_vec1::<f32>()?;
        timings.decode_tokens += 1;
    };
    timings.decode_secs = t1.elapsed().as_secs_f64();
    if matches!(
        stop_reason,
        StopReason::Eos | StopReason::MaxTokens | StopReason::ContextFull
    ) {
        let rest = state.finish();
        if !rest.is_empty() {
            let _ = on_text(&rest);
        }
    }
    Ok(Generation {
        text: state.text,
        tokens,
        stop_reason,
        prompt_tokens: prompt.len(),
        timings,
    })
}

/// Generate continuations of many prompts at once: one left-padded session, each row
/// finishing on its own (its end token, a stop string, or `max_tokens`). With the same
/// options every row equals what [`generate`] gives for that prompt alone (each row's
/// sampler is seeded with `o.sampling.seed`).
///
/// Errors: [`Error::InvalidArgument`] for an empty prompt, [`Error::ContextOverflow`],
/// and the forward pass errors.
pub fn generate_batch(
    model: &Model,
    prompts: &[Vec<u32>],
    o: &GenerateOptions,
    mut hooks: Option<&mut dyn Hook>,
) -> Result<Vec<Generation>> {
    let n = prompts.len();
    if n == 0 {
        return Ok(Vec::new());
    }
    if let Some(i) = prompts.iter().position(Vec::is_empty) {
        return Err(Error::InvalidArgument(format!("prompt {i} is empty")));
    }
    o.sampling.validate()?;
    let ctx = model.config().context_length;
    let mut s = model.session(n);
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
    s.reserve((longest + o.max_tokens).min(ctx));
    let mut timings = Timings::default();
    let t0 = Instant::now();
    let out = model.forward(
        &mut s,
        prompts,
        ForwardOptions {
            hooks: reborrow(&mut hooks),
            logits: Logits::Last,
        },
    )?;
    let mut logits = out.to_vec2::<f32>()?;
    timings.prefill_tokens = prompts.iter().map(Vec::len).sum();
    timings.prefill_secs = t0.elapsed().as_secs_f64();

    let mut samplers: Vec<Sampler> = (0..n).map(|_| Sampler::new(o.sampling)).collect();
    let mut states: Vec<TextState> = (0..n).map(|_| TextState::new()).collect();
    let mut tokens: Vec<Vec<u32>> = vec![Vec::new(); n];
    let mut done: Vec<Option<StopReason>> = vec![None; n];
    let filler = model.tokenizer().eos_id().unwrap_or(0);
    let t1 = Instant::now();
    loop {
        let mut next = vec![filler; n];
        for r in 0..n {
            if done[r].is_some() {
                continue;
            }
            if tokens[r].len() >= o.max_tokens {
                done[r] = Some(StopReason::MaxTokens);
                continue;
            }
            let id = pick(
                model,
                &mut samplers[r],
                &mut logits[r],
                &o.block,
                &states[r].text,
                tokens[r].len() >= o.min_tokens,
            )?;
            if model.tokenizer().is_eog(id) {
                done[r] = Some(StopReason::Eos);
                continue;
            }
            tokens[r].push(id);
            next[r] = id;
            let (_, hit) = states[r].push(model, id, &o.stop)?;
            if hit {
                done[r] = Some(StopReason::StopString);
            } else if tokens[r].len() >= o.max_tokens {
                done[r] = Some(StopReason::MaxTokens);
            }
        }
        if done.iter().all(Option::is_some) {
            break;
        }
        if s.len() >= ctx {
            for d in &mut done {
                d.get_or_insert(StopReason::ContextFull);
            }
            break;
        }
        let rows: Vec<Vec<u32>> = next.into_iter().map(|t| vec![t]).collect();
        let out = model.forward(
            &mut s,
            &rows,
            ForwardOptions {
                hooks: reborrow(&mut hooks),
                logits: Logits::Last,
            },
        )?;
        logits = out.to_vec2::<f32>()?;
        timings.decode_tokens += 1;
    }
    timings.decode_secs = t1.elapsed().as_secs_f64();
    Ok(states
        .into_iter()
        .zip(tokens)
        .zip(done)
        .zip(prompts)
        .map(|(((mut st, toks), reason), p)| {
            let reason = reason.expect("every row is done when the loop ends");
            if reason != StopReason::StopString {
                st.finish();
            }
            Generation {
                text: st.text,
                tokens: toks,
                stop_reason: reason,
                prompt_tokens: p.len(),
                timings,
            }
        })
        .collect())
}
