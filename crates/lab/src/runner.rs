//! Batched model passes the lab needs, on the runtime's `Model::forward` and hooks:
//! last-position logits, refusal scores, f64 mean capture at the post-instruction
//! positions, greedy generation that also returns the first step's refusal score, and
//! teacher-forced cross-entropy.
//!
//! Prompts are sorted by length before batching (less padding) and results are
//! returned in the caller's order. The tokens every prompt of a call starts with (the
//! chat template's system turn and user header: about half of a Qwen2.5 prompt) are
//! computed once per call, under the call's hook, and forked into every batch
//! ([`Session::fork`]); by causality this gives the same activations as feeding each
//! prompt whole. Greedy generation is written here rather than using
//! the runtime's `generate_batch` because the lab needs the first step's logits of
//! every row (the refusal score of the very completion it judges).

use overseer_lm::candle_core::{D, Tensor};
use overseer_lm::{
    ForwardOptions, Hook, HookContext, HookPoint, Logits, MeanCapture, Message, Model, Resume,
    Session,
};

use crate::lanes::{balanced_runs, in_lanes, lane_batch};
use crate::metric::{refusal_score, token_cross_entropy};
use crate::{Error, Result};

/// Reborrow an optional hook for one forward call.
pub fn reborrow<'s>(h: &'s mut Option<&mut dyn Hook>) -> Option<&'s mut dyn Hook> {
    match h {
        Some(h) => Some(&mut **h),
        None => None,
    }
}

/// Borrow an optional boxed hook.
pub fn boxed(h: &mut Option<Box<dyn Hook>>) -> Option<&mut dyn Hook> {
    match h {
        Some(h) => Some(h.as_mut()),
        None => None,
    }
}

/// Something that reports progress of long loops (the CLI draws bars with it).
pub trait Progress: Sync {
    /// A new stage with `total` units of work.
    fn start(&self, stage: &str, total: u64);
    /// `n` more units done.
    fn advance(&self, n: u64);
    /// Stage finished.
    fn finish(&self) {}
}

/// Progress that goes nowhere.
#[derive(Debug, Default)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn start(&self, _stage: &str, _total: u64) {}
    fn advance(&self, _n: u64) {}
}

/// Shortest shared prefix worth computing once instead of in every row.
const MIN_SHARED: usize = 4;

/// Positions whose full-vocabulary logits [`Runner::cross_entropy`] holds at once
/// (256 × 151,936 f32 for Qwen2.5: 156 MB).
const HEAD_POSITIONS: usize = 256;

/// How many leading tokens all `prompts` share, leaving every prompt at least one token
/// of its own; 0 for fewer than two prompts or a prefix too short to be worth a fork.
fn shared_prefix(prompts: &[Vec<u32>]) -> usize {
    let [first, rest @ ..] = prompts else {
        return 0;
    };
    if rest.is_empty() {
        return 0;
    }
    let mut n = first.len().saturating_sub(1);
    for p in rest {
        n = n.min(p.len().saturating_sub(1));
        n = first
            .iter()
            .zip(p)
            .take(n)
            .take_while(|(a, b)| a == b)
            .count();
    }
    if n >= MIN_SHARED { n } else { 0 }
}

/// The shared prefix of a call, computed once, that every batch starts from.
struct Prefix {
    len: usize,
    session: Option<Session>,
}

impl Prefix {
    /// A session for a batch of `rows` rows holding the prefix, with room for
    /// `reserve` positions per row in all.
    fn session(&self, model: &Model, rows: usize, reserve: usize) -> Result<Session> {
        match &self.session {
            Some(p) => Ok(p.fork(rows, reserve)?),
            None => {
                let mut s = model.session(rows);
                s.reserve(reserve);
                Ok(s)
            }
        }
    }

    /// Row `prompt` without the prefix.
    fn tail<'p>(&self, prompt: &'p [u32]) -> &'p [u32] {
        &prompt[self.len..]
    }
}

