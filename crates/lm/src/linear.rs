//! `QLinear`: every weight matmul of the forward pass goes through this one type, so
//! the matmul kernels can be swapped without touching the model code.
//!
//! On the CPU, for the block formats `overseer-kernels` implements (Q4_0 Q4_1 Q5_0 Q5_1
//! Q8_0 Q4_K Q5_K Q6_K, F32, F16), the matmul runs on those kernels: runtime-dispatched
//! SIMD with 8-bit quantized activations, as llama.cpp does. candle's own CPU kernels
//! are scalar for Q4_1 and Q5_0, the bulk of the default models. The kernels borrow the
//! bytes of the candle `QTensor` (kept alive here), so no weight is copied. Other
//! formats and devices fall back to candle's `QMatMul`.
//!
//! Interface the model relies on: `new(QTensor)`, `forward(&Tensor)` for inputs of
//! shape `(..., in)` giving `(..., out)`, `embedding(&[u32])` returning the
//! dequantized rows `(n, in)` (used for the token embedding, which a tied LM head
//! shares, so the matrix is stored once), and `in_dim`/`out_dim`.

use std::borrow::Cow;
use std::sync::{Arc, OnceLock};

use candle_core::quantized::{GgmlDType as CandleType, QMatMul, QTensor};
use candle_core::{DType, Device, Module, Storage, Tensor};
use overseer_kernels::{Bf16Matrix, Bytes, GgmlDType, Level, QMatrix};

use crate::{Error, Result};

/// A quantized weight matrix `W` of shape `(out, in)`: `forward(x) = x Wᵀ`.
pub struct QLinear {
    inner: Inner,
    out_dim: usize,
    in_dim: usize,
    /// Inputs of at least this many rows run in f32 (see [`QLinear::with_f32_rows`]).
    f32_rows: usize,
    /// Inputs of at least this many rows run on AMX (see [`QLinear::with_amx_rows`]).
    amx_rows: usize,
    /// The weights packed for AMX, made on the first call that wants them (`None`
    /// inside: this CPU or OS has no AMX).
    amx: OnceLock<Option<Bf16Matrix>>,
    /// SIMD level of the 8-bit kernels (see [`QLinear::with_level`]).
    level: Level,
}

enum Inner {
    /// CPU, a format the kernels implement.
    Kernels(QMatrix),
    /// Anything else.
    Candle(QMatMul),
}

/// Owner of the weight bytes handed to the kernels: the candle tensor itself.
struct TensorBytes(QTensor);

impl AsRef<[u8]> for TensorBytes {
    fn as_ref(&self) -> &[u8] {
        // `QLinear::new` only builds this for CPU tensors, whose data is borrowed.
        match self.0.data() {
            Ok(Cow::Borrowed(b)) => b,
            _ => &[],
        }
    }
}

fn kernel_type(t: CandleType) -> Option<GgmlDType> {
    Some(match t {
        CandleType::F32 => GgmlDType::F32,
        CandleType::F16 => GgmlDType::F16,
        CandleType::Q4_0 => GgmlDType::Q4_0,
        CandleType::Q4_1 => GgmlDType::Q4_1,
        CandleType::Q5_0 => GgmlDType::Q5_0,
        CandleType::Q5_1 => GgmlDType::Q5_1,
        CandleType::Q8_0 => GgmlDType::Q8_0,
        CandleType::Q4K => GgmlDType::Q4K,
        CandleType::Q5K => GgmlDType::Q5K,
        CandleType::Q6K => GgmlDType::Q6K,
        _ => return None,
    })
}

fn kernel_err(e: overseer_kernels::Error) -> Error {
    Error::InvalidArgument(format!("matmul kernel: {e}"))
}

impl QLinear {
    /// Wrap a 2-D quantized tensor of shape `(out, in)`.
    ///
    /// Errors: [`crate::Error::Candle`] when the tensor is not 2-D.
    pub fn new(w: QTensor) -> Result<Self> {
        let (out_dim, in_dim) = w.shape().dims2()?;
        let kernel = match (w.device(), kernel_type(w.dtype())) {
            (Device::Cpu, Some(t)) if in_dim % t.block_size() == 0 => {
                matches!(w.data()?, Cow::Borrowed(_)).then_some(t)
            }
            _ => None,
        };
        match kernel {
            Some(t) => {
                let len = w.data()?.len();
                Self::on_kernels(t, out_dim, in_dim, Arc::new(TensorBytes(w)), 0..len)
            }
            None => Ok(Self {
                inner: Inner::Candle(QMatMul::from_qtensor(w)?),
                out_dim,
                in_dim,
                f32_rows: usize::MAX,
                amx_rows: usize::MAX,
                amx: OnceLock::new(),
                level: Level::detect(),
            }),
        }
    }

