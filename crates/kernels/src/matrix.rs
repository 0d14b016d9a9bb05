//! [`QMatrix`]: a weight matrix in a GGML block format and its multi-threaded matmul.
//!
//! Layout follows GGML: `rows` output features, each row `cols` input features stored as
//! consecutive blocks. `matmul` quantizes the activations once per call (to Q8 blocks
//! of 32, or Q8_K blocks of 256 for the k-quants), then splits the weight rows into
//! contiguous chunks handed out to the kernel thread pool (`pool`). For prefill
//! (at least 16 activation rows) on AVX-512 VNNI CPUs the activations are transposed in
//! groups of sixteen rows and a chunk runs the `vnni` kernels (every format but F32/F16);
//! elsewhere, for prefill of the 32-element formats a chunk runs a register-tiled AVX2
//! kernel (2 weight rows x 4 activation rows per inner loop); otherwise each weight row
//! is decoded once per group of four activation rows.

use crate::pool::Pool;
use crate::quant::{self, GROUP, Q8Block, Q8KBlock, Q8Kx16, Q8x4, Q8x16};
use crate::{Error, GgmlDType, Result};
use std::ops::Range;
use std::sync::{Arc, OnceLock};

/// The bytes of a matrix: owned, static, or borrowed from a shared owner (an mmapped
/// file, another library's tensor) without copying.
pub struct Bytes(Inner);

enum Inner {
    Owned(Vec<u8>),
    Static(&'static [u8]),
    Shared {
        owner: Arc<dyn AsRef<[u8]> + Send + Sync>,
        range: Range<usize>,
    },
}

impl Bytes {
    /// Borrow `range` of `owner`'s bytes for as long as this value lives.
    ///
    /// # Errors
    /// [`Error::Shape`] if `range` is outside the owner's bytes.
    pub fn from_owner<T: AsRef<[u8]> + Send + Sync + 'static>(
        owner: Arc<T>,
        range: Range<usize>,
    ) -> Result<Self> {
        let len = (*owner).as_ref().len();
        if range.start > range.end || range.end > len {
            return Err(Error::Shape(format!(
                "byte range {range:?} outside 0..{len}"
            )));
        }
        Ok(Bytes(Inner::Shared { owner, range }))
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        match &self.0 {
            Inner::Owned(v) => v,
            Inner::Static(s) => s,
            Inner::Shared { owner, range } => &(**owner).as_ref()[range.clone()],
        }
    }
}

impl From<Vec<u8>> for Bytes {
    fn from(v: Vec<u8>) -> Self {
        Bytes(Inner::Owned(v))
    }
}

impl From<&'static [u8]> for Bytes {
    fn from(s: &'static [u8]) -> Self {
        Bytes(Inner::Static(s))
    }
}

impl std::fmt::Debug for Bytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Bytes({} bytes)", self.as_slice().len())
    }
}

/// A SIMD level of the vec-dot kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Portable integer code.
    Scalar,
    /// AVX2 + FMA + F16C (x86-64).
    Avx2,
    /// AVX2 plus AVX-512 F/BW/VL/VNNI: many-row matmuls run the `vpdpbusd` kernels
    /// (`vnni`); everything else as [`Level::Avx2`].
    Avx512Vnni,
}

/// The level every default matmul of this process runs at, fixed on first use.
static LEVEL: OnceLock<Level> = OnceLock::new();
/// The highest level [`Level::detect`] may pick, when the program set one
/// ([`Level::set_cap`]).
static CAP: OnceLock<Level> = OnceLock::new();

impl Level {
    /// The best level this CPU supports, at most the cap the program set (detected
    /// once).
    pub fn detect() -> Level {
        *LEVEL.get_or_init(|| {
            let cap = CAP.get().copied().unwrap_or(Level::Avx512Vnni);
            [Level::Avx512Vnni, Level::Avx2]
                .into_iter()
                .find(|l| *l <= cap && l.available())
                .unwrap_or(Level::Scalar)
        })
    }

    /// Cap every default matmul of this process at `cap`: `Level::Scalar` for the
    /// scalar kernels (debugging), `Level::Avx2` for A/B runs of one binary on AVX-512
    /// VNNI machines. Configuration, set once by the program before its first matmul
    /// (the `overseer` binary maps `OVERSEER_KERNELS_SCALAR` / `OVERSEER_KERNELS_AVX2`
    /// to it); returns `false`, changing nothing, once the level is fixed.
    pub fn set_cap(cap: Level) -> bool {
        LEVEL.get().is_none() && CAP.set(cap).is_ok()
    }

