//! all-MiniLM-L6-v2 (sentence-transformers): a 6-layer BERT with a WordPiece tokenizer,
//! mean pooling and L2 normalisation, read from the model folder that
//! `scripts/fetch-models` unpacks (`model.safetensors`, `tokenizer.json`, `config.json`,
//! optionally `sentence_bert_config.json` and `1_Pooling/config.json`).
//!
//! Batches are tokenised, then split into *packs* of whole sequences with about
//! [`PACK_TOKENS`] real tokens each (no padding anywhere; see `bert.rs`). With several
//! packs, packs run in parallel on the embedder's thread pool with single-threaded GEMMs;
//! a batch too small to split (a search query) runs as one pack with threaded GEMMs.

use std::path::Path;

use gemm::Parallelism;
use safetensors::SafeTensors;
use serde_json::Value;

use super::Embedder;
use super::bert::{Bert, BertConfig, Layer};
use super::ops::{self, Linear};
use super::team::{Par, Team};
use crate::{Error, Result};

/// Target number of tokens per pack: large enough that the GEMMs run near peak
/// (m ≥ 256 rows), small enough that a pack's activations (~17 KB per token) stay in
/// the L2/L3 caches.
const PACK_TOKENS: usize = 512;

/// Below this many tokens per thread a batch runs as one pack with threaded GEMMs.
const MIN_SPLIT_TOKENS: usize = 96;

/// Texts longer than this many bytes are first tokenised from a prefix cut at a
/// whitespace boundary; see [`MiniLm::ids`].
const PREFIX_BYTES: usize = 4096;

/// The all-MiniLM-L6-v2 sentence embedder (or any BERT sentence-transformers model with
/// mean pooling in the same folder layout).
pub struct MiniLm {
    name: String,
    bert: Bert,
    tokenizer: tokenizers::Tokenizer,
    cls: u32,
    sep: u32,
    max_tokens: usize,
    threads: usize,
    pool: rayon::ThreadPool,
}

impl std::fmt::Debug for MiniLm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MiniLm")
            .field("name", &self.name)
            .field("config", &self.bert.cfg)
            .field("max_tokens", &self.max_tokens)
            .field("threads", &self.threads)
            .finish()
    }
}

fn load_err(dir: &Path, reason: impl Into<String>) -> Error {
    Error::EmbedModel {
        path: dir.to_path_buf(),
        reason: reason.into(),
    }
}

fn read_json(dir: &Path, file: &str) -> Result<Option<Value>> {
    let path = dir.join(file);
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path)
        .map_err(|e| load_err(dir, format!("cannot read {file}: {e}")))?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| load_err(dir, format!("{file} is not valid JSON: {e}")))
}

fn cfg_usize(dir: &Path, cfg: &Value, key: &str) -> Result<usize> {
    cfg.get(key)
        .and_then(Value::as_u64)
        .map(|v| v as usize)
        .ok_or_else(|| load_err(dir, format!("config.json lacks a numeric '{key}'")))
}

/// Reads tensors by name from the safetensors file, checking dtype and shape.
struct Tensors<'a> {
    dir: &'a Path,
    st: SafeTensors<'a>,
    prefix: &'static str,
}

impl Tensors<'_> {
    fn get(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let full = format!("{}{name}", self.prefix);
        let t = self
            .st
            .tensor(&full)
            .map_err(|e| load_err(self.dir, format!("model.safetensors: tensor {full}: {e}")))?;
        if t.shape() != shape {
            return Err(load_err(
                self.dir,
                format!(
                    "tensor {full} has shape {:?}, expected {shape:?}",
                    t.shape()
                ),
            ));
        }
        match t.dtype() {
            safetensors::Dtype::F32 => Ok(t
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect()),
            other => Err(load_err(
                self.dir,
                format!("tensor {full} is {other:?}; only F32 weights are supported"),
            )),
        }
    }

    fn linear(&self, name: &str, out_dim: usize, in_dim: usize) -> Result<Linear> {
        let w = self.get(&format!("{name}.weight"), &[out_dim, in_dim])?;
        let b = self.get(&format!("{name}.bias"), &[out_dim])?;
        Ok(Linear::from_torch(&w, b, out_dim, in_dim))
    }
}

