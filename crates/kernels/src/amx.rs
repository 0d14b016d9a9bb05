//! Many-row matmuls on Intel AMX (Advanced Matrix Extensions), bf16 in, f32 out.
//!
//! Why: the lab's batched prompt passes multiply hundreds of activation rows by every
//! weight matrix. On AVX2/AVX-512 that is an f32 GEMM at ~30–60 GMAC/s per core (the
//! `gemm` crate, or PyTorch's oneDNN); one AMX `tdpbf16ps` multiplies a 16×32 bf16 tile
//! by a 32×16 one in 16 cycles, and this file's plain 2×2-tile loop measured ~270 GMAC/s
//! on one core of a Xeon with AMX. bf16 is also the precision the refusal-direction
//! paper's own code runs its models in; accumulation stays in f32.
//!
//! No crate offers AMX on stable Rust (the intrinsics are unstable), so the handful of
//! tile instructions are written with `asm!`, which the assembler accepts on any stable
//! toolchain. The CPU (CPUID leaf 7: AMX-TILE and AMX-BF16) and the kernel's permission
//! for the tile state (`arch_prctl(ARCH_REQ_XCOMP_PERM)`, Linux ≥ 5.16) are checked once;
//! where either is missing [`Bf16Matrix::available`] is false and callers keep their
//! other path.
//!
//! Layout: `W` (`rows × cols`, `y = x Wᵀ`) is stored as bf16 in AMX's "VNNI" order, per
//! block of 16 output rows: `[row_block][cols/2][16][2]`, so one tile load reads 16 pairs
//! of input features for 16 outputs. `cols` is padded to 32 and `rows` to 32 with zeros.

use std::sync::OnceLock;

use rayon::prelude::*;

use crate::{Error, QMatrix, Result};

/// Rows (of A and C) and 32-bit columns of a full tile.
const TILE: usize = 16;
/// Input features per tile step (32 bf16 = 64 bytes per tile row).
const KSTEP: usize = 32;

/// A weight matrix packed for AMX (see the module docs). Built once, read by any number
/// of concurrent [`Bf16Matrix::matmul`] calls.
#[derive(Debug, Clone)]
pub struct Bf16Matrix {
    rows: usize,
    cols: usize,
    /// `cols` rounded up to [`KSTEP`].
    kp: usize,
    /// `[rows.next_multiple_of(32) / 16][kp / 2][16][2]` bf16 bit patterns.
    data: Vec<u16>,
}

/// f32 → bf16 with round-to-nearest-even (NaN stays NaN).
#[inline(always)]
fn bf16(x: f32) -> u16 {
    let b = x.to_bits();
    if b & 0x7fff_ffff > 0x7f80_0000 {
        return ((b >> 16) | 0x40) as u16;
    }
    ((b + 0x7fff + ((b >> 16) & 1)) >> 16) as u16
}

/// [`bf16`] over a slice, compiled for AVX-512 so that it runs 16 values at a time.
///
/// # Safety
/// The CPU has AVX-512 F and BW.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn to_bf16_avx512(src: &[f32], dst: &mut [u16]) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = bf16(s);
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn to_bf16_avx512(src: &[f32], dst: &mut [u16]) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = bf16(s);
    }
}

/// Whether AMX may be used at all, when the program said ([`Bf16Matrix::set_enabled`]).
static ENABLED: OnceLock<bool> = OnceLock::new();
/// The answer of [`Bf16Matrix::available`], fixed on first use.
static AVAILABLE: OnceLock<bool> = OnceLock::new();

impl Bf16Matrix {
    /// Whether this CPU and OS run AMX bf16 tiles and the program did not turn them
    /// off ([`Bf16Matrix::set_enabled`]). The first call asks the kernel for the tile
    /// state permission for the whole process; the answer is cached.
    pub fn available() -> bool {
        *AVAILABLE.get_or_init(|| ENABLED.get().copied().unwrap_or(true) && detect())
    }