    /// Every level this CPU can run, lowest first.
    pub fn supported() -> Vec<Level> {
        let best = Level::detect();
        [Level::Scalar, Level::Avx2, Level::Avx512Vnni]
            .into_iter()
            .filter(|l| *l <= best || l.available())
            .collect()
    }

    fn available(self) -> bool {
        match self {
            Level::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Level::Avx2 => {
                is_x86_feature_detected!("avx2")
                    && is_x86_feature_detected!("fma")
                    && is_x86_feature_detected!("f16c")
            }
            #[cfg(target_arch = "x86_64")]
            Level::Avx512Vnni => {
                Level::Avx2.available()
                    && is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512vl")
                    && is_x86_feature_detected!("avx512vnni")
            }
            #[cfg(not(target_arch = "x86_64"))]
            Level::Avx2 | Level::Avx512Vnni => false,
        }
    }
}

/// A `rows x cols` weight matrix in a GGML format; `y = x W^T`.
#[derive(Debug)]
pub struct QMatrix {
    dtype: GgmlDType,
    rows: usize,
    cols: usize,
    data: Bytes,
}

/// Quantized activations, one block slice per activation row (plus, for prefill at
/// AVX2, the same blocks interleaved in groups of four rows for the tiled kernels), or
/// for prefill at AVX-512 VNNI transposed in groups of sixteen rows.
enum Acts {
    Q8(Vec<Q8Block>, Option<Vec<Q8x4>>),
    Q8K(Vec<Q8KBlock>),
    Q8x16(Vec<Q8x16>),
    Q8Kx16(Vec<Q8Kx16>),
    F32,
}

/// Activation rows from which [`Level::Avx512Vnni`] runs the `vnni` kernels (groups of
/// sixteen rows; fewer would mostly multiply padding).
const VNNI_MIN_ROWS: usize = 16;

/// An output buffer shared by the tasks of one parallel call.
pub(crate) struct SendPtr(pub(crate) *mut f32);
// SAFETY: every user hands each task a disjoint part of the buffer, which outlives the
// call (`QMatrix::matmul_with`: output columns; `Attention::run_with`: head vectors).
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

impl SendPtr {
    pub(crate) fn ptr(&self) -> *mut f32 {
        self.0
    }
}

impl QMatrix {
    /// Wrap GGML-format bytes: `rows` rows of `cols` elements, row-major.
    ///
    /// # Errors
    /// [`Error::BadColumns`] if `cols` is not a multiple of the block size,
    /// [`Error::BadLength`] if `bytes` does not hold exactly the matrix.
    pub fn from_ggml(
        dtype: GgmlDType,
        rows: usize,
        cols: usize,
        bytes: impl Into<Bytes>,
    ) -> Result<Self> {
        let data = bytes.into();
        let block = dtype.block_size();
        if cols == 0 || !cols.is_multiple_of(block) {
            return Err(Error::BadColumns { dtype, cols, block });
        }
        let expected = rows * dtype.row_bytes(cols);
        let got = data.as_slice().len();
        if got != expected {
            return Err(Error::BadLength {
                dtype,
                rows,
                cols,
                expected,
                got,
            });
        }
        Ok(QMatrix {
            dtype,
            rows,
            cols,
            data,
        })
    }

    /// The element format.
    pub fn dtype(&self) -> GgmlDType {
        self.dtype
    }

    /// Output features (`n`).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Input features (`k`).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The raw GGML bytes.
    pub fn bytes(&self) -> &[u8] {
        self.data.as_slice()
    }

    fn row_bytes(&self) -> usize {
        self.dtype.row_bytes(self.cols)
    }

    /// Decode row `i` into `out` (`cols` long), e.g. for an embedding lookup.
    ///
    /// # Errors
    /// [`Error::Shape`] if `i` is out of range or `out` has the wrong length.
    pub fn dequantize_row(&self, i: usize, out: &mut [f32]) -> Result<()> {
        if i >= self.rows || out.len() != self.cols {
            return Err(Error::Shape(format!(
                "row {i} of {} into {} values (cols {})",
                self.rows,
                out.len(),
                self.cols
            )));
        }
        let rb = self.row_bytes();
        quant::dequantize_row(self.dtype, &self.bytes()[i * rb..(i + 1) * rb], out);
        Ok(())
    }