impl MiniLm {
    /// Load the model folder `dir` and run on `threads` threads (0 = all cores).
    ///
    /// # Errors
    /// [`Error::EmbedModel`] when a file is missing (then run `scripts/fetch-models`), is
    /// malformed, or describes a model this loader does not support (not BERT, not mean
    /// pooling, non-F32 weights).
    pub fn load(dir: &Path, threads: usize) -> Result<MiniLm> {
        for file in ["model.safetensors", "tokenizer.json", "config.json"] {
            if !dir.join(file).is_file() {
                return Err(load_err(
                    dir,
                    format!("{file} is missing; run scripts/fetch-models"),
                ));
            }
        }
        let cfg_json = read_json(dir, "config.json")?.expect("checked above");
        let act = cfg_json
            .get("hidden_act")
            .and_then(Value::as_str)
            .unwrap_or("gelu");
        if act != "gelu" {
            return Err(load_err(
                dir,
                format!("hidden_act '{act}' is not supported (gelu only)"),
            ));
        }
        if let Some(kind) = cfg_json
            .get("position_embedding_type")
            .and_then(Value::as_str)
            && kind != "absolute"
        {
            return Err(load_err(
                dir,
                format!("position_embedding_type '{kind}' unsupported"),
            ));
        }
        let cfg = BertConfig {
            vocab: cfg_usize(dir, &cfg_json, "vocab_size")?,
            hidden: cfg_usize(dir, &cfg_json, "hidden_size")?,
            layers: cfg_usize(dir, &cfg_json, "num_hidden_layers")?,
            heads: cfg_usize(dir, &cfg_json, "num_attention_heads")?,
            intermediate: cfg_usize(dir, &cfg_json, "intermediate_size")?,
            max_positions: cfg_usize(dir, &cfg_json, "max_position_embeddings")?,
            type_vocab: cfg_json
                .get("type_vocab_size")
                .and_then(Value::as_u64)
                .unwrap_or(2) as usize,
            eps: cfg_json
                .get("layer_norm_eps")
                .and_then(Value::as_f64)
                .unwrap_or(1e-12) as f32,
        };
        if cfg.heads == 0 || !cfg.hidden.is_multiple_of(cfg.heads) || cfg.type_vocab == 0 {
            return Err(load_err(
                dir,
                "hidden_size is not a multiple of num_attention_heads",
            ));
        }
        if let Some(pool) = read_json(dir, "1_Pooling/config.json")? {
            let mean = pool
                .get("pooling_mode_mean_tokens")
                .and_then(Value::as_bool);
            if mean == Some(false) {
                return Err(load_err(dir, "only mean pooling is supported"));
            }
        }
        let max_tokens = read_json(dir, "sentence_bert_config.json")?
            .and_then(|v| v.get("max_seq_length").and_then(Value::as_u64))
            .map(|v| v as usize)
            .unwrap_or(cfg.max_positions)
            .min(cfg.max_positions);
        if max_tokens < 3 {
            return Err(load_err(dir, "max_seq_length is too small"));
        }

        let bytes = std::fs::read(dir.join("model.safetensors"))
            .map_err(|e| load_err(dir, format!("cannot read model.safetensors: {e}")))?;
        let st = SafeTensors::deserialize(&bytes)
            .map_err(|e| load_err(dir, format!("model.safetensors is malformed: {e}")))?;
        let prefix = if st.tensor("embeddings.word_embeddings.weight").is_ok() {
            ""
        } else {
            "bert."
        };
        let t = Tensors { dir, st, prefix };
        let bert = load_bert(&t, cfg)?;

        let mut tokenizer = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json"))
            .map_err(|e| load_err(dir, format!("tokenizer.json: {e}")))?;
        // Truncation and padding are done here (see `ids`), not by the tokenizer.
        tokenizer
            .with_truncation(None)
            .map_err(|e| load_err(dir, format!("tokenizer.json: {e}")))?;
        tokenizer.with_padding(None);
        let special = |tok: &str| {
            tokenizer
                .token_to_id(tok)
                .ok_or_else(|| load_err(dir, format!("tokenizer has no {tok} token")))
        };
        let (cls, sep) = (special("[CLS]")?, special("[SEP]")?);
        if tokenizer.get_vocab_size(true) > bert.cfg.vocab {
            return Err(load_err(
                dir,
                "tokenizer vocabulary is larger than the model's",
            ));
        }

        let threads = if threads == 0 {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        } else {
            threads
        };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("embed-{i}"))
            .build()
            .map_err(|e| load_err(dir, format!("cannot start {threads} threads: {e}")))?;

