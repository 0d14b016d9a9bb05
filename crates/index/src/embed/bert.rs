//! A BERT encoder (post-LayerNorm, absolute positions, exact GELU) on packed f32 rows.
//!
//! Why not candle's `BertModel`: it pads every batch to its longest sequence, runs
//! attention over the padding, and goes through several `contiguous` copies per layer;
//! measured at ~44 texts/s against ~76/s for sentence-transformers on 2 cores (issue 3).
//! Here the sequences of a batch are *packed* one after the other into one
//! `[total_tokens, hidden]` matrix: the dense layers (QKV, output, FFN), which are
//! position-wise, run as one large GEMM over every real token with no padding at all,
//! and attention runs per sequence on views into the fused QKV matrix (no copies).

use super::ops::{self, Act, Linear};
use super::team::{Par, SharedPtr};

/// Shape of a BERT encoder (from the model's `config.json`).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct BertConfig {
    pub vocab: usize,
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub intermediate: usize,
    pub max_positions: usize,
    pub type_vocab: usize,
    pub eps: f32,
}

impl BertConfig {
    pub fn head_dim(&self) -> usize {
        self.hidden / self.heads
    }
}

pub(crate) struct Layer {
    /// Q, K and V fused into one `[hidden, 3·hidden]` layer; Q is pre-scaled by 1/√head_dim.
    pub qkv: Linear,
    pub attn_out: Linear,
    pub ln1_g: Vec<f32>,
    pub ln1_b: Vec<f32>,
    pub ffn_in: Linear,
    pub ffn_out: Linear,
    pub ln2_g: Vec<f32>,
    pub ln2_b: Vec<f32>,
}

/// Weights of the encoder, all f32.
pub(crate) struct Bert {
    pub cfg: BertConfig,
    /// `[vocab, hidden]`.
    pub word: Vec<f32>,
    /// `[max_positions, hidden]` with the token-type-0 embedding already added.
    pub pos_type0: Vec<f32>,
    pub emb_ln_g: Vec<f32>,
    pub emb_ln_b: Vec<f32>,
    pub layers: Vec<Layer>,
}

/// Scratch buffers for one pack; reused across layers.
struct Scratch {
    x: Vec<f32>,
    qkv: Vec<f32>,
    ctx: Vec<f32>,
    tmp: Vec<f32>,
    inter: Vec<f32>,
    scores: Vec<f32>,
}

impl Bert {
    /// Mean-pooled (not yet normalised) embeddings of the sequences `seqs`, each a list of
    /// token ids already wrapped in `[CLS] … [SEP]`, non-empty, at most `max_positions`
    /// long, every id `< vocab` (the caller guarantees all three).
    ///
    /// `par` threads the GEMMs; callers that already run packs in parallel pass `None`.
    pub fn encode_pack(&self, seqs: &[&[u32]], par: Par<'_>) -> Vec<Vec<f32>> {
        let h = self.cfg.hidden;
        let total: usize = seqs.iter().map(|s| s.len()).sum();
        let max_len = seqs.iter().map(|s| s.len()).max().unwrap_or(0);
        let mut s = Scratch {
            x: vec![0.0; total * h],
            qkv: vec![0.0; total * 3 * h],
            ctx: vec![0.0; total * h],
            tmp: vec![0.0; total * h],
            inter: vec![0.0; total * self.cfg.intermediate],
            // l×l attention scores for each of a team's two threads (`layer_forward`).
            scores: vec![0.0; 2 * max_len * max_len],
        };

        // Embeddings: word + position + token type 0, then LayerNorm.
        let mut row = 0;
        for seq in seqs {
            for (p, &id) in seq.iter().enumerate() {
                let dst = &mut s.x[row * h..(row + 1) * h];
                dst.copy_from_slice(&self.word[id as usize * h..(id as usize + 1) * h]);
                ops::add_assign(dst, &self.pos_type0[p * h..(p + 1) * h]);
                row += 1;
            }
        }
        ops::add_layer_norm(&mut s.x, &[], &self.emb_ln_g, &self.emb_ln_b, self.cfg.eps);

        for layer in &self.layers {
            self.layer_forward(layer, seqs, total, &mut s, par);
        }

        // Mean pooling over every token of each sequence ([CLS] and [SEP] included, as
        // sentence-transformers does with an all-ones attention mask).
        let mut out = Vec::with_capacity(seqs.len());
        let mut start = 0;
        for seq in seqs {
            let mut v = vec![0.0f32; h];
            for r in start..start + seq.len() {
                ops::add_assign(&mut v, &s.x[r * h..(r + 1) * h]);
            }
            let inv = 1.0 / seq.len() as f32;
            v.iter_mut().for_each(|x| *x *= inv);
            out.push(v);
            start += seq.len();
        }
        out
    }