    /// `y = x W^T` for `x` of `m x cols` and `y` of `m x rows` (row-major), at the best
    /// SIMD level, on `rayon::current_num_threads()` threads (see the `pool` module).
    ///
    /// # Errors
    /// [`Error::Shape`] if the lengths do not fit.
    pub fn matmul(&self, x: &[f32], y: &mut [f32]) -> Result<()> {
        self.matmul_with(Level::detect(), x, y)
    }

    /// [`QMatrix::matmul`] at a given level (for tests and benchmarks).
    ///
    /// # Errors
    /// [`Error::Shape`] if the lengths do not fit or the CPU lacks `level`.
    pub fn matmul_with(&self, level: Level, x: &[f32], y: &mut [f32]) -> Result<()> {
        let (k, n) = (self.cols, self.rows);
        if !level.available() {
            return Err(Error::Shape(format!("this CPU does not support {level:?}")));
        }
        if !x.len().is_multiple_of(k) || y.len() != x.len() / k * n {
            return Err(Error::Shape(format!(
                "x has {} values, y {}, for a {n}x{k} matrix",
                x.len(),
                y.len()
            )));
        }
        let m = x.len() / k;
        if m == 0 {
            return Ok(());
        }
        let rb = self.row_bytes();
        let work = m * n * rb;
        // Below ~64 KB of weight-row x activation-row work a fan-out costs more than it
        // saves.
        let threads = if work < 64 * 1024 {
            1
        } else {
            rayon::current_num_threads().max(1)
        };
        let acts = self.quantize_acts(level, x, m, threads);
        // Chunks of contiguous rows, handed out dynamically (a few per thread, so a
        // descheduled thread on a busy machine does not stall the rest). For prefill a
        // chunk's weights also stay in L1 while every activation group passes over them
        // (for the VNNI kernels: the chunk decoded to one byte per weight).
        let mut chunk = n.div_ceil(4 * threads).max(16);
        let chunk = match acts {
            Acts::Q8x16(_) | Acts::Q8Kx16(_) => {
                chunk = chunk.min((24 * 1024 / k).max(4));
                chunk.div_ceil(4) * 4
            }
            _ => {
                if m >= 4 {
                    chunk = chunk.min((16 * 1024 / rb).max(2));
                }
                chunk.div_ceil(2) * 2
            }
        }
        .min(n);
        let nchunks = n.div_ceil(chunk);
        let yp = SendPtr(y.as_mut_ptr());
        let run = |t: usize| {
            let cols = t * chunk..((t + 1) * chunk).min(n);
            self.tile(level, &acts, x, m, cols, &yp);
        };
        Pool::global().run(threads, nchunks, &run);
        Ok(())
    }

