//! Batched model passes the lab needs, on the runtime's `Model::forward` and hooks:
//! last-position logits, refusal scores, f64 mean capture at the post-instruction
//! positions, greedy generation that also returns the first step's refusal score, and
//! teacher-forced cross-entropy.
//!
//! Prompts are sorted by length before batching (less padding) and results are
//! returned in the caller's order. Greedy generation is written here rather than using
//! the runtime's `generate_batch` because the lab needs the first step's logits of
//! every row (the refusal score of the very completion it judges).

use overseer_lm::candle_core::D;
use overseer_lm::{ForwardOptions, Hook, HookPoint, Logits, MeanCapture, Message, Model};

use crate::metric::{log_softmax, refusal_score};
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
    pub batch: usize,
    pub refusal_ids: Vec<u32>,
    pub system_prompt: Option<String>,
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

    /// Batches of indices into `prompts`, shortest prompts first.
    fn batches(&self, prompts: &[Vec<u32>], batch: usize) -> Vec<Vec<usize>> {
        let mut idx: Vec<usize> = (0..prompts.len()).collect();
        idx.sort_by_key(|&i| prompts[i].len());
        idx.chunks(batch.max(1)).map(<[usize]>::to_vec).collect()
    }

    /// Last-position logits of every prompt under `hook`.
    pub fn last_logits(
        &self,
        prompts: &[Vec<u32>],
        mut hook: Option<&mut dyn Hook>,
        progress: &dyn Progress,
    ) -> Result<Vec<Vec<f32>>> {
        let mut out = vec![Vec::new(); prompts.len()];
        for b in self.batches(prompts, self.batch) {
            let rows: Vec<Vec<u32>> = b.iter().map(|&i| prompts[i].clone()).collect();
            let mut s = self.model.session(rows.len());
            let o = ForwardOptions {
                hooks: reborrow(&mut hook),
                logits: Logits::Last,
            };
            let logits = self.model.forward(&mut s, &rows, o)?;
            let v: Vec<Vec<f32>> = logits
                .to_dtype(overseer_lm::candle_core::DType::F32)?
                .to_vec2()?;
            for (k, row) in v.into_iter().enumerate() {
                out[b[k]] = row;
            }
            progress.advance(b.len() as u64);
        }
        Ok(out)
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
        for b in self.batches(prompts, self.batch) {
            let rows: Vec<Vec<u32>> = b.iter().map(|&i| prompts[i].clone()).collect();
            let mut s = self.model.session(rows.len());
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
        let filler = tok.eos_id().or(tok.eot_id()).unwrap_or(0);
        let mut out: Vec<Option<Completion>> = vec![None; prompts.len()];
        for b in self.batches(prompts, self.batch) {
            let rows: Vec<Vec<u32>> = b.iter().map(|&i| prompts[i].clone()).collect();
            let mut s = self.model.session(rows.len());
            let longest = rows.iter().map(Vec::len).max().unwrap_or(0);
            s.reserve(longest + max_new);
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
            for step in 0..max_new {
                let next: Vec<u32> = logits.argmax(D::Minus1)?.to_vec1()?;
                for (r, &t) in next.iter().enumerate() {
                    if done[r] {
                        continue;
                    }
                    if tok.is_eog(t) {
                        done[r] = true;
                    } else {
                        generated[r].push(t);
                    }
                }
                if done.iter().all(|&d| d) || step + 1 == max_new {
                    break;
                }
                let feed: Vec<Vec<u32>> = next
                    .iter()
                    .zip(&done)
                    .map(|(&t, &d)| vec![if d { filler } else { t }])
                    .collect();
                let o = ForwardOptions {
                    hooks: reborrow(&mut hook),
                    logits: Logits::Last,
                };
                logits = self.model.forward(&mut s, &feed, o)?;
            }
            for (k, toks) in generated.into_iter().enumerate() {
                out[b[k]] = Some(Completion {
                    text: tok.decode(&toks)?,
                    tokens: toks,
                    first_score: first_scores[k],
                });
            }
            progress.advance(b.len() as u64);
        }
        Ok(out
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
        let (mut total, mut count) = (0.0f64, 0usize);
        // Full-sequence logits are (batch, seq, vocab): keep batches small.
        let batch = (self.batch / 4).max(1);
        for b in self.batches(&full, batch) {
            let rows: Vec<Vec<u32>> = b.iter().map(|&i| full[i].clone()).collect();
            let seq = rows.iter().map(Vec::len).max().unwrap_or(0);
            let mut s = self.model.session(rows.len());
            let o = ForwardOptions {
                hooks: reborrow(&mut hook),
                logits: Logits::All,
            };
            let logits = self.model.forward(&mut s, &rows, o)?;
            for (k, &i) in b.iter().enumerate() {
                let n = comp_len[i];
                // Logits at position t predict token t+1; rows are right-aligned.
                let start = seq - n - 1;
                let part: Vec<Vec<f32>> = logits
                    .get(k)?
                    .narrow(0, start, n)?
                    .to_dtype(overseer_lm::candle_core::DType::F32)?
                    .to_vec2()?;
                let targets = &full[i][full[i].len() - n..];
                for (row, &t) in part.iter().zip(targets) {
                    total -= log_softmax(row)[t as usize];
                    count += 1;
                }
            }
            progress.advance(b.len() as u64);
        }
        Ok(if count == 0 {
            f64::NAN
        } else {
            total / count as f64
        })
    }
}