/// The unmodified model's residual stream entering layers `0..=upto` for the prompts of
/// one call, kept as the runner batches them (shared prefix, then length-sorted
/// batches), plus that pass's last-position logits.
///
/// Why: activation addition at `ResidPre(L)` leaves layers `0..L` unchanged, so its
/// pass can start at L from these tensors ([`Runner::last_logits_from`]) and give the
/// same logits as a full pass for a fraction of the work; candidate scoring runs one
/// such pass per candidate layer. Memory: `tokens × hidden × (upto + 1)` f32.
pub struct LayerInputs {
    upto: usize,
    /// The shared prefix and its residuals (one per layer), if the call has one.
    prefix: Option<(Vec<u32>, Vec<Tensor>)>,
    batches: Vec<BatchInputs>,
    /// Last-position logits of the unmodified model, in the caller's order.
    pub logits: Vec<Vec<f32>>,
}

impl LayerInputs {
    /// The last layer whose input is kept.
    pub fn upto(&self) -> usize {
        self.upto
    }

    /// Bytes a capture of `prompts` up to layer `upto` would hold (an upper bound: the
    /// shared prefix is counted in every prompt).
    pub fn estimate_bytes(prompts: &[Vec<u32>], hidden: usize, upto: usize) -> usize {
        let tokens: usize = prompts.iter().map(Vec::len).sum();
        tokens * hidden * (upto + 1) * std::mem::size_of::<f32>()
    }
}

/// One batch of a [`LayerInputs`].
struct BatchInputs {
    /// Indices of the batch's prompts in the caller's order.
    idx: Vec<usize>,
    /// The rows fed (without the shared prefix).
    rows: Vec<Vec<u32>>,
    /// `ResidPre(l)` of the rows for `l <= upto`, `(rows, seq, hidden)`.
    resid: Vec<Tensor>,
}

/// Keeps `ResidPre(l)` for `l <= upto`, as given (a capture; changes nothing).
struct LayerCapture {
    upto: usize,
    got: Vec<Option<Tensor>>,
}

impl LayerCapture {
    fn new(upto: usize) -> Self {
        LayerCapture {
            upto,
            got: vec![None; upto + 1],
        }
    }

    fn take(self) -> Result<Vec<Tensor>> {
        self.got
            .into_iter()
            .enumerate()
            .map(|(l, t)| {
                t.ok_or_else(|| {
                    Error::InvalidArgument(format!("layer {l}'s input was not captured"))
                })
            })
            .collect()
    }
}

impl Hook for LayerCapture {
    fn wants(&self, point: HookPoint) -> bool {
        matches!(point, HookPoint::ResidPre(l) if l <= self.upto)
    }

    fn call(
        &mut self,
        point: HookPoint,
        x: &Tensor,
        _cx: &HookContext<'_>,
    ) -> overseer_lm::Result<Option<Tensor>> {
        if let HookPoint::ResidPre(l) = point {
            self.got[l] = Some(x.clone());
        }
        Ok(None)
    }
}

/// The rows of `logits` `(rows, vocab)` as f32 vectors.
fn rows_f32(logits: &Tensor) -> Result<Vec<Vec<f32>>> {
    Ok(logits
        .to_dtype(overseer_lm::candle_core::DType::F32)?
        .to_vec2()?)
}

/// Per-batch results back in the caller's order: row `k` of batch `j` is item
/// `idx[j][k]` of `n`.
fn scatter<T: Default + Clone>(n: usize, idx: &[&[usize]], per_batch: Vec<Vec<T>>) -> Vec<T> {
    let mut out = vec![T::default(); n];
    for (b, rows) in idx.iter().zip(per_batch) {
        for (&i, row) in b.iter().zip(rows) {
            out[i] = row;
        }
    }
    out
}

/// A greedy completion.
#[derive(Debug, Clone)]
pub struct Completion {
    pub text: String,
    pub tokens: Vec<u32>,
    /// Refusal score of the first generated position.
    pub first_score: f64,
}