    /// Turn AMX off (or leave it on) for this process, to compare against the other
    /// paths. Configuration, set once by the program before the first matmul (the
    /// `overseer` binary maps `OVERSEER_AMX=0` to it); returns `false`, changing
    /// nothing, once availability is fixed.
    pub fn set_enabled(on: bool) -> bool {
        AVAILABLE.get().is_none() && ENABLED.set(on).is_ok()
    }

    /// Pack `W` given as f32 rows (`rows × cols`, row-major).
    ///
    /// # Errors
    /// [`Error::Shape`] if `w` does not hold `rows × cols` values or a size is zero.
    pub fn from_f32(w: &[f32], rows: usize, cols: usize) -> Result<Self> {
        if rows == 0 || cols == 0 || w.len() != rows * cols {
            return Err(Error::Shape(format!(
                "{} values for a {rows}x{cols} matrix",
                w.len()
            )));
        }
        Ok(Self::pack(rows, cols, |r, out| {
            out.copy_from_slice(&w[r * cols..(r + 1) * cols]);
            Ok(())
        })
        .expect("rows read from a slice of the checked size"))
    }

    /// Pack a GGML matrix, decoding its rows (in parallel on the current rayon pool).
    ///
    /// # Errors
    /// None in practice (every row index is in range); kept for the row decoder's.
    pub fn from_qmatrix(w: &QMatrix) -> Result<Self> {
        Self::pack(w.rows(), w.cols(), |r, out| w.dequantize_row(r, out))
    }

    fn pack(
        rows: usize,
        cols: usize,
        row: impl Fn(usize, &mut [f32]) -> Result<()> + Sync,
    ) -> Result<Self> {
        let kp = cols.next_multiple_of(KSTEP);
        let blocks = rows.next_multiple_of(2 * TILE) / TILE;
        let mut data = vec![0u16; blocks * kp * TILE];
        data.par_chunks_mut(kp * TILE)
            .enumerate()
            .try_for_each_init(
                || vec![0f32; cols],
                |buf, (b, dst)| -> Result<()> {
                    for c in 0..TILE {
                        let r = b * TILE + c;
                        if r >= rows {
                            break;
                        }
                        row(r, buf)?;
                        for (i, &v) in buf.iter().enumerate() {
                            dst[(i / 2) * 2 * TILE + c * 2 + i % 2] = bf16(v);
                        }
                    }
                    Ok(())
                },
            )?;
        Ok(Bf16Matrix {
            rows,
            cols,
            kp,
            data,
        })
    }

    /// Output features (`n`).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Input features (`k`).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// `y = x Wᵀ` for `x` of `m × cols` and `y` of `m × rows` (row-major, f32): the
    /// inputs are rounded to bf16, products accumulate in f32. Work is split by output
    /// columns over the current rayon pool. Each output row depends only on its own
    /// input row (the summation order is fixed), whatever `m` is.
    ///
    /// # Errors
    /// [`Error::Shape`] if the lengths do not fit or the CPU cannot run AMX
    /// ([`Bf16Matrix::available`]).
    pub fn matmul(&self, x: &[f32], y: &mut [f32]) -> Result<()> {
        self.matmul_on(x, y, true)
    }

    /// [`Bf16Matrix::matmul`] on the calling thread only, for callers that already run
    /// independent matmuls on every core (the embedder's packs of texts). Same result,
    /// bit for bit.
    ///
    /// # Errors
    /// As [`Bf16Matrix::matmul`].
    pub fn matmul_serial(&self, x: &[f32], y: &mut [f32]) -> Result<()> {
        self.matmul_on(x, y, false)
    }

