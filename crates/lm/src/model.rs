//! The loaded model and its forward pass, written out explicitly for the llama family
//! (Qwen2 = llama + q/k/v biases + NeoX RoPE) so every residual-stream point the lab
//! needs is a named line of code where a [`Hook`] can be called.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::ops::softmax_last_dim;
use candle_nn::rotary_emb::{rope, rope_i};

use crate::config::{ModelConfig, meta_f64, meta_str};
use crate::gguf::{GgufFile, GgufInfo};
use crate::hooks::{Hook, HookContext, HookPoint};
use crate::linear::QLinear;
use crate::session::Session;
use crate::template::ChatTemplate;
use crate::tokenizer::Tokenizer;
use crate::{Error, Result};

/// How to load a model.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Worker threads for the forward pass: the matmul kernels and candle's own
    /// parallel ops run inside a pool of this many threads (`None`: rayon's global
    /// pool, all cores). A forward call made from a worker of another rayon pool runs
    /// in that pool instead (the lab's lanes run passes side by side that way).
    pub threads: Option<usize>,
    /// Where weights and activations live (CPU by default; CUDA with the `cuda` feature).
    pub device: Device,
    /// Run matmuls of at least this many rows (tokens × batch rows in one forward call)
    /// as f32 GEMMs over dequantized weight panels instead of the 8-bit kernels: faster
    /// for the lab's large batched prompt passes, and numerically closer to f32 (not
    /// to llama.cpp). `None` (the default): always the 8-bit kernels, as llama.cpp.
    pub f32_gemm_rows: Option<usize>,
    /// Run matmuls of at least this many rows on Intel AMX bf16 tiles where the CPU
    /// and OS have them (`overseer_kernels::Bf16Matrix::available`; elsewhere this is
    /// ignored): activations rounded to bf16, f32 accumulation, each weight matrix
    /// packed to bf16 on its first such call (2 bytes per weight, kept). Checked before
    /// `f32_gemm_rows`. `None` (the default): never.
    pub amx_rows: Option<usize>,
    /// Attention on the CPU through `overseer_kernels::Attention`, which reads the f16
    /// KV cache in place, instead of candle's matmuls over the cache converted to f32 at
    /// every layer of every call: faster, with a summation order that moves logits
    /// slightly off llama.cpp's (see `kernel_attention` in model.rs). `false` (the
    /// default): candle's, unless the program called [`set_kernel_attention_default`].
    pub kernel_attention: bool,
    /// Highest SIMD level the CPU matmul kernels may use (`None`: the best this CPU
    /// has, `overseer_kernels::Level::detect`). With AVX-512 VNNI, matmuls of 16 rows or
    /// more run kernels that round differently from the few-row ones, so one prompt's
    /// numbers can depend on how many rows share its call; capping at
    /// `Level::Avx2` makes every call round alike (A/B runs, batch-invariance checks).
    pub kernel_level: Option<overseer_kernels::Level>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            threads: None,
            device: Device::Cpu,
            f32_gemm_rows: None,
            amx_rows: None,
            kernel_attention: false,
            kernel_level: None,
        }
    }
}

impl LoadOptions {
    /// CPU with `threads` workers.
    pub fn cpu(threads: Option<usize>) -> Self {
        Self {
            threads,
            device: Device::Cpu,
            f32_gemm_rows: None,
            amx_rows: None,
            kernel_attention: false,
            kernel_level: None,
        }
    }

    /// The CUDA device `ordinal` (needs the `cuda` cargo feature; `scripts/build-cuda`
    /// builds it). Weights stay in their GGUF quantization on the GPU and run on
    /// candle's CUDA kernels; `overseer-kernels` (CPU only) is not used there.
    ///
    /// Errors: [`Error::InvalidArgument`] when this build has no CUDA support;
    /// [`Error::Candle`] when the driver or the GPU `ordinal` cannot be opened.
    pub fn cuda(ordinal: usize) -> Result<Self> {
        if !Self::cuda_compiled() {
            return Err(Error::InvalidArgument(
                "this build has no CUDA support: rebuild with `--features cuda` (scripts/build-cuda)"
                    .into(),
            ));
        }
        let device = Device::new_cuda(ordinal)?;
        #[cfg(feature = "cuda")]
        candle_core::quantized::cuda::set_force_dmmv(!cuda_fast_mmq());
        Ok(Self {
            threads: None,
            device,
            f32_gemm_rows: None,
            amx_rows: None,
            kernel_attention: false,
            kernel_level: None,
        })
    }

    /// Whether this build was compiled with the `cuda` feature.
    pub fn cuda_compiled() -> bool {
        cfg!(feature = "cuda")
    }
}

/// Whether candle's fast CUDA quantized matmuls (MMVQ/MMQ: activations quantized to
/// 8 bits in its own blocks) run instead of its plain path (dequantized weights, f32
/// activations), [`set_cuda_fast_mmq`]. Off by default: on SmolLM2 the fast path's
/// logits drift from the CPU's by up to 57% of their scale (the plain path: under 10%,
/// like the CPU's own 8-bit vs f32 paths) and change the greedy continuation, for
/// ~18% more decode speed (docs/BENCHMARKS.md, "CUDA check"). The switch is global to
/// candle, so it is set whenever a CUDA device is opened.
#[cfg(feature = "cuda")]
fn cuda_fast_mmq() -> bool {
    CUDA_FAST_MMQ.load(std::sync::atomic::Ordering::Relaxed)
}