    fn quantize_acts(&self, level: Level, x: &[f32], m: usize, threads: usize) -> Acts {
        let k = self.cols;
        // Rows are quantized in parallel for prefill.
        let rows_per = m.div_ceil(threads).max(8);
        let nchunks = m.div_ceil(rows_per);
        let vnni = level == Level::Avx512Vnni && m >= VNNI_MIN_ROWS;
        match self.dtype {
            GgmlDType::F32 | GgmlDType::F16 => Acts::F32,
            d if vnni && d.is_k_quant() => {
                let nb = k / 256;
                let groups = m.div_ceil(GROUP);
                let mut q = vec![Q8Kx16::default(); groups * nb];
                let qp = SendPtr(q.as_mut_ptr().cast());
                Pool::global().run(threads, groups, &|g| {
                    let rows = g * GROUP..((g + 1) * GROUP).min(m);
                    let mut tmp = vec![Q8KBlock::default(); rows.len() * nb];
                    quantize_q8k(level, &x[rows.start * k..rows.end * k], &mut tmp);
                    // SAFETY: groups write disjoint entries of `q`, alive until `run`
                    // returns.
                    let out = unsafe {
                        std::slice::from_raw_parts_mut(qp.ptr().cast::<Q8Kx16>().add(g * nb), nb)
                    };
                    quant::interleave16k(&tmp, nb, out);
                });
                Acts::Q8Kx16(q)
            }
            d if vnni => {
                let nb = k / 32;
                let f16_sum = matches!(d, GgmlDType::Q4_1 | GgmlDType::Q5_1);
                #[cfg(target_arch = "x86_64")]
                let centre = crate::vnni::centre(d);
                #[cfg(not(target_arch = "x86_64"))]
                let centre = 0;
                let groups = m.div_ceil(GROUP);
                let mut q = vec![Q8x16::default(); groups * nb];
                let qp = SendPtr(q.as_mut_ptr().cast());
                Pool::global().run(threads, groups, &|g| {
                    let rows = g * GROUP..((g + 1) * GROUP).min(m);
                    let mut tmp = vec![Q8Block::default(); rows.len() * nb];
                    quantize_q8(level, &x[rows.start * k..rows.end * k], &mut tmp, f16_sum);
                    // SAFETY: groups write disjoint entries of `q`, alive until `run`
                    // returns.
                    let out = unsafe {
                        std::slice::from_raw_parts_mut(qp.ptr().cast::<Q8x16>().add(g * nb), nb)
                    };
                    quant::interleave16(&tmp, nb, centre, out);
                });
                Acts::Q8x16(q)
            }
            d if d.is_k_quant() => {
                let nb = k / 256;
                let mut q = vec![Q8KBlock::default(); m * nb];
                let qp = SendPtr(q.as_mut_ptr().cast());
                Pool::global().run(threads, nchunks, &|c| {
                    let rows = c * rows_per..((c + 1) * rows_per).min(m);
                    // SAFETY: chunks cover disjoint rows of `q`, alive until `run` returns.
                    let qs = unsafe {
                        std::slice::from_raw_parts_mut(
                            qp.ptr().cast::<Q8KBlock>().add(rows.start * nb),
                            rows.len() * nb,
                        )
                    };
                    quantize_q8k(level, &x[rows.start * k..rows.end * k], qs);
                });
                Acts::Q8K(q)
            }
            _ => {
                let nb = k / 32;
                let f16_sum = matches!(self.dtype, GgmlDType::Q4_1 | GgmlDType::Q5_1);
                let mut q = vec![Q8Block::default(); m * nb];
                let qp = SendPtr(q.as_mut_ptr().cast());
                Pool::global().run(threads, nchunks, &|c| {
                    let rows = c * rows_per..((c + 1) * rows_per).min(m);
                    // SAFETY: chunks cover disjoint rows of `q`, alive until `run` returns.
                    let qs = unsafe {
                        std::slice::from_raw_parts_mut(
                            qp.ptr().cast::<Q8Block>().add(rows.start * nb),
                            rows.len() * nb,
                        )
                    };
                    quantize_q8(level, &x[rows.start * k..rows.end * k], qs, f16_sum);
                });
                let packed = if m >= 4 && level >= Level::Avx2 {
                    let mut p = Vec::new();
                    quant::interleave4(&q, m, nb, &mut p);
                    Some(p)
                } else {
                    None
                };
                Acts::Q8(q, packed)
            }
        }
    }