    /// The kernels' matrix over `owner`'s bytes `range` (format `t`, shape `(out, in)`).
    fn on_kernels<T: AsRef<[u8]> + Send + Sync + 'static>(
        t: GgmlDType,
        out_dim: usize,
        in_dim: usize,
        owner: Arc<T>,
        range: std::ops::Range<usize>,
    ) -> Result<Self> {
        let bytes = Bytes::from_owner(owner, range).map_err(kernel_err)?;
        let w = QMatrix::from_ggml(t, out_dim, in_dim, bytes).map_err(kernel_err)?;
        Ok(Self {
            inner: Inner::Kernels(w),
            out_dim,
            in_dim,
            f32_rows: usize::MAX,
            amx_rows: usize::MAX,
            amx: OnceLock::new(),
            level: Level::detect(),
        })
    }

    /// Wrap weight bytes of format `dtype` and shape `(out, in)` owned elsewhere (a
    /// memory-mapped GGUF), for the CPU kernels. `None` when the kernels do not run this
    /// format or shape; the caller then reads the tensor through candle.
    ///
    /// Errors: [`Error::InvalidArgument`] when the byte range does not fit the shape.
    pub(crate) fn from_bytes<T: AsRef<[u8]> + Send + Sync + 'static>(
        dtype: CandleType,
        out_dim: usize,
        in_dim: usize,
        owner: Arc<T>,
        range: std::ops::Range<usize>,
    ) -> Result<Option<Self>> {
        let Some(t) = kernel_type(dtype) else {
            return Ok(None);
        };
        if !in_dim.is_multiple_of(t.block_size()) {
            return Ok(None);
        }
        Self::on_kernels(t, out_dim, in_dim, owner, range).map(Some)
    }

    /// Run inputs of at least `rows` rows (`None`: never) as an f32 GEMM: `W` is
    /// dequantized one panel of rows at a time, each panel multiplied by every input row
    /// with the `gemm` crate. For many rows (the lab's batched prompt passes: hundreds
    /// of rows per call) this is faster than the 8-bit kernels, whose weight decoding
    /// is amortised over only four activation rows (measured in `docs/BENCHMARKS.md`),
    /// and it keeps activations in f32 (closer to an f32 reference, no longer
    /// llama.cpp's 8-bit rounding). CPU kernel formats only.
    pub fn with_f32_rows(mut self, rows: Option<usize>) -> Self {
        self.f32_rows = rows.unwrap_or(usize::MAX).max(1);
        self
    }

    /// Run inputs of at least `rows` rows (`None`: never) on Intel AMX bf16 tiles, where
    /// the CPU and OS have them (elsewhere the other paths run as before). The weights
    /// are decoded and packed to bf16 on the first such call and kept (2 bytes per
    /// weight); activations are rounded to bf16 and products summed in f32, the precision
    /// the refusal-direction paper runs its models in. On a 2-core Xeon this is 4–6x the
    /// 8-bit kernels at 16 rows and ~12x at 320 (`overseer-kernels`' `amx_bench`).
    /// Takes precedence over [`QLinear::with_f32_rows`]. CPU kernel formats only.
    pub fn with_amx_rows(mut self, rows: Option<usize>) -> Self {
        self.amx_rows = rows.unwrap_or(usize::MAX).max(1);
        self
    }

    /// Cap the 8-bit kernels at `level` (`None`: the best this CPU has). A level the
    /// CPU lacks is lowered to the best it has.
    pub fn with_level(mut self, level: Option<Level>) -> Self {
        let best = Level::detect();
        self.level = level.map_or(best, |l| l.min(best));
        self
    }

    /// The AMX-packed weights, packing them on first use; `None` without AMX.
    fn amx(&self, w: &QMatrix) -> Option<&Bf16Matrix> {
        self.amx
            .get_or_init(|| {
                Bf16Matrix::available()
                    .then(|| Bf16Matrix::from_qmatrix(w).ok())
                    .flatten()
            })
            .as_ref()
    }

    /// `x Wᵀ` for `x` of shape `(..., in)`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let w = match &self.inner {
            Inner::Kernels(w) if x.device().is_cpu() => w,
            Inner::Kernels(_) => {
                return Err(Error::InvalidArgument(format!(
                    "CPU weights applied to a tensor on {:?}",
                    x.device()
                )));
            }
            Inner::Candle(m) => return Ok(m.forward(x)?),
        };
        let dims = x.dims();
        if dims.last() != Some(&self.in_dim) {
            return Err(Error::InvalidArgument(format!(
                "linear layer of input size {} applied to shape {dims:?}",
                self.in_dim
            )));
        }
        let m = x.elem_count() / self.in_dim;
        let mut out_shape = dims.to_vec();
        *out_shape.last_mut().expect("checked non-empty above") = self.out_dim;
        let x = x.to_dtype(DType::F32)?.contiguous()?;
        let mut y = vec![0f32; m * self.out_dim];
        {
            let (storage, layout) = x.storage_and_layout();
            let Storage::Cpu(cpu) = &*storage else {
                return Err(Error::InvalidArgument("expected a CPU tensor".into()));
            };
            let (start, end) = layout.contiguous_offsets().expect("made contiguous above");
            let xs = &cpu.as_slice::<f32>()?[start..end];
            if let Some(b) = (m >= self.amx_rows).then(|| self.amx(w)).flatten() {
                b.matmul(xs, &mut y).map_err(kernel_err)?;
            } else if m >= self.f32_rows {
                matmul_f32(w, xs, m, &mut y)?;
            } else {
                w.matmul_with(self.level, xs, &mut y).map_err(kernel_err)?;
            }
        }
        Ok(Tensor::from_vec(y, out_shape, &Device::Cpu)?)
    }

    /// Rows `ids` of `W`, dequantized to f32: shape `(ids.len(), in)`.
    pub fn embedding(&self, ids: &[u32]) -> Result<Tensor> {
        match &self.inner {
            Inner::Kernels(w) => {
                let mut out = vec![0f32; ids.len() * self.in_dim];
                for (&id, row) in ids.iter().zip(out.chunks_mut(self.in_dim)) {
                    w.dequantize_row(id as usize, row).map_err(|_| {
                        Error::InvalidArgument(format!(
                            "token id {id} outside the vocabulary of {}",
                            self.out_dim
                        ))
                    })?;
                }
                Ok(Tensor::from_vec(
                    out,
                    (ids.len(), self.in_dim),
                    &Device::Cpu,
                )?)
            }
            Inner::Candle(inner) => {
                let device = match inner {
                    QMatMul::QTensor(t) => t.device(),
                    QMatMul::Tensor(t) | QMatMul::TensorF16(t) => t.device().clone(),
                };
                let ids = Tensor::new(ids, &device)?;
                Ok(inner.embedding(&ids)?.to_dtype(DType::F32)?)
            }
        }
    }

    /// Output features (rows of `W`).
    pub fn out_dim(&self) -> usize {
        self.out_dim
    }

    /// Input features (columns of `W`).
    pub fn in_dim(&self) -> usize {
        self.in_dim
    }

    /// Whether the matmul runs on `overseer-kernels` (false: candle's `QMatMul`).
    pub fn uses_kernels(&self) -> bool {
        matches!(self.inner, Inner::Kernels(_))
    }
}