/// A model plus the lab's per-model settings.
pub struct Runner<'m> {
    pub model: &'m Model,
    /// Prompts per batch of a prompt pass (scores, captures, cross-entropy).
    pub batch: usize,
    /// Prompts generated together by [`Runner::generate`]. A decode step is one row per
    /// prompt, so it can hold many more prompts than a prompt pass; on the AMX route a
    /// step of 64 rows costs little more than one of 16 (docs/BENCHMARKS.md, "Refusal
    /// lab"). Rows that finish leave the batch.
    pub gen_batch: usize,
    pub refusal_ids: Vec<u32>,
    pub system_prompt: Option<String>,
    /// Compute the tokens all prompts of a call share once and fork them into every
    /// batch (the default; `false` feeds every prompt whole, to measure the saving).
    pub share_prefix: bool,
    /// Batches run side by side, each on one thread (see the `lanes` module): 1 runs
    /// one batch at a time on the model's threads. With more, a call's prompts are cut
    /// into a multiple of `lanes` batches so that no lane idles: generation in equal
    /// rows (at most `gen_batch`), prompt passes in equal padded tokens (up to twice
    /// `batch` rows of the shortest prompts). Calls whose hook cannot be copied
    /// (captures, [`Runner::means`]) run one batch at a time.
    pub lanes: usize,
}

impl<'m> Runner<'m> {
    /// Render one instruction with the model's chat template and tokenize it.
    pub fn encode(&self, instruction: &str) -> Result<Vec<u32>> {
        let mut msgs = Vec::new();
        if let Some(s) = &self.system_prompt {
            msgs.push(Message::system(s.clone()));
        }
        msgs.push(Message::user(instruction.to_string()));
        let text = self.model.chat_template().render(&msgs, true)?;
        let tok = self.model.tokenizer();
        let bos_in_text = tok
            .bos_id()
            .and_then(|b| tok.token_to_piece(b).ok())
            .is_some_and(|p| !p.is_empty() && text.starts_with(&p));
        Ok(tok.encode(&text, tok.add_bos() && !bos_in_text)?)
    }

    /// Encode many instructions.
    pub fn encode_all(&self, instructions: &[String]) -> Result<Vec<Vec<u32>>> {
        instructions.iter().map(|i| self.encode(i)).collect()
    }

    /// Batches of indices into `prompts`, shortest prompts first, of at most `batch`,
    /// spread evenly over `lanes` (see [`lane_batch`]): equal rows, for generation,
    /// where the decode steps outweigh the prompt.
    fn batches(&self, prompts: &[Vec<u32>], batch: usize, lanes: usize) -> Vec<Vec<usize>> {
        let mut idx: Vec<usize> = (0..prompts.len()).collect();
        idx.sort_by_key(|&i| prompts[i].len());
        let size = lane_batch(prompts.len(), batch, lanes);
        idx.chunks(size).map(<[usize]>::to_vec).collect()
    }

    /// [`Runner::batches`] for a prompt pass, whose cost is its padded tokens: on more
    /// than one lane, batches of about equal `rows × longest prompt` (see
    /// [`balanced_runs`]) instead of equal rows, as many batches as `batch` rows each
    /// would make. `skip` leading tokens of every prompt (the shared prefix) are
    /// computed once, not per batch, so they do not count.
    fn pass_batches(&self, prompts: &[Vec<u32>], batch: usize, skip: usize) -> Vec<Vec<usize>> {
        if self.lanes < 2 {
            return self.batches(prompts, batch, 1);
        }
        let mut idx: Vec<usize> = (0..prompts.len()).collect();
        idx.sort_by_key(|&i| prompts[i].len());
        let lens: Vec<usize> = idx
            .iter()
            .map(|&i| prompts[i].len().saturating_sub(skip))
            .collect();
        let count = prompts
            .len()
            .div_ceil(batch.max(1))
            .next_multiple_of(self.lanes);
        // Up to twice `batch` rows where the prompts are short: with the cap at `batch`,
        // 32 prompts of 10..29 tokens in two batches of 16 left one lane idle for half
        // the pass (0.63 against 1.24 s); balanced as 21 + 11 rows, the pass took 0.95 s
        // instead of 1.33 s.
        let mut at = 0;
        balanced_runs(&lens, 2 * batch.max(1), count)
            .into_iter()
            .map(|n| {
                at += n;
                idx[at - n..at].to_vec()
            })
            .collect()
    }