static CUDA_FAST_MMQ: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
static KERNEL_ATTENTION: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Use candle's fast CUDA quantized matmuls for CUDA devices opened from now on (see
/// `cuda_fast_mmq`; off by default). Configuration, set by the program at start-up
/// (the `overseer` binary maps `OVERSEER_CUDA_FAST_MMQ=1` to it).
pub fn set_cuda_fast_mmq(on: bool) {
    CUDA_FAST_MMQ.store(on, std::sync::atomic::Ordering::Relaxed);
}

/// Run the CPU attention of every model loaded from now on on the f16 kernel, as if
/// each had [`LoadOptions::kernel_attention`] set (see `kernel_attention`; off by
/// default). Configuration, set by the program at start-up (the `overseer` binary
/// maps `OVERSEER_KERNEL_ATTENTION=1` to it).
pub fn set_kernel_attention_default(on: bool) {
    KERNEL_ATTENTION.store(on, std::sync::atomic::Ordering::Relaxed);
}

/// Which logits a forward call returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Logits {
    /// `(batch, vocab)` at each row's last position (the usual case for generation).
    #[default]
    Last,
    /// `(batch, seq, vocab)` at every position of the call.
    All,
    /// No LM head: returns the final-norm output `(batch, seq, hidden)`.
    None,
}

/// Where [`Model::forward_from`] starts: layer `layer`, with `resid` `(rows, seq,
/// hidden)` f32 as the residual stream entering it (its `ResidPre(layer)` before hooks).
#[derive(Debug, Clone)]
pub struct Resume {
    pub layer: usize,
    pub resid: Tensor,
}

/// Options of one forward call.
#[derive(Default)]
pub struct ForwardOptions<'a> {
    /// Hook called at the residual-stream points it wants.
    pub hooks: Option<&'a mut dyn Hook>,
    pub logits: Logits,
}

impl<'a> ForwardOptions<'a> {
    /// Last-position logits, no hooks.
    pub fn last() -> Self {
        Self::default()
    }

    /// With `hooks`.
    pub fn with_hooks(mut self, hooks: Option<&'a mut dyn Hook>) -> Self {
        self.hooks = hooks;
        self
    }

    /// Returning `logits`.
    pub fn logits(mut self, logits: Logits) -> Self {
        self.logits = logits;
        self
    }
}

struct Layer {
    attn_norm: Tensor,
    q: QLinear,
    k: QLinear,
    v: QLinear,
    q_bias: Option<Tensor>,
    k_bias: Option<Tensor>,
    v_bias: Option<Tensor>,
    o: QLinear,
    ffn_norm: Tensor,
    gate: QLinear,
    up: QLinear,
    down: QLinear,
}

/// A loaded GGUF chat model. Read-only after loading (`Send + Sync`): the mutable state
/// of a conversation lives in a [`Session`].
pub struct Model {
    config: ModelConfig,
    info: GgufInfo,
    tokenizer: Tokenizer,
    template: ChatTemplate,
    device: Device,
    threads: Option<usize>,
    /// Token embedding `(vocab, hidden)`; also the LM head when embeddings are tied.
    embed: QLinear,
    lm_head: Option<QLinear>,
    layers: Vec<Layer>,
    output_norm: Tensor,
    /// How RoPE angles are computed.
    rope: Rope,
    /// The pool of `threads` workers every forward call runs in (`None`: the global one).
    pool: Option<rayon::ThreadPool>,
    /// `LoadOptions::kernel_attention`, or [`set_kernel_attention_default`].
    kernel_attention: bool,
}

/// Read a norm or bias vector as f32 of length `n`.
fn vector(f: &mut GgufFile, name: &str, n: usize, device: &Device) -> Result<Tensor> {
    let t = f.tensor(name, Some(&[n]), device)?;
    Ok(t.dequantize(device)?.to_dtype(DType::F32)?)
}