/// Whether [`QLinear::with_amx_rows`] can take effect here: the CPU and OS run Intel AMX
/// bf16 tiles and the program did not turn them off (`Bf16Matrix::set_enabled`).
pub fn amx_available() -> bool {
    Bf16Matrix::available()
}

/// Output pointer shared by the panels of one [`matmul_f32`] call.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: each panel writes a disjoint set of output columns (see `matmul_f32`).
unsafe impl Send for OutPtr {}
// SAFETY: as above.
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// Through a method so closures capture the whole (Send + Sync) wrapper.
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// `y (m × n) = x (m × k) Wᵀ` in f32: `W` (n × k) decoded a panel of rows at a time into
/// a per-task buffer, each panel multiplied by all of `x` with `gemm`, panels spread
/// over the current rayon pool.
fn matmul_f32(w: &QMatrix, x: &[f32], m: usize, y: &mut [f32]) -> Result<()> {
    use rayon::prelude::*;
    let (n, k) = (w.rows(), w.cols());
    assert!(
        x.len() == m * k && y.len() == m * n,
        "shapes checked by the caller"
    );
    let threads = rayon::current_num_threads().max(1);
    // Panels of at most ~1 MB of f32, at least two per thread when the matrix allows.
    let panel = (n.div_ceil(2 * threads))
        .min((1 << 18) / k.max(1))
        .max(16)
        .next_multiple_of(16)
        .min(n);
    let out = OutPtr(y.as_mut_ptr());
    (0..n.div_ceil(panel)).into_par_iter().try_for_each_init(
        || vec![0f32; panel * k],
        |buf, p| -> Result<()> {
            let rows = p * panel..((p + 1) * panel).min(n);
            let len = rows.len();
            for (i, r) in rows.clone().enumerate() {
                w.dequantize_row(r, &mut buf[i * k..(i + 1) * k])
                    .map_err(kernel_err)?;
            }
            // SAFETY: `x` holds m×k and `buf` len×k values; the destination is
            // columns `rows` of the m×n output (row stride n), which no other panel
            // writes, and the output outlives this call.
            unsafe {
                gemm::gemm(
                    m,
                    len,
                    k,
                    out.get().add(rows.start),
                    1,
                    n as isize,
                    false,
                    x.as_ptr(),
                    1,
                    k as isize,
                    buf.as_ptr(),
                    k as isize,
                    1,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
            Ok(())
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic pseudo-random values in roughly [-2, 2].
    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
            })
            .collect()
    }

    /// QLinear on the kernels against candle's own dequantized weights times f32 x.
    #[test]
    fn matches_candle_dequantized_reference_for_every_kernel_format() -> Result<()> {
        let types = [
            CandleType::Q4_0,
            CandleType::Q4_1,
            CandleType::Q5_0,
            CandleType::Q5_1,
            CandleType::Q8_0,
            CandleType::Q4K,
            CandleType::Q5K,
            CandleType::Q6K,
            CandleType::F16,
            CandleType::F32,
        ];
        let dev = Device::Cpu;
        for (i, t) in types.into_iter().enumerate() {
            let (out, inp) = (19, 512);
            let wf = Tensor::from_vec(values(out * inp, i as u64 + 1), (out, inp), &dev)?;
            let q = QTensor::quantize(&wf, t)?;
            let wd = q.dequantize(&dev)?;
            let lin = QLinear::new(q)?;
            assert!(lin.uses_kernels(), "{t:?} should run on the kernels");
            // Decoded rows equal candle's decoding exactly.
            let emb = lin.embedding(&[0, 7, 18])?;
            let want = wd.index_select(&Tensor::new(&[0u32, 7, 18], &dev)?, 0)?;
            let diff = (emb - &want)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert_eq!(diff, 0.0, "{t:?} embedding rows differ from candle's");
            // (batch 2, seq 3, in) -> (2, 3, out)
            let x = Tensor::from_vec(values(6 * inp, 100 + i as u64), (2, 3, inp), &dev)?;
            let y = lin.forward(&x)?;
            assert_eq!(y.dims(), &[2, 3, out]);
            let reference = x.broadcast_matmul(&wd.t()?)?;
            let err = (&y - &reference)?.abs()?.max_all()?.to_scalar::<f32>()?;
            let scale = reference.abs()?.max_all()?.to_scalar::<f32>()?;
            // 8-bit activations: relative error of a few 1e-3 of the output scale.
            let tol = if matches!(t, CandleType::F16 | CandleType::F32) {
                1e-4
            } else {
                1.5e-2
            };
            assert!(
                err <= tol * scale,
                "{t:?}: max error {err} vs scale {scale}"
            );
            // The f32 GEMM route (many rows) equals the dequantized reference to f32
            // rounding; `m` spans several panels with a partial last one.
            let lin = lin.with_f32_rows(Some(4));
            let x = Tensor::from_vec(values(37 * inp, 200 + i as u64), (37, inp), &dev)?;
            let y = lin.forward(&x)?;
            let reference = x.matmul(&wd.t()?)?;
            let err = (&y - &reference)?.abs()?.max_all()?.to_scalar::<f32>()?;
            let scale = reference.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(
                err <= 1e-4 * scale,
                "{t:?} f32 route: error {err} vs {scale}"
            );
            // The AMX route (bf16 operands, f32 sums) where this CPU has it; elsewhere
            // the same call takes the f32 route above.
            let lin = lin.with_amx_rows(Some(4));
            let y = lin.forward(&x)?;
            let err = (&y - &reference)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(
                err <= 1e-2 * scale,
                "{t:?} AMX route (available: {}): error {err} vs {scale}",
                Bf16Matrix::available()
            );
        }
        Ok(())
    }

    #[test]
    fn wrong_input_size_is_an_error() -> Result<()> {
        let dev = Device::Cpu;
        let wf = Tensor::from_vec(values(4 * 64, 3), (4, 64), &dev)?;
        let lin = QLinear::new(QTensor::quantize(&wf, CandleType::Q8_0)?)?;
        let x = Tensor::zeros((2, 32), DType::F32, &dev)?;
        assert!(lin.forward(&x).is_err());
        assert!(lin.embedding(&[4]).is_err());
        Ok(())
    }
}