    /// The prefix shared by `prompts`, fed once under `hook` when `hook_prefix` (an
    /// intervention must see every position; a read-only capture must not count it).
    fn prefix(
        &self,
        prompts: &[Vec<u32>],
        hook: Option<&mut dyn Hook>,
        hook_prefix: bool,
    ) -> Result<Prefix> {
        let len = if self.share_prefix {
            shared_prefix(prompts)
        } else {
            0
        };
        if len == 0 {
            return Ok(Prefix { len, session: None });
        }
        let mut s = self.model.session(1);
        let o = ForwardOptions {
            hooks: if hook_prefix { hook } else { None },
            logits: Logits::None,
        };
        self.model
            .forward(&mut s, &[prompts[0][..len].to_vec()], o)?;
        Ok(Prefix {
            len,
            session: Some(s),
        })
    }

    /// Last-position logits of every prompt under `hook`.
    pub fn last_logits(
        &self,
        prompts: &[Vec<u32>],
        mut hook: Option<&mut dyn Hook>,
        progress: &dyn Progress,
    ) -> Result<Vec<Vec<f32>>> {
        let prefix = self.prefix(prompts, reborrow(&mut hook), true)?;
        let batches = self.pass_batches(prompts, self.batch, prefix.len);
        let got = in_lanes(self.lanes, &batches, hook, |b, hook| {
            let rows: Vec<Vec<u32>> = b
                .iter()
                .map(|&i| prefix.tail(&prompts[i]).to_vec())
                .collect();
            let mut s = prefix.session(self.model, rows.len(), 0)?;
            let o = ForwardOptions {
                hooks: hook,
                logits: Logits::Last,
            };
            let logits = rows_f32(&self.model.forward(&mut s, &rows, o)?)?;
            progress.advance(b.len() as u64);
            Ok(logits)
        })?;
        let idx: Vec<&[usize]> = batches.iter().map(Vec::as_slice).collect();
        Ok(scatter(prompts.len(), &idx, got))
    }

    /// Run `prompts` through the unmodified model once, keeping every layer's input up
    /// to `upto` (see [`LayerInputs`]) and the last-position logits.
    ///
    /// Errors: [`Error::InvalidArgument`] when `upto` is not a layer of the model;
    /// those of the forward pass.
    pub fn layer_inputs(&self, prompts: &[Vec<u32>], upto: usize) -> Result<LayerInputs> {
        let n_layer = self.model.config().n_layer;
        if upto > n_layer {
            return Err(Error::InvalidArgument(format!(
                "layer {upto} of a {n_layer}-layer model"
            )));
        }
        // The shared prefix, computed once as every call computes it, with its inputs kept.
        let mut cap = LayerCapture::new(upto);
        let prefix = self.prefix(prompts, Some(&mut cap), true)?;
        let prefix_out = match prefix.len {
            0 => None,
            len => Some((prompts[0][..len].to_vec(), cap.take()?)),
        };
        let order = self.pass_batches(prompts, self.batch, prefix.len);
        // Each batch has its own capture, so the batches can run side by side.
        let got = in_lanes(self.lanes, &order, None, |b, _| {
            let rows: Vec<Vec<u32>> = b
                .iter()
                .map(|&i| prefix.tail(&prompts[i]).to_vec())
                .collect();
            let mut s = prefix.session(self.model, rows.len(), 0)?;
            let mut cap = LayerCapture::new(upto);
            let o = ForwardOptions {
                hooks: Some(&mut cap),
                logits: Logits::Last,
            };
            let out = rows_f32(&self.model.forward(&mut s, &rows, o)?)?;
            let inputs = BatchInputs {
                idx: b.clone(),
                rows,
                resid: cap.take()?,
            };
            Ok((inputs, out))
        })?;
        let (batches, per_batch): (Vec<BatchInputs>, Vec<Vec<Vec<f32>>>) = got.into_iter().unzip();
        let idx: Vec<&[usize]> = batches.iter().map(|b| b.idx.as_slice()).collect();
        let logits = scatter(prompts.len(), &idx, per_batch);
        Ok(LayerInputs {
            upto,
            prefix: prefix_out,
            batches,
            logits,
        })
    }