    fn layer_forward(
        &self,
        layer: &Layer,
        seqs: &[&[u32]],
        total: usize,
        s: &mut Scratch,
        par: Par<'_>,
    ) {
        let h = self.cfg.hidden;
        let hd = self.cfg.head_dim();
        let qkv_w = 3 * h;
        layer.qkv.forward(&s.x, total, &mut s.qkv, par, Act::None);

        // Attention, one sequence and one head at a time, on strided views into qkv. With
        // a team the heads of each sequence are shared between its two threads, each with
        // its own scores buffer (a query's 12 heads took 0.35–0.5 ms on one thread).
        let mut start = 0;
        for seq in seqs {
            let l = seq.len();
            let heads = self.cfg.heads;
            let half_len = s.scores.len() / 2;
            let (sc0, sc1) = s.scores.split_at_mut(half_len);
            let (sc0, sc1) = (SharedPtr(sc0.as_mut_ptr()), SharedPtr(sc1.as_mut_ptr()));
            // SAFETY (for `scratch` below): each half of `s.scores` is used by one thread.
            let scratch =
                |p: SharedPtr| unsafe { std::slice::from_raw_parts_mut(p.get(), half_len) };
            let view = AttnView {
                qkv: &s.qkv[start * qkv_w..total * qkv_w],
                ctx: SharedPtr(s.ctx[start * h..total * h].as_mut_ptr()),
                ctx_len: (total - start) * h,
                l,
                h,
                hd,
            };
            match par {
                Par::Team(team) if heads >= 2 => {
                    team.share(heads, |worker, head| {
                        let sc = if worker == 0 { sc0 } else { sc1 };
                        // SAFETY: each head is run once and writes only its own columns
                        // of ctx; each worker has its own half of the scratch.
                        unsafe { view.heads(head..head + 1, scratch(sc)) }
                    });
                }
                // SAFETY: one thread; ctx is borrowed mutably through `s`.
                _ => unsafe { view.heads(0..heads, scratch(sc0)) },
            }
            start += l;
        }

        layer
            .attn_out
            .forward(&s.ctx, total, &mut s.tmp, par, Act::None);
        ops::add_layer_norm(
            &mut s.x[..total * h],
            &s.tmp[..total * h],
            &layer.ln1_g,
            &layer.ln1_b,
            self.cfg.eps,
        );
        layer
            .ffn_in
            .forward(&s.x, total, &mut s.inter, par, Act::Gelu);
        layer
            .ffn_out
            .forward(&s.inter, total, &mut s.tmp, par, Act::None);
        ops::add_layer_norm(
            &mut s.x[..total * h],
            &s.tmp[..total * h],
            &layer.ln2_g,
            &layer.ln2_b,
            self.cfg.eps,
        );
    }
}

/// Attention of one sequence: its rows of the fused QKV matrix and of the context output.
struct AttnView<'a> {
    /// `[l.., 3h]`, starting at the sequence's first row.
    qkv: &'a [f32],
    /// `[l.., h]`, starting at the sequence's first row; `ctx_len` floats.
    ctx: SharedPtr,
    ctx_len: usize,
    l: usize,
    h: usize,
    hd: usize,
}

impl AttnView<'_> {
    /// `ctx[:, head] = softmax(q_head k_headᵀ) v_head` for the heads in `heads`.
    ///
    /// # Safety
    /// No other thread reads or writes the ctx columns of `heads` meanwhile.
    unsafe fn heads(&self, heads: std::ops::Range<usize>, scratch: &mut [f32]) {
        let (l, h, hd) = (self.l, self.h, self.hd);
        let qkv_w = 3 * h;
        // The views reach (l-1)·row stride + hd elements past their start.
        assert!(l >= 1 && self.qkv.len() >= (l - 1) * qkv_w + 3 * h);
        assert!(self.ctx_len >= (l - 1) * h + h && heads.end * hd <= h);
        let scores = &mut scratch[..l * l];
        for head in heads {
            let q = self.qkv[head * hd..].as_ptr();
            let k = self.qkv[h + head * hd..].as_ptr();
            let v = self.qkv[2 * h + head * hd..].as_ptr();
            // SAFETY: scores is l×l with row stride l; q and k are l×hd views with
            // row stride qkv_w inside qkv (asserted), k read transposed.
            unsafe {
                ops::matmul_strided(l, l, hd, scores.as_mut_ptr(), l, q, qkv_w, k, 1, qkv_w);
            }
            ops::softmax_rows(scores, l);
            // SAFETY: ctx + head·hd is an l×hd view with row stride h inside ctx_len
            // (asserted) that only this call writes (caller); v is an l×hd view with
            // row stride qkv_w; ctx overlaps neither scores nor qkv.
            unsafe {
                let ctx = self.ctx.get().add(head * hd);
                ops::matmul_strided(l, hd, l, ctx, h, scores.as_ptr(), l, v, qkv_w, 1);
            }
        }
    }
}