    fn matmul_on(&self, x: &[f32], y: &mut [f32], parallel: bool) -> Result<()> {
        let (k, n, kp) = (self.cols, self.rows, self.kp);
        if !x.len().is_multiple_of(k) || y.len() != x.len() / k * n {
            return Err(Error::Shape(format!(
                "x has {} values, y {}, for a {n}x{k} matrix",
                x.len(),
                y.len()
            )));
        }
        if !Self::available() {
            return Err(Error::Shape("this CPU or OS does not run AMX bf16".into()));
        }
        let m = x.len() / k;
        if m == 0 {
            return Ok(());
        }
        // Activations as bf16 rows of kp, padded with zero rows to a whole tile.
        let mp = m.next_multiple_of(TILE);
        let mut a = vec![0u16; mp * kp];
        let convert = |(dst, src): (&mut [u16], &[f32])| {
            for (d, s) in dst.chunks_exact_mut(kp).zip(src.chunks_exact(k)) {
                // SAFETY: every CPU with AMX has AVX-512 F and BW (checked in `detect`,
                // which `available()` above required).
                unsafe { to_bf16_avx512(s, d) };
            }
        };
        if parallel {
            a.par_chunks_mut(kp * TILE)
                .zip(x.par_chunks(k * TILE))
                .for_each(convert);
        } else {
            a.chunks_mut(kp * TILE)
                .zip(x.chunks(k * TILE))
                .for_each(convert);
        }
        let pairs = n.div_ceil(2 * TILE);
        let job = Job {
            a: &a,
            m,
            mp,
            kp,
            w: &self.data,
            n,
        };
        if !parallel {
            // SAFETY: `available()` checked the CPU and the tile permission; all pairs
            // cover exactly the m×n output.
            unsafe { job.run(0..pairs, y.as_mut_ptr()) };
            return Ok(());
        }
        // Work items: pairs of 16-column blocks (32 outputs), a few per thread.
        let threads = rayon::current_num_threads().max(1);
        let per = pairs.div_ceil(4 * threads).max(1);
        let out = crate::matrix::SendPtr(y.as_mut_ptr());
        let out = &out;
        let job = &job;
        (0..pairs.div_ceil(per)).into_par_iter().for_each(|t| {
            // SAFETY: `available()` checked the CPU and the tile permission; this task
            // writes only output columns of its own pairs, inside the m×n output.
            unsafe { job.run(t * per..((t + 1) * per).min(pairs), out.ptr()) };
        });
        Ok(())
    }
}

/// One task's view of a matmul.
struct Job<'a> {
    /// bf16 activations, `mp × kp`.
    a: &'a [u16],
    m: usize,
    mp: usize,
    kp: usize,
    /// Packed weights.
    w: &'a [u16],
    n: usize,
}

/// AMX tile configuration (palette 1), as `ldtilecfg` reads it.
#[repr(C, align(64))]
struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    colsb: [u16; 16],
    rows: [u8; 16],
}