    /// [`Runner::last_logits`] for the prompts of `inputs` under a `hook` that changes
    /// nothing below `layer`, started at `layer` from the captured inputs: the same
    /// logits as the full pass, without computing layers `0..layer` again.
    ///
    /// Errors: [`Error::InvalidArgument`] when `layer > inputs.upto`; those of the
    /// forward pass.
    pub fn last_logits_from(
        &self,
        inputs: &LayerInputs,
        layer: usize,
        mut hook: Option<&mut dyn Hook>,
        progress: &dyn Progress,
    ) -> Result<Vec<Vec<f32>>> {
        if layer > inputs.upto {
            return Err(Error::InvalidArgument(format!(
                "layer {layer}'s input was not captured (only up to {})",
                inputs.upto
            )));
        }
        let prefix = match &inputs.prefix {
            Some((tokens, resid)) => {
                let mut s = self.model.session(1);
                let from = Resume {
                    layer,
                    resid: resid[layer].clone(),
                };
                let o = ForwardOptions {
                    hooks: reborrow(&mut hook),
                    logits: Logits::None,
                };
                self.model
                    .forward_from(&mut s, std::slice::from_ref(tokens), &from, o)?;
                Prefix {
                    len: tokens.len(),
                    session: Some(s),
                }
            }
            None => Prefix {
                len: 0,
                session: None,
            },
        };
        let got = in_lanes(self.lanes, &inputs.batches, hook, |batch, hook| {
            let mut s = prefix.session(self.model, batch.rows.len(), 0)?;
            let from = Resume {
                layer,
                resid: batch.resid[layer].clone(),
            };
            let o = ForwardOptions {
                hooks: hook,
                logits: Logits::Last,
            };
            let logits = rows_f32(&self.model.forward_from(&mut s, &batch.rows, &from, o)?)?;
            progress.advance(batch.idx.len() as u64);
            Ok(logits)
        })?;
        let idx: Vec<&[usize]> = inputs.batches.iter().map(|b| b.idx.as_slice()).collect();
        Ok(scatter(inputs.logits.len(), &idx, got))
    }

    /// [`Runner::refusal_scores`] started at `layer` (see [`Runner::last_logits_from`]).
    ///
    /// Errors: those of [`Runner::last_logits_from`].
    pub fn refusal_scores_from(
        &self,
        inputs: &LayerInputs,
        layer: usize,
        hook: Option<&mut dyn Hook>,
        progress: &dyn Progress,
    ) -> Result<Vec<f64>> {
        Ok(self
            .last_logits_from(inputs, layer, hook, progress)?
            .iter()
            .map(|l| refusal_score(l, &self.refusal_ids))
            .collect())
    }

    /// Refusal score of every prompt under `hook`.
    pub fn refusal_scores(
        &self,
        prompts: &[Vec<u32>],
        hook: Option<&mut dyn Hook>,
        progress: &dyn Progress,
    ) -> Result<Vec<f64>> {
        Ok(self
            .last_logits(prompts, hook, progress)?
            .iter()
            .map(|l| refusal_score(l, &self.refusal_ids))
            .collect())
    }

    /// Mean `ResidPre(l)` for every layer at the last `n` positions, f64, in the
    /// `(positions, layers, hidden)` layout of `Candidates`.
    pub fn means(
        &self,
        prompts: &[Vec<u32>],
        n: usize,
        progress: &dyn Progress,
    ) -> Result<Vec<f64>> {
        let n_layer = self.model.config().n_layer;
        let hidden = self.model.config().hidden;
        let points: Vec<HookPoint> = (0..n_layer).map(HookPoint::ResidPre).collect();
        let mut cap = MeanCapture::new(points, n);
        // The capture only reads: the prefix is computed without it.
        let prefix = self.prefix(prompts, None, false)?;
        // One capture sums every batch: one batch at a time.
        for b in self.batches(prompts, self.batch, 1) {
            let rows: Vec<Vec<u32>> = b
                .iter()
                .map(|&i| prefix.tail(&prompts[i]).to_vec())
                .collect();
            let mut s = prefix.session(self.model, rows.len(), 0)?;
            let o = ForwardOptions {
                hooks: Some(&mut cap),
                logits: Logits::Last,
            };
            self.model.forward(&mut s, &rows, o)?;
            progress.advance(b.len() as u64);
        }
        if cap.count() != prompts.len() {
            return Err(Error::InvalidArgument(format!(
                "captured {} prompts, expected {}",
                cap.count(),
                prompts.len()
            )));
        }
        let means = cap.means(); // [layer][pos][hidden]
        let mut out = vec![0.0; n * n_layer * hidden];
        for (l, per_pos) in means.iter().enumerate() {
            for (p, v) in per_pos.iter().enumerate() {
                let start = (p * n_layer + l) * hidden;
                out[start..start + hidden].copy_from_slice(v);
            }
        }
        Ok(out)
    }