    /// Compute output columns `cols` for all `m` activation rows.
    fn tile(
        &self,
        level: Level,
        acts: &Acts,
        x: &[f32],
        m: usize,
        cols: Range<usize>,
        y: &SendPtr,
    ) {
        let (k, n, rb) = (self.cols, self.rows, self.row_bytes());
        let w = self.bytes();
        let store = |r: usize, c: usize, v: f32| {
            debug_assert!(r < m && c < n);
            // SAFETY: `r < m`, `c < n` so the index is inside `y` (m*n long), and each
            // output column belongs to exactly one chunk, so no two threads write the
            // same element while `y` is exclusively borrowed by `matmul_with`.
            unsafe { *y.0.add(r * n + c) = v };
        };
        let mut out = [0f32; 4];
        match acts {
            Acts::F32 => {
                let mut wrow = vec![0f32; k];
                for c in cols {
                    quant::dequantize_row(self.dtype, &w[c * rb..(c + 1) * rb], &mut wrow);
                    for r in 0..m {
                        let xr = &x[r * k..(r + 1) * k];
                        store(r, c, xr.iter().zip(&wrow).map(|(a, b)| a * b).sum());
                    }
                }
            }
            #[cfg(target_arch = "x86_64")]
            Acts::Q8(_, Some(packed)) if level >= Level::Avx2 => {
                let t = crate::avx2::Tile32 {
                    w: &w[cols.start * rb..cols.end * rb],
                    rows: cols.len(),
                    nb: k / 32,
                    acts: packed,
                    m,
                    y: y.0,
                    ldy: n,
                    col0: cols.start,
                };
                // SAFETY: `matmul_with` checked the CPU supports the level; the shapes
                // are as `tile32` requires and this chunk owns columns `cols` of `y`.
                unsafe { crate::avx2::tile32(self.dtype, &t) };
            }
            #[cfg(target_arch = "x86_64")]
            Acts::Q8x16(a) => {
                let t = crate::vnni::Tile {
                    w: &w[cols.start * rb..cols.end * rb],
                    rows: cols.len(),
                    k,
                    acts: a,
                    m,
                    y: y.0,
                    ldy: n,
                    col0: cols.start,
                };
                // SAFETY: `quantize_acts` made these only at `Level::Avx512Vnni`, which
                // `matmul_with` checked the CPU supports; the shapes are as `tile32`
                // requires and this chunk owns columns `cols` of `y`.
                unsafe { crate::vnni::tile32(self.dtype, &t) };
            }
            #[cfg(target_arch = "x86_64")]
            Acts::Q8Kx16(a) => {
                let t = crate::vnni::Tile {
                    w: &w[cols.start * rb..cols.end * rb],
                    rows: cols.len(),
                    k,
                    acts: a,
                    m,
                    y: y.0,
                    ldy: n,
                    col0: cols.start,
                };
                // SAFETY: as for `Acts::Q8x16`.
                unsafe { crate::vnni::tilek(self.dtype, &t) };
            }
            #[cfg(not(target_arch = "x86_64"))]
            Acts::Q8x16(_) | Acts::Q8Kx16(_) => {
                unreachable!("the VNNI layouts are only made on x86-64")
            }
            Acts::Q8(q, _) => {
                let nb = k / 32;
                for r0 in (0..m).step_by(4) {
                    let g = (m - r0).min(4);
                    let xs: [&[Q8Block]; 4] =
                        std::array::from_fn(|i| &q[(r0 + i.min(g - 1)) * nb..][..nb]);
                    for c in cols.clone() {
                        let row = &w[c * rb..(c + 1) * rb];
                        dot32(level, self.dtype, row, &xs[..g], &mut out[..g]);
                        for i in 0..g {
                            store(r0 + i, c, out[i]);
                        }
                    }
                }
            }
            Acts::Q8K(q) => {
                let nb = k / 256;
                for r0 in (0..m).step_by(4) {
                    let g = (m - r0).min(4);
                    let xs: [&[Q8KBlock]; 4] =
                        std::array::from_fn(|i| &q[(r0 + i.min(g - 1)) * nb..][..nb]);
                    for c in cols.clone() {
                        let row = &w[c * rb..(c + 1) * rb];
                        dotk(level, self.dtype, row, &xs[..g], &mut out[..g]);
                        for i in 0..g {
                            store(r0 + i, c, out[i]);
                        }
                    }
                }
            }
        }
    }
}

/// `quant::quantize_q8` at `level` (bit-identical results).
fn quantize_q8(level: Level, x: &[f32], out: &mut [Q8Block], f16_sum: bool) {
    match level {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: callers pass a level the CPU supports (`matmul_with` checked it).
        Level::Avx2 | Level::Avx512Vnni => unsafe { crate::avx2::quantize_q8(x, out, f16_sum) },
        _ => quant::quantize_q8(x, out, f16_sum),
    }
}

/// `quant::quantize_q8k` at `level` (bit-identical results).
fn quantize_q8k(level: Level, x: &[f32], out: &mut [Q8KBlock]) {
    match level {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as in `quantize_q8`.
        Level::Avx2 | Level::Avx512Vnni => unsafe { crate::avx2::quantize_q8k(x, out) },
        _ => quant::quantize_q8k(x, out),
    }
}

fn dot32(level: Level, dtype: GgmlDType, row: &[u8], xs: &[&[Q8Block]], out: &mut [f32]) {
    match level {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `matmul_with` checked that the CPU supports the level.
        Level::Avx2 | Level::Avx512Vnni => unsafe { crate::avx2::dot_rows32(dtype, row, xs, out) },
        _ => {
            for (o, xr) in out.iter_mut().zip(xs) {
                *o = quant::dot32_scalar(dtype, row, xr);
            }
        }
    }
}

fn dotk(level: Level, dtype: GgmlDType, row: &[u8], xs: &[&[Q8KBlock]], out: &mut [f32]) {
    match level {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `matmul_with` checked that the CPU supports the level.
        Level::Avx2 | Level::Avx512Vnni => unsafe { crate::avx2::dot_rowsk(dtype, row, xs, out) },
        _ => {
            for (o, xr) in out.iter_mut().zip(xs) {
                *o = quant::dotk_scalar(dtype, row, xr);
            }
        }
    }
}