impl Job<'_> {
    /// Output columns `[32·pairs.start, 32·pairs.end) ∩ [0, n)` for every row.
    ///
    /// # Safety
    /// AMX available and permitted; `out` points to the `m × n` output, of which this call
    /// writes only the columns of `pairs`.
    #[cfg(target_arch = "x86_64")]
    unsafe fn run(&self, pairs: std::ops::Range<usize>, out: *mut f32) {
        use std::arch::asm;
        // Tiles 0–1: A (16 rows × 32 bf16), 2–3: B (16 pairs × 16 columns), 4–7: C.
        let mut cfg = TileConfig {
            palette: 1,
            start_row: 0,
            reserved: [0; 14],
            colsb: [0; 16],
            rows: [0; 16],
        };
        for t in 0..8 {
            cfg.colsb[t] = 64;
            cfg.rows[t] = TILE as u8;
        }
        let kp = self.kp;
        let sa = (kp * 2) as u64; // bytes per activation row
        let sb = (2 * TILE * 2) as u64; // bytes per packed pair of input features
        let sc = (2 * TILE * 4) as u64; // bytes per row of the local 32×32 result
        let bstride = kp * TILE; // u16s per packed 16-row block of W
        let mut c = [0f32; 4 * TILE * TILE];
        // SAFETY (whole block): every tile load reads 16 rows of 64 bytes inside `a`
        // (rows < mp, features < kp) or inside `w` (block < 2·pairs ≤ its blocks,
        // pairs < kp / 2); every tile store writes inside `c`; the copies into `out`
        // stay in rows < m and columns < n.
        unsafe {
            asm!("ldtilecfg [{}]", in(reg) &cfg as *const TileConfig, options(nostack, readonly));
            for p in pairs {
                let b0 = self.w.as_ptr().add(2 * p * bstride);
                let b1 = b0.add(bstride);
                let mut i = 0;
                while i < self.mp {
                    let two = i + TILE < self.mp;
                    let a0 = self.a.as_ptr().add(i * kp);
                    asm!(
                        "tilezero tmm4",
                        "tilezero tmm5",
                        "tilezero tmm6",
                        "tilezero tmm7",
                        options(nostack, nomem)
                    );
                    if two {
                        let a1 = a0.add(TILE * kp);
                        let mut kk = 0;
                        while kk < kp {
                            asm!(
                                "tileloadd tmm0, [{a0} + {sa}*1]",
                                "tileloadd tmm1, [{a1} + {sa}*1]",
                                "tileloadd tmm2, [{b0} + {sb}*1]",
                                "tileloadd tmm3, [{b1} + {sb}*1]",
                                "tdpbf16ps tmm4, tmm0, tmm2",
                                "tdpbf16ps tmm5, tmm0, tmm3",
                                "tdpbf16ps tmm6, tmm1, tmm2",
                                "tdpbf16ps tmm7, tmm1, tmm3",
                                a0 = in(reg) a0.add(kk),
                                a1 = in(reg) a1.add(kk),
                                b0 = in(reg) b0.add(kk * TILE),
                                b1 = in(reg) b1.add(kk * TILE),
                                sa = in(reg) sa,
                                sb = in(reg) sb,
                                options(nostack, readonly)
                            );
                            kk += KSTEP;
                        }
                    } else {
                        let mut kk = 0;
                        while kk < kp {
                            asm!(
                                "tileloadd tmm0, [{a0} + {sa}*1]",
                                "tileloadd tmm2, [{b0} + {sb}*1]",
                                "tileloadd tmm3, [{b1} + {sb}*1]",
                                "tdpbf16ps tmm4, tmm0, tmm2",
                                "tdpbf16ps tmm5, tmm0, tmm3",
                                a0 = in(reg) a0.add(kk),
                                b0 = in(reg) b0.add(kk * TILE),
                                b1 = in(reg) b1.add(kk * TILE),
                                sa = in(reg) sa,
                                sb = in(reg) sb,
                                options(nostack, readonly)
                            );
                            kk += KSTEP;
                        }
                    }
                    let cp = c.as_mut_ptr();
                    asm!(
                        "tilestored [{c0} + {sc}*1], tmm4",
                        "tilestored [{c1} + {sc}*1], tmm5",
                        "tilestored [{c2} + {sc}*1], tmm6",
                        "tilestored [{c3} + {sc}*1], tmm7",
                        c0 = in(reg) cp,
                        c1 = in(reg) cp.add(TILE),
                        c2 = in(reg) cp.add(2 * TILE * TILE),
                        c3 = in(reg) cp.add(2 * TILE * TILE + TILE),
                        sc = in(reg) sc,
                        options(nostack)
                    );
                    let col0 = 2 * TILE * p;
                    let cols = (2 * TILE).min(self.n - col0);
                    let rows = (if two { 2 * TILE } else { TILE }).min(self.m - i);
                    for r in 0..rows {
                        std::ptr::copy_nonoverlapping(
                            cp.add(r * 2 * TILE),
                            out.add((i + r) * self.n + col0),
                            cols,
                        );
                    }
                    i += if two { 2 * TILE } else { TILE };
                }
            }
            asm!("tilerelease", options(nostack, nomem));
        }
    }

    #[cfg(not(target_arch = "x86_64"))]
    unsafe fn run(&self, _pairs: std::ops::Range<usize>, _out: *mut f32) {
        unreachable!("available() is false off x86-64")
    }
}