fn linear(
    f: &mut GgufFile,
    name: &str,
    out: usize,
    inp: usize,
    opts: &LoadOptions,
) -> Result<QLinear> {
    let device = &opts.device;
    if device.is_cpu() {
        match f.mapped(name, &[out, inp]) {
            Ok((dtype, map, range)) => {
                if let Some(l) = QLinear::from_bytes(dtype, out, inp, map, range)? {
                    return Ok(l
                        .with_f32_rows(opts.f32_gemm_rows)
                        .with_amx_rows(opts.amx_rows)
                        .with_level(opts.kernel_level));
                }
            }
            // A file system that cannot map files: read the tensor instead.
            Err(Error::Io { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(QLinear::new(f.tensor(name, Some(&[out, inp]), device)?)?
        .with_f32_rows(opts.f32_gemm_rows)
        .with_amx_rows(opts.amx_rows)
        .with_level(opts.kernel_level))
}

impl Model {
    /// Load a GGUF model file (architectures `llama` and `qwen2`).
    ///
    /// Errors: [`Error::Io`], [`Error::BadMagic`], [`Error::Corrupt`] (truncated file,
    /// wrong tensor shape), [`Error::UnsupportedArchitecture`], [`Error::MissingTensor`],
    /// [`Error::Metadata`]; all name the file.
    pub fn load(path: &Path, opts: &LoadOptions) -> Result<Model> {
        let mut f = GgufFile::open(path)?;
        let arch = f.architecture()?;
        let config = ModelConfig::from_gguf(path, &f.content, arch)?;
        let info = f.info();
        let dev = &opts.device;
        let c = &config;
        let (h, hd) = (c.hidden, c.head_dim);
        let embed = linear(&mut f, "token_embd.weight", c.vocab, h, opts)?;
        let lm_head = if c.tied_embeddings {
            None
        } else {
            Some(linear(&mut f, "output.weight", c.vocab, h, opts)?)
        };
        let output_norm = vector(&mut f, "output_norm.weight", h, dev)?;
        let mut layers = Vec::with_capacity(c.n_layer);
        for l in 0..c.n_layer {
            let p = format!("blk.{l}");
            let (qd, kvd) = (c.n_head * hd, c.n_kv_head * hd);
            let bias = |f: &mut GgufFile, name: &str, n: usize| -> Result<Option<Tensor>> {
                if arch.qkv_bias() {
                    Ok(Some(vector(f, &format!("{p}.{name}.bias"), n, dev)?))
                } else if f.has_tensor(&format!("{p}.{name}.bias")) {
                    // Some llama fine-tunes carry attention biases too.
                    Ok(Some(vector(f, &format!("{p}.{name}.bias"), n, dev)?))
                } else {
                    Ok(None)
                }
            };
            layers.push(Layer {
                attn_norm: vector(&mut f, &format!("{p}.attn_norm.weight"), h, dev)?,
                q: linear(&mut f, &format!("{p}.attn_q.weight"), qd, h, opts)?,
                k: linear(&mut f, &format!("{p}.attn_k.weight"), kvd, h, opts)?,
                v: linear(&mut f, &format!("{p}.attn_v.weight"), kvd, h, opts)?,
                q_bias: bias(&mut f, "attn_q", qd)?,
                k_bias: bias(&mut f, "attn_k", kvd)?,
                v_bias: bias(&mut f, "attn_v", kvd)?,
                o: linear(&mut f, &format!("{p}.attn_output.weight"), h, qd, opts)?,
                ffn_norm: vector(&mut f, &format!("{p}.ffn_norm.weight"), h, dev)?,
                gate: linear(&mut f, &format!("{p}.ffn_gate.weight"), c.ffn, h, opts)?,
                up: linear(&mut f, &format!("{p}.ffn_up.weight"), c.ffn, h, opts)?,
                down: linear(&mut f, &format!("{p}.ffn_down.weight"), h, c.ffn, opts)?,
            });
        }
        // RoPE angles as ggml computes them (so positions rotate exactly like llama.cpp's,
        // whose greedy output the reference test compares with): in f32, the angle of
        // pair `i` is `pos * s^i` with `s = theta^(-2/d)` built by repeated
        // multiplication, divided by a per-frequency factor when the file has them
        // (Llama 3's `rope_freqs.weight`), times a linear scaling factor.
        let a = arch.gguf_name();
        let theta_scale = (c.rope_theta as f32).powf(-2.0 / hd as f32);
        let mut freq_factors = vec![1f32; hd / 2];
        if f.has_tensor("rope_freqs.weight") {
            freq_factors = f
                .tensor("rope_freqs.weight", Some(&[hd / 2]), dev)?
                .dequantize(&Device::Cpu)?
                .to_dtype(DType::F32)?
                .to_vec1::<f32>()?;
        }
        let mut freq_scale = 1f32;
        match meta_str(&f.content, &format!("{a}.rope.scaling.type")) {
            None | Some("none") => {}
            Some("linear") => {
                if let Some(s) = meta_f64(&f.content, &format!("{a}.rope.scaling.factor"))
                    && s > 0.0
                {
                    freq_scale = 1.0 / s as f32;
                }
            }
            Some(other) => tracing::warn!(
                "{}: RoPE scaling '{other}' is not supported; using unscaled RoPE",
                path.display()
            ),
        }
        let rope = Rope {
            theta_scale,
            freq_factors,
            freq_scale,
        };
        let pool = match opts.threads {
            Some(n) if opts.device.is_cpu() => Some(
                rayon::ThreadPoolBuilder::new()
                    .num_threads(n.max(1))
                    .thread_name(|i| format!("overseer-lm-{i}"))
                    .build()
                    .map_err(|e| {
                        Error::InvalidArgument(format!("cannot start {n} threads: {e}"))
                    })?,
            ),
            _ => None,
        };
        let tokenizer = Tokenizer::from_gguf(&f.content, path)?;
        let template = ChatTemplate::from_gguf(&f.content, &tokenizer)?;
        Ok(Model {
            config,
            info,
            tokenizer,
            template,
            device: dev.clone(),
            threads: opts.threads,
            embed,
            lm_head,
            layers,
            output_norm,
            rope,
            pool,
            kernel_attention: opts.kernel_attention || kernel_attention(),
        })
    }

    /// Hyper-parameters.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// Summary of the file the model was loaded from.
    pub fn info(&self) -> &GgufInfo {
        &self.info
    }

    /// The tokenizer stored in the file.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// The file's chat template (a ChatML fallback when it has none).
    pub fn chat_template(&self) -> &ChatTemplate {
        &self.template
    }

    /// The device holding weights and activations.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Worker threads requested at load time.
    pub fn threads(&self) -> Option<usize> {
        self.threads
    }

    /// A fresh session with an empty KV cache for `batch` rows.
    pub fn session(&self, batch: usize) -> Session {
        Session::new(batch.max(1), self.config.n_layer)
    }

    /// Feed `tokens[b]` to row `b` of the session and return the logits chosen by
    /// `o.logits`.
    ///
    /// The first call on a session is the prefill: rows may differ in length and are
    /// left-padded (the padding stays masked for the session's lifetime, and RoPE
    /// positions start at 0 at each row's first real token, so a row's logits match its
    /// unbatched run). Later calls must give every row the same number of tokens
    /// (usually 1). The first call on a session made by [`Session::fork`] is like a
    /// prefill that continues the shared prefix: rows may differ in length and are
    /// padded between the prefix and their tokens.
    ///
    /// A single row without hooks is fed in chunks of [`PREFILL_CHUNK`] tokens (as
    /// llama.cpp feeds micro-batches), so memory for attention scores and MLP activations
    /// stays bounded however long the prompt; the result is the same as one call. With
    /// hooks the call is never split, so a hook sees every position at once.
    ///
    /// Errors: [`Error::InvalidArgument`] (wrong number of rows, empty row, ragged later
    /// call, token id out of range), [`Error::ContextOverflow`], [`Error::Hook`],
    /// [`Error::Candle`]. On error the session is left as it was before the call.
    pub fn forward(
        &self,
        s: &mut Session,
        tokens: &[Vec<u32>],
        o: ForwardOptions<'_>,
    ) -> Result<Tensor> {
        self.guarded(s, |s| self.forward_chunked(s, tokens, o))
    }

    /// The LM head (the output matrix, or the tied embedding) applied to final-norm
    /// outputs `x` `(..., hidden)`, as [`Logits::All`] does: for callers that want
    /// logits at only some positions of a [`Logits::None`] call (the vocabulary makes
    /// them the largest tensor of a pass).
    ///
    /// Errors: [`Error::InvalidArgument`] if the last dimension is not the hidden size or
    /// `x` is on another device; [`Error::Candle`].
    pub fn lm_head(&self, x: &Tensor) -> Result<Tensor> {
        if x.dims().last() != Some(&self.config.hidden) {
            return Err(Error::InvalidArgument(format!(
                "LM head of input size {} applied to shape {:?}",
                self.config.hidden,
                x.dims()
            )));
        }
        self.lm_head.as_ref().unwrap_or(&self.embed).forward(x)
    }

    /// [`Model::forward`] starting at layer `from.layer` with `from.resid` as the
    /// residual stream entering it, instead of embedding `tokens` and running the
    /// layers below. `tokens` still give the rows' lengths (hence padding, RoPE
    /// positions and the mask) and must be those the residual was computed from.
    ///
    /// Why: an intervention that changes nothing below layer L (activation addition at
    /// `ResidPre(L)`) gives, on the same rows, exactly the result of a full pass when
    /// started at L from the unmodified model's `ResidPre(L)` (captured once with a
    /// hook): layers 0..L are not computed again. Hooks see `ResidPre(L)` first (so an
    /// intervention there applies to `from.resid`); points below L are never called.
    ///
    /// The session's KV cache then holds only layers L.. : every later call on it, and
    /// on its forks, must start at the same layer (a session filled by
    /// [`Model::forward`] starts at 0).
    ///
    /// Errors: those of [`Model::forward`], and [`Error::InvalidArgument`] when
    /// `from.layer > n_layer`, `from.resid` is not an f32 `(rows, seq, hidden)` tensor
    /// on the model's device for the padded `seq` of `tokens`, or the session's cache
    /// starts at another layer.
    pub fn forward_from(
        &self,
        s: &mut Session,
        tokens: &[Vec<u32>],
        from: &Resume,
        o: ForwardOptions<'_>,
    ) -> Result<Tensor> {
        self.guarded(s, |s| self.forward_inner(s, tokens, o, Some(from)))
    }

    /// Run `f` on the model's thread pool (if it has one) and roll the session back if
    /// it fails.
    ///
    /// A call made from a worker of some rayon pool runs in that pool instead: a caller
    /// that runs independent passes side by side (the lab's lanes: one single-thread
    /// pool per pass) keeps each pass on its own threads. Installing the model's pool
    /// there would queue the passes onto the same workers again.
    fn guarded(
        &self,
        s: &mut Session,
        f: impl FnOnce(&mut Session) -> Result<Tensor> + Send,
    ) -> Result<Tensor> {
        let mark = s.mark();
        let r = match &self.pool {
            Some(pool) if rayon::current_thread_index().is_none() => pool.install(|| f(s)),
            _ => f(s),
        };
        if r.is_err() {
            s.rollback(mark);
        }
        r
    }

    /// [`Model::forward`] for one row split into chunks; anything else in one call.
    fn forward_chunked(
        &self,
        s: &mut Session,
        tokens: &[Vec<u32>],
        o: ForwardOptions<'_>,
    ) -> Result<Tensor> {
        let [row] = tokens else {
            return self.forward_inner(s, tokens, o, None);
        };
        if o.hooks.is_some() || row.len() <= PREFILL_CHUNK {
            return self.forward_inner(s, tokens, o, None);
        }
        // Refuse an overflow before computing any chunk (the last one would fail).
        let total = s.len + row.len();
        if total > self.config.context_length {
            return Err(Error::ContextOverflow {
                tokens: total,
                context: self.config.context_length,
            });
        }
        let mut parts = Vec::new();
        let n = row.len().div_ceil(PREFILL_CHUNK);
        for (i, chunk) in row.chunks(PREFILL_CHUNK).enumerate() {
            let last = i + 1 == n;
            // Every chunk's output is kept for `All` and `None` (all positions); for
            // `Last` only the last chunk goes through the LM head.
            let logits = match o.logits {
                Logits::Last if !last => Logits::None,
                other => other,
            };
            let out = self.forward_inner(
                s,
                &[chunk.to_vec()],
                ForwardOptions {
                    hooks: None,
                    logits,
                },
                None,
            )?;
            if o.logits != Logits::Last || last {
                parts.push(out);
            }
        }
        if parts.len() == 1 {
            Ok(parts.pop().expect("one part"))
        } else {
            Ok(Tensor::cat(&parts, 1)?)
        }
    }

    fn forward_inner(
        &self,
        s: &mut Session,
        tokens: &[Vec<u32>],
        o: ForwardOptions<'_>,
        from: Option<&Resume>,
    ) -> Result<Tensor> {
        let c = &self.config;
        let b = s.batch;
        if tokens.len() != b {
            return Err(Error::InvalidArgument(format!(
                "{} rows of tokens for a session of {b} rows",
                tokens.len()
            )));
        }
        // The call that opens the rows' prompts (a prefill, or the first call on a forked
        // session) may be ragged: shorter rows are padded at its start.
        let opening = s.open;
        let seq = tokens.iter().map(Vec::len).max().unwrap_or(0);
        if seq == 0 {
            return Err(Error::InvalidArgument("no tokens to feed".into()));
        }
        if let Some(i) = tokens.iter().position(|t| t.len() != seq) {
            if !opening {
                return Err(Error::InvalidArgument(format!(
                    "after the first call every row must get the same number of tokens (row {i} has {}, expected {seq})",
                    tokens[i].len()
                )));
            }
            if let Some(e) = tokens.iter().position(Vec::is_empty) {
                return Err(Error::InvalidArgument(format!("row {e} has no tokens")));
            }
        }
        if let Some(&bad) = tokens.iter().flatten().find(|&&t| t as usize >= c.vocab) {
            return Err(Error::InvalidArgument(format!(
                "token id {bad} is outside the vocabulary of {} tokens",
                c.vocab
            )));
        }
        let first = from.map_or(0, |r| r.layer);
        if first > c.n_layer {
            return Err(Error::InvalidArgument(format!(
                "cannot start at layer {first} of a {}-layer model",
                c.n_layer
            )));
        }
        if s.len > 0 && s.first_layer != first {
            return Err(Error::InvalidArgument(format!(
                "this session's KV cache starts at layer {}, the call at layer {first}",
                s.first_layer
            )));
        }
        let start = s.len;
        let total = start + seq;
        if total > c.context_length {
            return Err(Error::ContextOverflow {
                tokens: total,
                context: c.context_length,
            });
        }
        if opening {
            s.pad = tokens.iter().map(|t| seq - t.len()).collect();
            s.pad_start = start;
            s.open = false;
        }
        let pad = s.pad.clone();
        let any_pad = pad.iter().any(|&p| p > 0);

        // Token ids, padded at the start of the opening call with id 0 (masked, never
        // attended to by real tokens).
        let mut ids = Vec::with_capacity(b * seq);
        for (r, t) in tokens.iter().enumerate() {
            let p = if opening { pad[r] } else { 0 };
            ids.extend(std::iter::repeat_n(0u32, p));
            ids.extend_from_slice(t);
        }
        let mut x = match from {
            None => self.embed.embedding(&ids)?.reshape((b, seq, c.hidden))?,
            Some(r) => {
                let ok = r.resid.dims() == [b, seq, c.hidden]
                    && r.resid.dtype() == DType::F32
                    && r.resid.device().same_device(&self.device);
                if !ok {
                    return Err(Error::InvalidArgument(format!(
                        "a residual of shape {:?} ({:?}) cannot enter layer {first} for {b} rows of {seq} positions and hidden size {}",
                        r.resid.dims(),
                        r.resid.dtype(),
                        c.hidden
                    )));
                }
                r.resid.clone()
            }
        };
        s.first_layer = first;

        // Per-row RoPE tables (b, seq, head_dim/2): padding slots are not counted, so a
        // row's positions are those of its unpadded run.
        let half = c.head_dim / 2;
        let mut cos = Vec::with_capacity(b * seq * half);
        let mut sin = Vec::with_capacity(b * seq * half);
        for r in 0..b {
            for abs in start..total {
                self.rope.angles(s.position(r, abs), &mut cos, &mut sin);
            }
        }
        let cos = Tensor::from_vec(cos, (b, seq, half), &self.device)?;
        let sin = Tensor::from_vec(sin, (b, seq, half), &self.device)?;

        // Additive mask (b, 1, seq, total): hide padding keys and future keys. A padding
        // query may see itself so its softmax row stays finite.
        let mask = if seq > 1 || any_pad {
            let mut m = vec![0f32; b * seq * total];
            for r in 0..b {
                for i in 0..seq {
                    let qi = start + i;
                    let row = &mut m[(r * seq + i) * total..(r * seq + i + 1) * total];
                    for (j, v) in row.iter_mut().enumerate() {
                        if j > qi || (j != qi && s.is_pad(r, j)) {
                            *v = f32::NEG_INFINITY;
                        }
                    }
                }
            }
            Some(Tensor::from_vec(m, (b, 1, seq, total), &self.device)?)
        } else {
            None
        };

        let cx = HookContext {
            batch: b,
            seq_len: seq,
            start_pos: start,
            pad: &pad,
            opening,
        };
        let mut hooks = o.hooks;
        let eps = c.rms_eps as f32;
        let (nh, nkv, hd) = (c.n_head, c.n_kv_head, c.head_dim);
        let scale = 1.0 / (hd as f64).sqrt();
        let neox = c.architecture.rope_neox();
        // When only the last position's logits are wanted, the last layer needs every
        // position's keys and values but the rest of its work (queries, attention, o
        // projection, MLP) only at the last position: ~1/n_layer of a prompt pass
        // saved. Not when a hook would see (or record) those points at every position.
        let last = c.n_layer - 1;
        let last_only = o.logits == Logits::Last
            && seq > 1
            && hooks.as_ref().is_none_or(|h| {
                h.positionwise()
                    || ![
                        HookPoint::AttnOut(last),
                        HookPoint::MlpOut(last),
                        HookPoint::ResidPre(c.n_layer),
                        HookPoint::FinalNorm,
                    ]
                    .iter()
                    .any(|&p| h.wants(p))
            });
        // What the hooks after the narrowing are told: one position, the call's last.
        let cx_last = HookContext {
            seq_len: 1,
            start_pos: total - 1,
            ..cx
        };
        for (l, layer) in self.layers.iter().enumerate().skip(first) {
            x = apply_hook(&mut hooks, HookPoint::ResidPre(l), x, &cx)?;
            let narrow = last_only && l == last;
            let (qn, lcx) = if narrow { (1, &cx_last) } else { (seq, &cx) };

            // Attention.
            let h = rms_norm(&x, &layer.attn_norm, eps)?;
            let proj = |h: &Tensor,
                        n: usize,
                        lin: &QLinear,
                        bias: &Option<Tensor>,
                        heads: usize|
             -> Result<Tensor> {
                let mut y = lin.forward(h)?;
                if let Some(bias) = bias {
                    y = y.broadcast_add(bias)?;
                }
                Ok(y.reshape((b, n, heads, hd))?
                    .transpose(1, 2)?
                    .contiguous()?)
            };
            // Each intermediate is dropped as soon as the next exists (shadowing would
            // keep the un-rotated q and k and the normed input alive through attention,
            // which is where a prefill's memory peaks).
            let (q, k, v) = {
                let (q, qcos, qsin) = if narrow {
                    let hq = h.narrow(1, seq - 1, 1)?.contiguous()?;
                    (
                        proj(&hq, 1, &layer.q, &layer.q_bias, nh)?,
                        cos.narrow(1, seq - 1, 1)?.contiguous()?,
                        sin.narrow(1, seq - 1, 1)?.contiguous()?,
                    )
                } else {
                    (
                        proj(&h, seq, &layer.q, &layer.q_bias, nh)?,
                        cos.clone(),
                        sin.clone(),
                    )
                };
                let k = proj(&h, seq, &layer.k, &layer.k_bias, nkv)?;
                let v = proj(&h, seq, &layer.v, &layer.v_bias, nkv)?;
                drop(h);
                if neox {
                    (rope(&q, &qcos, &qsin)?, rope(&k, &cos, &sin)?, v)
                } else {
                    (rope_i(&q, &qcos, &qsin)?, rope_i(&k, &cos, &sin)?, v)
                }
            };
            // Attention at llama.cpp's precision (its default F16 KV cache, without flash
            // attention): K and V are stored as f16, Q and the softmax probabilities are
            // rounded to f16 for the two products, which accumulate in f32. Matching it
            // keeps greedy decoding on llama.cpp's path; the loss against f32 is within
            // what 8-bit activations already cost (see tests/reference.rs). Candle's
            // matmuls run on the cache converted to f32 per layer; with
            // OVERSEER_KERNEL_ATTENTION=1 the f16 kernel reads it in place instead.
            let (k, v) = s.caches[l].append(&k, &v, s.reserved)?;
            let qmask = match &mask {
                Some(m) if narrow => Some(m.narrow(2, seq - 1, 1)?.contiguous()?),
                other => other.clone(),
            };
            let y = if self.device.is_cpu() && self.kernel_attention {
                attention_cpu(&q, &k, &v, qmask.as_ref(), nkv, scale as f32)?
            } else {
                attention_candle(&q, &k, &v, qmask.as_ref(), nkv, scale)?
            };
            let attn_out = layer.o.forward(&y)?;
            let attn_out = apply_hook(&mut hooks, HookPoint::AttnOut(l), attn_out, lcx)?;
            if narrow {
                x = x.narrow(1, seq - 1, 1)?;
            }
            x = (x + attn_out)?;
            debug_assert_eq!(x.dim(1)?, qn);

            // SwiGLU MLP.
            let h = rms_norm(&x, &layer.ffn_norm, eps)?;
            let gate = candle_nn::ops::silu(&layer.gate.forward(&h)?)?;
            let up = layer.up.forward(&h)?;
            let mlp_out = layer.down.forward(&(gate * up)?)?;
            let mlp_out = apply_hook(&mut hooks, HookPoint::MlpOut(l), mlp_out, lcx)?;
            x = (x + mlp_out)?;
        }
        // Narrowed at the last layer (see `last_only`)?
        let cx = if x.dim(1)? == seq { cx } else { cx_last };
        x = apply_hook(&mut hooks, HookPoint::ResidPre(c.n_layer), x, &cx)?;
        s.len = total;

        // Only the positions whose logits are wanted go through the final norm and head.
        if o.logits == Logits::Last && !wants(&hooks, HookPoint::FinalNorm) {
            x = x.narrow(1, x.dim(1)? - 1, 1)?;
        }
        let x = rms_norm(&x.contiguous()?, &self.output_norm, eps)?;
        let x = apply_hook(&mut hooks, HookPoint::FinalNorm, x, &cx)?;
        let head = self.lm_head.as_ref().unwrap_or(&self.embed);
        match o.logits {
            Logits::None => Ok(x),
            Logits::All => head.forward(&x),
            Logits::Last => {
                let last = x.narrow(1, x.dim(1)? - 1, 1)?.contiguous()?;
                head.forward(&last)?.squeeze(1).map_err(Into::into)
            }
        }
    }
}

/// Longest piece of a single-row prompt fed in one forward step (see [`Model::forward`]).
///
/// A step's transient memory grows with its length: the attention scores are
/// `n_head x chunk x context` f32 (two of them alive at once), the MLP activations
/// `chunk x ffn`. A prefill's peak resident memory is reached in these buffers, so the
/// chunk is kept short: 64 instead of 128 lowered `overseer bench`'s peak RSS on SmolLM2
/// (256-token prompt) by ~2.7 MB with no measurable change in prefill CPU time
/// (docs/BENCHMARKS.md). The fixture prompts of `tests/reference.rs` (at most 47
/// tokens) are fed in one step either way.
pub const PREFILL_CHUNK: usize = 64;

/// `t` rounded to f16 precision (kept as f32).
fn round_f16(t: &Tensor) -> Result<Tensor> {
    Ok(t.to_dtype(DType::F16)?.to_dtype(DType::F32)?)
}

/// Attention of `q` `(b, n_head, seq, head_dim)` (f32) over the cached f16 `k`, `v`
/// `(b, n_kv, total, head_dim)` with an additive `mask` of `b * seq * total` values
/// (e.g. `(b, 1, seq, total)`), on the CPU with the f16 kernel (which reads the cache
/// in place; see `overseer_kernels::Attention`). Returns `(b, seq, n_head * head_dim)`.
fn attention_cpu(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    n_kv: usize,
    scale: f32,
) -> Result<Tensor> {
    use candle_core::Storage;
    use half::f16;
    let (b, nh, seq, hd) = q.dims4()?;
    let total = k.dim(2)?;
    let q = q.contiguous()?;
    let mask = mask.map(Tensor::contiguous).transpose()?;
    let bad = |what: &str| Error::InvalidArgument(format!("attention kernel: {what}"));
    if let Some(m) = &mask
        && m.elem_count() != b * seq * total
    {
        return Err(bad(&format!("mask {:?} for {b}x{seq}x{total}", m.dims())));
    }
    let (qs, ql) = q.storage_and_layout();
    let Storage::Cpu(qc) = &*qs else {
        return Err(bad("q is not on the CPU"));
    };
    let qd = &qc.as_slice::<f32>()?[ql.start_offset()..][..b * nh * seq * hd];
    let (ks, kl) = k.storage_and_layout();
    let (vs, vl) = v.storage_and_layout();
    let (Storage::Cpu(kc), Storage::Cpu(vc)) = (&*ks, &*vs) else {
        return Err(bad("the KV cache is not on the CPU"));
    };
    fn view<'a>(data: &'a [f16], l: &candle_core::Layout) -> Option<overseer_kernels::KvView<'a>> {
        match *l.stride() {
            [bs, hs, ps, 1] => Some(overseer_kernels::KvView {
                data: data.get(l.start_offset()..)?,
                batch_stride: bs,
                head_stride: hs,
                pos_stride: ps,
            }),
            _ => None,
        }
    }
    let (Some(kv), Some(vv)) = (
        view(kc.as_slice::<f16>()?, kl),
        view(vc.as_slice::<f16>()?, vl),
    ) else {
        return Err(bad("KV head vectors are not contiguous"));
    };
    let guard = mask.as_ref().map(|m| m.storage_and_layout());
    let md = match &guard {
        Some((ms, ml)) => {
            let Storage::Cpu(mc) = &**ms else {
                return Err(bad("the mask is not on the CPU"));
            };
            Some(&mc.as_slice::<f32>()?[ml.start_offset()..][..b * seq * total])
        }
        None => None,
    };
    let mut out = vec![0f32; b * seq * nh * hd];
    overseer_kernels::Attention {
        batch: b,
        n_head: nh,
        n_kv_head: n_kv,
        seq,
        total,
        head_dim: hd,
        scale,
        q: qd,
        k: kv,
        v: vv,
        mask: md,
    }
    .run(&mut out)
    .map_err(|e| bad(&e.to_string()))?;
    Ok(Tensor::from_vec(out, (b, seq, nh * hd), q.device())?)
}

/// [`attention_cpu`] with candle ops, for other devices: the f16 cache is converted to
/// f32 for the products.
/// Whether the CPU attention runs on the f16 kernel for every model
/// ([`set_kernel_attention_default`]).
/// Off by default: the kernel decodes SmolLM2 ~1.3x faster here, but its summation order
/// moves logits by enough that SmolLM2's greedy path follows llama.cpp's on 2 of the 5
/// reference prompts instead of 3 (`tests/reference.rs`); candle's matmuls over the
/// same f16 cache, converted per layer, keep the earlier agreement.
fn kernel_attention() -> bool {
    KERNEL_ATTENTION.load(std::sync::atomic::Ordering::Relaxed)
}

fn attention_candle(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    n_kv: usize,
    scale: f64,
) -> Result<Tensor> {
    let (b, nh, seq, hd) = q.dims4()?;
    let total = k.dim(2)?;
    let n_rep = nh / n_kv;
    let (k, v) = (f16_to_f32(k)?, f16_to_f32(v)?);
    // Grouped-query attention without copying K/V: query head h uses KV head
    // h / n_rep, so (b, nh, seq, hd) regroups as (b, n_kv, n_rep*seq, hd).
    let q = round_f16(q)?.reshape((b, n_kv, n_rep * seq, hd))?;
    // The (b, nh, seq, total) score tensors are the largest of the pass: each is
    // dropped as soon as the next exists, to keep peak memory low.
    let scores = (q.matmul(&k.t()?)? * scale)?.reshape((b, nh, seq, total))?;
    let scores = match mask {
        Some(m) => {
            let masked = scores.broadcast_add(&m.reshape((b, 1, seq, total))?)?;
            drop(scores);
            masked
        }
        None => scores,
    };
    let probs = softmax_last_dim(&scores)?;
    drop(scores);
    let att = round_f16(&probs)?.reshape((b, n_kv, n_rep * seq, total))?;
    drop(probs);
    Ok(att
        .matmul(&v)?
        .reshape((b, nh, seq, hd))?
        .transpose(1, 2)?
        .reshape((b, seq, nh * hd))?)
}

/// The f16 KV cache as f32 for candle's matmuls (exact: every f16 is an f32). On the CPU
/// through `half`'s slice conversion (F16C, 8 values per instruction) instead of
/// `Tensor::to_dtype`, which converts one element at a time: with the whole cache
/// converted at every decode step, that per-element path cost SmolLM2 about a quarter of
/// its decode speed.
fn f16_to_f32(t: &Tensor) -> Result<Tensor> {
    if t.dtype() != DType::F16 || !t.device().is_cpu() {
        return Ok(t.to_dtype(DType::F32)?);
    }
    use half::slice::HalfFloatSliceExt;
    let dims = t.dims().to_vec();
    let h = t.flatten_all()?.to_vec1::<half::f16>()?;
    let mut out = vec![0.0f32; h.len()];
    h.convert_to_f32_slice(&mut out);
    Ok(Tensor::from_vec(out, dims, t.device())?)
}

/// RMSNorm `x / sqrt(mean(x²) + eps) * w` over the last dimension, on the CPU in
/// ggml's order of operations (sum of squares in f64, then `x * (1/sqrt(mean + eps))`,
/// then the weight), so that our activations round like llama.cpp's before they are
/// quantized to 8 bits; elsewhere candle's kernel.
fn rms_norm(x: &Tensor, w: &Tensor, eps: f32) -> Result<Tensor> {
    if !x.device().is_cpu() {
        return Ok(candle_nn::ops::rms_norm(x, w, eps)?);
    }
    let dims = x.dims().to_vec();
    let n = *dims.last().expect("activations have a hidden dimension");
    let mut v = x.flatten_all()?.to_vec1::<f32>()?;
    let w = w.to_vec1::<f32>()?;
    for row in v.chunks_exact_mut(n) {
        let sum: f64 = row.iter().map(|&a| f64::from(a * a)).sum();
        let mean = (sum / n as f64) as f32;
        let scale = 1.0 / (mean + eps).sqrt();
        for (a, &g) in row.iter_mut().zip(&w) {
            *a = (*a * scale) * g;
        }
    }
    Ok(Tensor::from_vec(v, dims, x.device())?)
}

/// RoPE angle parameters (see `Model::load`).
struct Rope {
    theta_scale: f32,
    freq_factors: Vec<f32>,
    freq_scale: f32,
}

impl Rope {
    /// Push the cosines and sines of position `pos`'s `head_dim / 2` angles.
    fn angles(&self, pos: usize, cos: &mut Vec<f32>, sin: &mut Vec<f32>) {
        let mut theta = pos as f32;
        for &ff in &self.freq_factors {
            let t = self.freq_scale * (theta / ff);
            cos.push(t.cos());
            sin.push(t.sin());
            theta *= self.theta_scale;
        }
    }
}

fn wants(hooks: &Option<&mut dyn Hook>, point: HookPoint) -> bool {
    hooks.as_ref().is_some_and(|h| h.wants(point))
}

/// Give the activation to the hook if it wants `point`; use its replacement if any.
fn apply_hook(
    hooks: &mut Option<&mut dyn Hook>,
    point: HookPoint,
    x: Tensor,
    cx: &HookContext<'_>,
) -> Result<Tensor> {
    let Some(h) = hooks.as_deref_mut() else {
        return Ok(x);
    };
    if !h.wants(point) {
        return Ok(x);
    }
    match h.call(point, &x, cx)? {
        None => Ok(x),
        Some(y) => {
            if y.dims() != x.dims() {
                return Err(Error::Hook(format!(
                    "hook at {point:?} returned shape {:?}, expected {:?}",
                    y.dims(),
                    x.dims()
                )));
            }
            Ok(y.to_dtype(DType::F32)?)
        }
    }
}

/// Index of the largest value (first one on ties).
pub(crate) fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best as u32
}

#[allow(dead_code)]
fn _assert_send_sync() {
    fn is<T: Send + Sync>() {}
    is::<Model>();
    is::<Session>();
}