        let folder = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let name = if folder.eq_ignore_ascii_case("all-minilm-l6-v2") || folder.is_empty() {
            "all-MiniLM-L6-v2".to_string()
        } else {
            folder
        };
        Ok(MiniLm {
            name,
            bert,
            tokenizer,
            cls,
            sep,
            max_tokens,
            threads,
            pool,
        })
    }

    /// Number of worker threads.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Token ids of `text` without special tokens; at most `limit` of them when `limit`
    /// is given (the first ones). A long text is first tokenised from a prefix cut at
    /// whitespace: the BERT pre-tokeniser splits at whitespace, so the prefix's tokens are
    /// exactly the first tokens of the whole text, and if there are enough of them the
    /// rest need not be tokenised.
    fn ids(&self, text: &str, limit: Option<usize>) -> Result<Vec<u32>> {
        let encode = |t: &str| {
            self.tokenizer
                .encode_fast(t, false)
                .map(|e| e.get_ids().to_vec())
                .map_err(|e| Error::Tokenize(e.to_string()))
        };
        if let Some(limit) = limit
            && text.len() > PREFIX_BYTES
        {
            let mut cut = PREFIX_BYTES;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            if let Some(ws) = text[..cut].rfind(char::is_whitespace) {
                let ids = encode(&text[..ws])?;
                if ids.len() >= limit {
                    return Ok(ids[..limit].to_vec());
                }
            }
        }
        let mut ids = encode(text)?;
        if let Some(limit) = limit {
            ids.truncate(limit);
        }
        Ok(ids)
    }

    /// `[CLS] ids… [SEP]`, truncated to `max_tokens` in all.
    fn model_input(&self, text: &str) -> Result<Vec<u32>> {
        let body = self.ids(text, Some(self.max_tokens - 2))?;
        let mut seq = Vec::with_capacity(body.len() + 2);
        seq.push(self.cls);
        seq.extend_from_slice(&body);
        seq.push(self.sep);
        Ok(seq)
    }

    /// Split sequences (indices into `seqs`) into packs of whole sequences.
    /// Longest-processing-time-first: sequences sorted by length, each to the lightest pack.
    fn packs(&self, seqs: &[Vec<u32>]) -> Vec<Vec<usize>> {
        let total: usize = seqs.iter().map(Vec::len).sum();
        let threads = self.threads.max(1);
        if seqs.len() < 2
            || threads < 2 && total <= PACK_TOKENS
            || total < threads * MIN_SPLIT_TOKENS
        {
            return vec![(0..seqs.len()).collect()];
        }
        let mut n = total.div_ceil(PACK_TOKENS).max(threads);
        n = n.div_ceil(threads) * threads;
        n = n.min(seqs.len());
        let mut order: Vec<usize> = (0..seqs.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(seqs[i].len()));
        let mut packs: Vec<(usize, Vec<usize>)> = vec![(0, Vec::new()); n];
        for i in order {
            // Cost: the dense layers are linear in length, attention quadratic.
            let l = seqs[i].len();
            let cost = l * 1024 + l * l;
            let lightest = packs
                .iter_mut()
                .min_by_key(|(c, _)| *c)
                .expect("n >= 1 packs");
            lightest.0 += cost;
            lightest.1.push(i);
        }
        packs
            .into_iter()
            .map(|(_, p)| p)
            .filter(|p| !p.is_empty())
            .collect()
    }

    /// Embed already-wrapped sequences; vectors come back L2-normalised, in order.
    fn embed_seqs(&self, seqs: &[Vec<u32>]) -> Vec<Vec<f32>> {
        use rayon::prelude::*;
        let packs = self.packs(seqs);
        let run = |pack: &Vec<usize>, par: Par<'_>| {
            let views: Vec<&[u32]> = pack.iter().map(|&i| seqs[i].as_slice()).collect();
            self.bert.encode_pack(&views, par)
        };
        let results: Vec<Vec<Vec<f32>>> = if packs.len() == 1 {
            let tokens: usize = packs[0].iter().map(|&i| seqs[i].len()).sum();
            if self.threads > 1 && tokens <= ops::SMALL_ROWS {
                // A query: the caller's thread plus one helper kept awake for the pass
                // (see `team.rs`; a rayon fan-out per matmul gained nothing).
                vec![Team::run(|team| run(&packs[0], Par::Team(team)))]
            } else if self.threads > 1 {
                let par = Par::Pool(Parallelism::Rayon(self.threads));
                vec![self.pool.install(|| run(&packs[0], par))]
            } else {
                // One thread: run on the caller's, without a hop to the pool's worker
                // (two context switches per query).
                vec![run(&packs[0], Par::Pool(Parallelism::None))]
            }
        } else {
            self.pool.install(|| {
                packs
                    .par_iter()
                    .map(|p| run(p, Par::Pool(Parallelism::None)))
                    .collect()
            })
        };
        let mut out = vec![Vec::new(); seqs.len()];
        for (pack, vecs) in packs.iter().zip(results) {
            for (&i, mut v) in pack.iter().zip(vecs) {
                let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
                if norm > 0.0 {
                    v.iter_mut().for_each(|x| *x /= norm);
                }
                out[i] = v;
            }
        }
        out
    }
}