#[cfg(target_arch = "x86_64")]
fn detect() -> bool {
    // CPUID.(EAX=7, ECX=0):EDX bit 24 AMX-TILE, bit 22 AMX-BF16; OSXSAVE for XGETBV.
    let leaf7 = std::arch::x86_64::__cpuid_count(7, 0);
    if leaf7.edx & (1 << 24) == 0
        || leaf7.edx & (1 << 22) == 0
        || !std::arch::is_x86_feature_detected!("avx512f")
        || !std::arch::is_x86_feature_detected!("avx512bw")
    {
        return false;
    }
    // Linux: ask for the tile data state (XFEATURE_XTILEDATA = 18) for this process.
    // arch_prctl is syscall 158; ARCH_REQ_XCOMP_PERM = 0x1023. Elsewhere: no AMX.
    if !cfg!(target_os = "linux") {
        return false;
    }
    let ret: i64;
    // SAFETY: a plain syscall with integer arguments; it changes only this process's
    // permitted extended state.
    unsafe {
        std::arch::asm!(
            "syscall",
            inlateout("rax") 158i64 => ret,
            in("rdi") 0x1023i64,
            in("rsi") 18i64,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack)
        );
    }
    ret == 0
}

#[cfg(not(target_arch = "x86_64"))]
fn detect() -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: u64) -> Vec<f32> {
        crate::tests::uniform(n, seed, 4.0)
    }

    fn widen(h: u16) -> f32 {
        f32::from_bits((h as u32) << 16)
    }

    #[test]
    fn bf16_rounds_to_nearest_even() {
        assert_eq!(bf16(1.0), 0x3f80);
        // 1 + 2^-8 is halfway between two bf16 values: ties go to the even one.
        assert_eq!(bf16(1.0 + 1.0 / 256.0), 0x3f80);
        assert_eq!(bf16(1.0 + 3.0 / 256.0), 0x3f82);
        assert!(widen(bf16(f32::NAN)).is_nan());
        assert_eq!(widen(bf16(f32::INFINITY)), f32::INFINITY);
    }

    /// Against the same bf16-rounded operands multiplied in f64, for shapes with
    /// partial tiles everywhere (rows, output columns, input features).
    #[test]
    fn matches_bf16_reference() -> Result<()> {
        if !Bf16Matrix::available() {
            eprintln!("no AMX on this machine: skipped");
            return Ok(());
        }
        for (m, n, k) in [
            (1, 1, 1),
            (16, 32, 32),
            (17, 33, 40),
            (45, 70, 96),
            (130, 100, 200),
        ] {
            let w = values(n * k, (m * 7 + n) as u64);
            let x = values(m * k, (k * 3 + 1) as u64);
            let packed = Bf16Matrix::from_f32(&w, n, k)?;
            let mut y = vec![f32::NAN; m * n];
            packed.matmul(&x, &mut y)?;
            // On the calling thread alone: the same bits.
            let mut serial = vec![f32::NAN; m * n];
            packed.matmul_serial(&x, &mut serial)?;
            assert!(
                y.iter()
                    .zip(&serial)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "{m}x{n}x{k}: serial and pooled results differ"
            );
            // Each output row depends only on its own input row.
            let mut one = vec![f32::NAN; n];
            packed.matmul_serial(&x[(m - 1) * k..], &mut one)?;
            assert!(
                y[(m - 1) * n..]
                    .iter()
                    .zip(&one)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "{m}x{n}x{k}: the last row alone differs"
            );
            for r in 0..m {
                for c in 0..n {
                    let want: f64 = (0..k)
                        .map(|i| {
                            widen(bf16(x[r * k + i])) as f64 * widen(bf16(w[c * k + i])) as f64
                        })
                        .sum();
                    let got = y[r * n + c] as f64;
                    assert!(
                        (got - want).abs() <= 1e-4 * (1.0 + want.abs()),
                        "{m}x{n}x{k} [{r},{c}]: {got} vs {want}"
                    );
                }
            }
        }
        Ok(())
    }

    #[test]
    fn shape_errors() -> Result<()> {
        assert!(Bf16Matrix::from_f32(&[0.0; 5], 2, 3).is_err());
        let p = Bf16Matrix::from_f32(&[0.0; 6], 2, 3)?;
        let mut y = [0.0; 4];
        assert!(p.matmul(&[0.0; 5], &mut y).is_err());
        assert!(p.matmul_serial(&[0.0; 5], &mut y).is_err());
        Ok(())
    }
}