    /// Greedy completions of up to `max_new` tokens (stopping at end-of-generation
    /// tokens, which are not part of the text).
    pub fn generate(
        &self,
        prompts: &[Vec<u32>],
        max_new: usize,
        mut hook: Option<&mut dyn Hook>,
        progress: &dyn Progress,
    ) -> Result<Vec<Completion>> {
        let tok = self.model.tokenizer();
        let prefix = self.prefix(prompts, reborrow(&mut hook), true)?;
        let batches = self.batches(prompts, self.gen_batch, self.lanes);
        let got = in_lanes(self.lanes, &batches, hook, |b, mut hook| {
            let rows: Vec<Vec<u32>> = b
                .iter()
                .map(|&i| prefix.tail(&prompts[i]).to_vec())
                .collect();
            let longest = rows.iter().map(Vec::len).max().unwrap_or(0);
            let mut s = prefix.session(self.model, rows.len(), prefix.len + longest + max_new)?;
            let o = ForwardOptions {
                hooks: reborrow(&mut hook),
                logits: Logits::Last,
            };
            let mut logits = self.model.forward(&mut s, &rows, o)?;
            let first: Vec<Vec<f32>> = logits
                .to_dtype(overseer_lm::candle_core::DType::F32)?
                .to_vec2()?;
            let first_scores: Vec<f64> = first
                .iter()
                .map(|l| refusal_score(l, &self.refusal_ids))
                .collect();
            let mut generated: Vec<Vec<u32>> = vec![Vec::new(); rows.len()];
            let mut done = vec![max_new == 0; rows.len()];
            // Batch row of each session row: rows that finish are dropped from the
            // session, so later steps compute only the rows still generating.
            let mut live: Vec<usize> = (0..rows.len()).collect();
            for step in 0..max_new {
                let next: Vec<u32> = logits.argmax(D::Minus1)?.to_vec1()?;
                for (&r, &t) in live.iter().zip(&next) {
                    if tok.is_eog(t) {
                        done[r] = true;
                    } else {
                        generated[r].push(t);
                    }
                }
                if done.iter().all(|&d| d) || step + 1 == max_new {
                    break;
                }
                let keep: Vec<usize> = (0..live.len()).filter(|&j| !done[live[j]]).collect();
                if keep.len() < live.len() {
                    s.retain_rows(&keep)?;
                    live = keep.iter().map(|&j| live[j]).collect();
                }
                let feed: Vec<Vec<u32>> = keep.iter().map(|&j| vec![next[j]]).collect();
                let o = ForwardOptions {
                    hooks: reborrow(&mut hook),
                    logits: Logits::Last,
                };
                logits = self.model.forward(&mut s, &feed, o)?;
            }
            let done: Vec<Option<Completion>> = generated
                .into_iter()
                .zip(first_scores)
                .map(|(toks, first_score)| {
                    Ok(Some(Completion {
                        text: tok.decode(&toks)?,
                        tokens: toks,
                        first_score,
                    }))
                })
                .collect::<Result<_>>()?;
            progress.advance(b.len() as u64);
            Ok(done)
        })?;
        let idx: Vec<&[usize]> = batches.iter().map(Vec::as_slice).collect();
        Ok(scatter(prompts.len(), &idx, got)
            .into_iter()
            .map(|c| c.expect("every prompt is in one batch"))
            .collect())
    }