fn load_bert(t: &Tensors<'_>, cfg: BertConfig) -> Result<Bert> {
    let h = cfg.hidden;
    let word = t.get("embeddings.word_embeddings.weight", &[cfg.vocab, h])?;
    let mut pos_type0 = t.get(
        "embeddings.position_embeddings.weight",
        &[cfg.max_positions, h],
    )?;
    let types = t.get(
        "embeddings.token_type_embeddings.weight",
        &[cfg.type_vocab, h],
    )?;
    for row in pos_type0.chunks_exact_mut(h) {
        for (p, ty) in row.iter_mut().zip(&types[..h]) {
            *p += ty;
        }
    }
    let emb_ln_g = t.get("embeddings.LayerNorm.weight", &[h])?;
    let emb_ln_b = t.get("embeddings.LayerNorm.bias", &[h])?;
    let scale = 1.0 / (cfg.head_dim() as f32).sqrt();
    let mut layers = Vec::with_capacity(cfg.layers);
    for l in 0..cfg.layers {
        let p = format!("encoder.layer.{l}");
        let mut wq = t.get(&format!("{p}.attention.self.query.weight"), &[h, h])?;
        let mut bq = t.get(&format!("{p}.attention.self.query.bias"), &[h])?;
        wq.iter_mut().for_each(|w| *w *= scale);
        bq.iter_mut().for_each(|b| *b *= scale);
        let wk = t.get(&format!("{p}.attention.self.key.weight"), &[h, h])?;
        let bk = t.get(&format!("{p}.attention.self.key.bias"), &[h])?;
        let wv = t.get(&format!("{p}.attention.self.value.weight"), &[h, h])?;
        let bv = t.get(&format!("{p}.attention.self.value.bias"), &[h])?;
        let w = [wq, wk, wv].concat();
        let b = [bq, bk, bv].concat();
        layers.push(Layer {
            qkv: Linear::from_torch(&w, b, 3 * h, h),
            attn_out: t.linear(&format!("{p}.attention.output.dense"), h, h)?,
            ln1_g: t.get(&format!("{p}.attention.output.LayerNorm.weight"), &[h])?,
            ln1_b: t.get(&format!("{p}.attention.output.LayerNorm.bias"), &[h])?,
            ffn_in: t.linear(&format!("{p}.intermediate.dense"), cfg.intermediate, h)?,
            ffn_out: t.linear(&format!("{p}.output.dense"), h, cfg.intermediate)?,
            ln2_g: t.get(&format!("{p}.output.LayerNorm.weight"), &[h])?,
            ln2_b: t.get(&format!("{p}.output.LayerNorm.bias"), &[h])?,
        });
    }
    Ok(Bert {
        cfg,
        word,
        pos_type0,
        emb_ln_g,
        emb_ln_b,
        layers,
    })
}

impl Embedder for MiniLm {
    fn name(&self) -> &str {
        &self.name
    }

    fn dim(&self) -> usize {
        self.bert.cfg.hidden
    }

    fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    /// Tokens of `text` without `[CLS]`/`[SEP]`, not truncated. A text the tokenizer
    /// rejects counts as its number of bytes (an upper bound), so chunk budgets stay safe.
    fn count_tokens(&self, text: &str) -> usize {
        self.ids(text, None)
            .map(|ids| ids.len())
            .unwrap_or(text.len())
    }

    /// # Errors
    /// [`Error::Tokenize`] when the tokenizer fails on a text.
    fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        use rayon::prelude::*;
        let seqs: Vec<Vec<u32>> = if texts.len() > 1 && self.threads > 1 {
            self.pool.install(|| {
                texts
                    .par_iter()
                    .map(|t| self.model_input(t))
                    .collect::<Result<Vec<_>>>()
            })?
        } else {
            texts
                .iter()
                .map(|t| self.model_input(t))
                .collect::<Result<_>>()?
        };
        Ok(self.embed_seqs(&seqs))
    }
}