    /// Mean per-token cross-entropy (nats) of `completions[i]` after `prompts[i]`,
    /// teacher-forced under `hook`. Pairs with an empty completion are skipped.
    pub fn cross_entropy(
        &self,
        prompts: &[Vec<u32>],
        completions: &[Vec<u32>],
        mut hook: Option<&mut dyn Hook>,
        progress: &dyn Progress,
    ) -> Result<f64> {
        let full: Vec<Vec<u32>> = prompts
            .iter()
            .zip(completions)
            .filter(|(_, c)| !c.is_empty())
            .map(|(p, c)| p.iter().chain(c).copied().collect())
            .collect();
        let comp_len: Vec<usize> = completions
            .iter()
            .filter(|c| !c.is_empty())
            .map(Vec::len)
            .collect();
        // The prefix is shared by the prompts (so it never reaches a completion token).
        let kept: Vec<Vec<u32>> = prompts
            .iter()
            .zip(completions)
            .filter(|(_, c)| !c.is_empty())
            .map(|(p, _)| p.clone())
            .collect();
        let prefix = self.prefix(&kept, reborrow(&mut hook), true)?;
        // Rows of up to ~300 tokens: small batches keep the attention's score tensors
        // (rows x heads x seq x seq) in cache; 16 rows took 137 s for the default run's
        // cost stage, 4 rows 100 s, 2 rows 95 s (candle's attention; 4 rows with the
        // f16 kernel, as the lab runs, 95 s).
        let batches = self.pass_batches(&full, (self.batch / 4).max(1), prefix.len);
        let got = in_lanes(self.lanes, &batches, hook, |b, hook| {
            let rows: Vec<Vec<u32>> = b.iter().map(|&i| prefix.tail(&full[i]).to_vec()).collect();
            let seq = rows.iter().map(Vec::len).max().unwrap_or(0);
            let mut s = prefix.session(self.model, rows.len(), 0)?;
            // Final-norm outputs only: the LM head runs on the positions that predict a
            // completion token, not on prompts and padding (full-vocabulary logits for
            // every position were the largest tensor of the pass).
            let o = ForwardOptions {
                hooks: hook,
                logits: Logits::None,
            };
            let hidden = self.model.forward(&mut s, &rows, o)?;
            let mut wanted = Vec::with_capacity(b.len());
            let mut targets: Vec<u32> = Vec::new();
            for (k, &i) in b.iter().enumerate() {
                let n = comp_len[i];
                // Position t predicts token t+1; rows are right-aligned.
                wanted.push(hidden.get(k)?.narrow(0, seq - n - 1, n)?);
                targets.extend_from_slice(&full[i][full[i].len() - n..]);
            }
            let wanted = Tensor::cat(&wanted, 0)?;
            drop(hidden);
            let (mut total, mut count) = (0.0f64, 0usize);
            let mut done = 0;
            while done < targets.len() {
                let n = HEAD_POSITIONS.min(targets.len() - done);
                let logits: Vec<Vec<f32>> = self
                    .model
                    .lm_head(&wanted.narrow(0, done, n)?)?
                    .to_dtype(overseer_lm::candle_core::DType::F32)?
                    .to_vec2()?;
                for (row, &t) in logits.iter().zip(&targets[done..done + n]) {
                    total += token_cross_entropy(row, t);
                    count += 1;
                }
                done += n;
            }
            progress.advance(b.len() as u64);
            Ok((total, count))
        })?;
        // Summed in batch order, whatever lane finished first: the same total every run.
        let (total, count) = got
            .into_iter()
            .fold((0.0f64, 0usize), |(t, c), (bt, bc)| (t + bt, c + bc));
        Ok(if count == 0 {
            f64::NAN
        } else {
            total / count as f64
        })
    }
}

#[cfg(test)]
mod tests {
    use super::shared_prefix;

    #[test]
    fn shared_prefix_leaves_every_prompt_a_token() {
        let a = vec![1, 2, 3, 4, 5, 6, 7];
        let b = vec![1, 2, 3, 4, 5, 9];
        assert_eq!(shared_prefix(&[a.clone(), b.clone()]), 5);
        // `b` is a prefix of `c`: `b` keeps its last token.
        let c = vec![1, 2, 3, 4, 5, 9, 9];
        assert_eq!(shared_prefix(&[c.clone(), b.clone()]), 5);
        assert_eq!(shared_prefix(&[b.clone(), b.clone()]), 5);
        // Too short to be worth a fork, a single prompt, no prompts.
        assert_eq!(shared_prefix(&[vec![1, 2, 3, 8], vec![1, 2, 3, 9]]), 0);
        assert_eq!(shared_prefix(std::slice::from_ref(&a)), 0);
        assert_eq!(shared_prefix(&[]), 0);
        assert_eq!(shared_prefix(&[a, b, vec![7, 1, 2, 3, 4, 5]]), 0);
    }
}
