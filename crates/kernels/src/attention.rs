//! Scaled dot-product attention over an f16 KV cache.
//!
//! Why it exists: the model keeps its KV cache in f16 (as llama.cpp does by default;
//! the keys and values are rounded to f16 anyway, so storing them as f32 only doubled
//! the largest allocation of a session). candle can only multiply tensors of one dtype,
//! so reading an f16 cache there means converting all of it to f32 on every layer of
//! every step. This kernel reads the f16 cache directly (F16C conversion in registers)
//! at llama.cpp's precision: queries rounded to f16, `q·k` accumulated in f32, softmax
//! in f32, probabilities rounded to f16, `p·v` accumulated in f32.
//!
//! The mask is a general additive `(batch, seq, total)` array (padding may sit anywhere
//! in a row); keys whose mask is `-inf` for every query of a block are skipped, which
//! halves the work of a causal prefill. Grouped-query attention: query head `h` reads KV
//! head `h / (n_head / n_kv_head)`, and the query heads sharing a KV head are processed
//! together so each cached key and value is converted once for all of them.

use half::f16;

use crate::matrix::SendPtr;
use crate::pool::Pool;
use crate::{Error, Level, Result};

/// Query rows (query position x query head of one KV head) processed together.
const ROWS: usize = 4;

/// Keys or values of one layer, f16: element `(b, h, j, d)` of batch row `b`, KV head
/// `h`, position `j`, dimension `d` is `data[b * batch_stride + h * head_stride +
/// j * pos_stride + d]` (a head vector is contiguous).
#[derive(Debug, Clone, Copy)]
pub struct KvView<'a> {
    pub data: &'a [f16],
    pub batch_stride: usize,
    pub head_stride: usize,
    pub pos_stride: usize,
}

/// One attention call: `seq` queries per row against `total` cached positions.
///
/// Shapes (row-major, contiguous unless a [`KvView`]): `q` is `(batch, n_head, seq,
/// head_dim)` (f32, rounded to f16 by the kernel), `mask` is `(batch, seq, total)`
/// (added to the scaled scores; `-inf` hides a key), and the output is `(batch, seq,
/// n_head, head_dim)`, i.e. the `(batch, seq, n_head * head_dim)` input of the output
/// projection. A query whose keys are all masked gets a zero output.
#[derive(Debug, Clone, Copy)]
pub struct Attention<'a> {
    pub batch: usize,
    pub n_head: usize,
    pub n_kv_head: usize,
    pub seq: usize,
    pub total: usize,
    pub head_dim: usize,
    /// Multiplies `q·k` before the mask is added (usually `1/sqrt(head_dim)`).
    pub scale: f32,
    pub q: &'a [f32],
    pub k: KvView<'a>,
    pub v: KvView<'a>,
    pub mask: Option<&'a [f32]>,
}

impl Attention<'_> {
    /// Compute the attention into `out` (`batch * seq * n_head * head_dim` values) at
    /// the best SIMD level, on `rayon::current_num_threads()` threads when the call is
    /// large enough to be worth a fan-out.
    ///
    /// # Errors
    /// [`Error::Shape`] if a length or stride does not fit the sizes.
    pub fn run(&self, out: &mut [f32]) -> Result<()> {
        self.run_with(Level::detect(), out)
    }

    /// [`Attention::run`] at a given level (for tests and benchmarks).
    ///
    /// # Errors
    /// [`Error::Shape`] if a length or stride does not fit, or the CPU lacks `level`.
    pub fn run_with(&self, level: Level, out: &mut [f32]) -> Result<()> {
        if !Level::supported().contains(&level) {
            return Err(Error::Shape(format!("this CPU does not support {level:?}")));
        }
        self.check(out.len())?;
        let (nkv, n_rep) = (self.n_kv_head, self.n_head / self.n_kv_head);
        let rows = self.seq * n_rep;
        let blocks = rows.div_ceil(ROWS);
        let tasks = self.batch * nkv * blocks;
        if tasks == 0 || self.total == 0 {
            out.fill(0.0);
            return Ok(());
        }
        // Below ~32K multiply-adds (a decode step over a short context) a fan-out
        // costs more than it saves.
        let work = self.batch * self.n_head * self.seq * self.total * self.head_dim;
        let threads = if work < 32 * 1024 {
            1
        } else {
            rayon::current_num_threads().max(1)
        };
        let op = SendPtr(out.as_mut_ptr());
        let run = |t: usize| {
            let (bg, blk) = (t / blocks, t % blocks);
            let (b, g) = (bg / nkv, bg % nkv);
            let start = blk * ROWS;
            self.task(level, b, g, start, ROWS.min(rows - start), &op);
        };
        Pool::global().run(threads, tasks, &run);
        Ok(())
    }

    fn check(&self, out_len: usize) -> Result<()> {
        let (b, nh, nkv, seq, total, hd) = (
            self.batch,
            self.n_head,
            self.n_kv_head,
            self.seq,
            self.total,
            self.head_dim,
        );
        if nkv == 0 || nh % nkv != 0 {
            return Err(Error::Shape(format!(
                "{nh} query heads cannot share {nkv} KV heads"
            )));
        }
        let q_len = b * nh * seq * hd;
        if self.q.len() != q_len || out_len != q_len {
            return Err(Error::Shape(format!(
                "q has {} values and out {out_len}, expected {q_len}",
                self.q.len()
            )));
        }
        if let Some(m) = self.mask
            && m.len() != b * seq * total
        {
            return Err(Error::Shape(format!(
                "mask has {} values, expected {b}x{seq}x{total}",
                m.len()
            )));
        }
        for (name, kv) in [("k", &self.k), ("v", &self.v)] {
            if b == 0 || total == 0 || hd == 0 {
                break;
            }
            let last = (b - 1) * kv.batch_stride
                + (nkv - 1) * kv.head_stride
                + (total - 1) * kv.pos_stride
                + hd;
            if last > kv.data.len() || kv.pos_stride < hd {
                return Err(Error::Shape(format!(
                    "{name} view ({} values, strides {}/{}/{}) does not hold {b}x{nkv}x{total}x{hd}",
                    kv.data.len(),
                    kv.batch_stride,
                    kv.head_stride,
                    kv.pos_stride
                )));
            }
        }
        Ok(())
    }

    /// Rows `start..start + n` (row `ρ` = query `ρ / n_rep` of head `g * n_rep + ρ %
    /// n_rep`) of batch row `b` and KV head `g`.
    fn task(&self, level: Level, b: usize, g: usize, start: usize, n: usize, out: &SendPtr) {
        let (nh, seq, total, hd) = (self.n_head, self.seq, self.total, self.head_dim);
        let n_rep = nh / self.n_kv_head;
        let row = |r: usize| {
            let rho = start + r;
            (rho / n_rep, g * n_rep + rho % n_rep)
        };
        // Queries rounded to f16, as llama.cpp converts them for the f16 K cache.
        let mut qs = vec![0f32; n * hd];
        for r in 0..n {
            let (i, h) = row(r);
            let at = ((b * nh + h) * seq + i) * hd;
            for (d, s) in qs[r * hd..(r + 1) * hd]
                .iter_mut()
                .zip(&self.q[at..at + hd])
            {
                *d = f16::from_f32(*s).to_f32();
            }
        }
        let masks: Vec<Option<&[f32]>> = (0..n)
            .map(|r| {
                let i = row(r).0;
                self.mask
                    .map(|m| &m[(b * seq + i) * total..(b * seq + i + 1) * total])
            })
            .collect();
        // Keys some row of the block may see.
        let live: Vec<u32> = (0..total)
            .filter(|&j| {
                masks
                    .iter()
                    .any(|m| m.is_none_or(|m| m[j] != f32::NEG_INFINITY))
            })
            .map(|j| j as u32)
            .collect();
        let kv_k = b * self.k.batch_stride + g * self.k.head_stride;
        let kv_v = b * self.v.batch_stride + g * self.v.head_stride;
        let mut p = vec![f32::NEG_INFINITY; n * total];
        let sc = Scores {
            qs: &qs,
            n,
            hd,
            k: &self.k.data[kv_k..],
            ps: self.k.pos_stride,
            live: &live,
            total,
        };
        match level {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `run_with` checked that the CPU supports AVX2, FMA and F16C, and
            // `check` that every live key lies inside the view.
            Level::Avx2 | Level::Avx512Vnni => unsafe { scores_avx2(&sc, &mut p) },
            _ => scores_scalar(&sc, &mut p),
        }
        // Scale, mask, softmax (f32, sum in f64 as ggml does), probabilities to f16.
        for r in 0..n {
            let pr = &mut p[r * total..(r + 1) * total];
            let mut max = f32::NEG_INFINITY;
            for &j in &live {
                let j = j as usize;
                let m = masks[r].map_or(0.0, |m| m[j]);
                pr[j] = if m == f32::NEG_INFINITY {
                    f32::NEG_INFINITY
                } else {
                    pr[j] * self.scale + m
                };
                max = max.max(pr[j]);
            }
            if max == f32::NEG_INFINITY {
                pr.fill(0.0);
                continue;
            }
            for &j in &live {
                pr[j as usize] = (pr[j as usize] - max).exp();
            }
            // Summed in f64, as ggml does.
            let sum: f64 = live.iter().map(|&j| f64::from(pr[j as usize])).sum();
            let inv = (1.0 / sum) as f32;
            for &j in &live {
                pr[j as usize] = f16::from_f32(pr[j as usize] * inv).to_f32();
            }
        }
        // Keys with a non-zero probability in some row.
        let live: Vec<u32> = live
            .into_iter()
            .filter(|&j| (0..n).any(|r| p[r * total + j as usize] != 0.0))
            .collect();
        let mut acc = vec![0f32; n * hd];
        let wv = Weighted {
            p: &p,
            n,
            hd,
            v: &self.v.data[kv_v..],
            ps: self.v.pos_stride,
            live: &live,
            total,
        };
        match level {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as for the scores above.
            Level::Avx2 | Level::Avx512Vnni => unsafe { weighted_avx2(&wv, &mut acc) },
            _ => weighted_scalar(&wv, &mut acc),
        }
        for r in 0..n {
            let (i, h) = row(r);
            let at = ((b * seq + i) * nh + h) * hd;
            // SAFETY: `at + hd <= out.len()` (checked shape); each (b, i, h) belongs to
            // exactly one task, so no other thread writes these values.
            unsafe { std::ptr::copy_nonoverlapping(acc[r * hd..].as_ptr(), out.ptr().add(at), hd) };
        }
    }
}

/// Lanes of the `p·v` sums: position `j` is added to lane `j % LANES`, and the lanes are
/// combined as [`combine8`] does. This is the order of llama.cpp's (tinyBLAS) f16 matmul
/// on AVX2 over its transposed V cache; the model's greedy output is compared with
/// llama.cpp's, and on small models a last-bit difference in the attention can flip a
/// near-tie many tokens later, so following its order costs little and keeps us closer.
const LANES: usize = 8;

/// `((a0 + a4) + (a2 + a6)) + ((a1 + a5) + (a3 + a7))`: the horizontal sum of an AVX
/// register as ggml does it.
#[inline]
fn combine8(a: [f32; 8]) -> f32 {
    ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7]))
}

/// Inputs of the `q·k` step: `n` query rows of `hd` against the keys `live` of one
/// KV head (`k[j * ps..j * ps + hd]`); writes `out[r * total + j]`.
struct Scores<'a> {
    qs: &'a [f32],
    n: usize,
    hd: usize,
    k: &'a [f16],
    ps: usize,
    live: &'a [u32],
    total: usize,
}

/// Inputs of the `p·v` step: `out[r] = Σ_j p[r * total + j] · v_j` over `live`.
struct Weighted<'a> {
    p: &'a [f32],
    n: usize,
    hd: usize,
    v: &'a [f16],
    ps: usize,
    live: &'a [u32],
    total: usize,
}

fn scores_scalar(s: &Scores<'_>, out: &mut [f32]) {
    for &j in s.live {
        let kj = &s.k[j as usize * s.ps..j as usize * s.ps + s.hd];
        for r in 0..s.n {
            let q = &s.qs[r * s.hd..(r + 1) * s.hd];
            out[r * s.total + j as usize] = q.iter().zip(kj).map(|(a, b)| a * b.to_f32()).sum();
        }
    }
}

fn weighted_scalar(w: &Weighted<'_>, out: &mut [f32]) {
    let hd = w.hd;
    let mut acc = vec![0f32; w.n * LANES * hd];
    for &j in w.live {
        let j = j as usize;
        let vj = &w.v[j * w.ps..j * w.ps + hd];
        for r in 0..w.n {
            let p = w.p[r * w.total + j];
            let a = &mut acc[(r * LANES + j % LANES) * hd..][..hd];
            for (o, v) in a.iter_mut().zip(vj) {
                *o += p * v.to_f32();
            }
        }
    }
    for r in 0..w.n {
        for d in 0..hd {
            out[r * hd + d] = combine8(std::array::from_fn(|l| acc[(r * LANES + l) * hd + d]));
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn scores_avx2(s: &Scores<'_>, out: &mut [f32]) {
    use std::arch::x86_64::*;
    let hd8 = s.hd / 8 * 8;
    let qp = s.qs.as_ptr();
    for &j in s.live {
        let j = j as usize;
        let kj = &s.k[j * s.ps..j * s.ps + s.hd];
        let kp = kj.as_ptr() as *const __m128i;
        let mut acc = [_mm256_setzero_ps(); ROWS];
        let mut c = 0;
        while c < hd8 {
            // SAFETY: `c + 8 <= hd = kj.len()`; f16 is two bytes, so 8 of them are one
            // unaligned 128-bit load. The query rows hold `n * hd` values.
            let kv = unsafe { _mm256_cvtph_ps(_mm_loadu_si128(kp.byte_add(c * 2))) };
            for (r, a) in acc.iter_mut().enumerate().take(s.n) {
                let qv = unsafe { _mm256_loadu_ps(qp.add(r * s.hd + c)) };
                *a = _mm256_fmadd_ps(qv, kv, *a);
            }
            c += 8;
        }
        for (r, a) in acc.iter().enumerate().take(s.n) {
            let mut sum = unsafe { hsum(*a) };
            for d in hd8..s.hd {
                sum += s.qs[r * s.hd + d] * kj[d].to_f32();
            }
            out[r * s.total + j] = sum;
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn weighted_avx2(w: &Weighted<'_>, out: &mut [f32]) {
    use std::arch::x86_64::*;
    let hd = w.hd;
    let hd8 = hd / 8 * 8;
    // acc[(r * LANES + lane) * hd + d]
    let mut acc = vec![0f32; w.n * LANES * hd];
    for &j in w.live {
        let j = j as usize;
        let vj = &w.v[j * w.ps..j * w.ps + hd];
        for r in 0..w.n {
            let p = w.p[r * w.total + j];
            if p == 0.0 {
                // Adding 0·v would change nothing.
                continue;
            }
            let pv = _mm256_set1_ps(p);
            let a = &mut acc[(r * LANES + j % LANES) * hd..][..hd];
            let mut c = 0;
            while c < hd8 {
                // SAFETY: `c + 8 <= hd`, the length of `vj` (f16, 16 bytes per 8) and `a`.
                unsafe {
                    let vv = _mm256_cvtph_ps(_mm_loadu_si128(vj.as_ptr().add(c) as *const __m128i));
                    let x = _mm256_loadu_ps(a.as_ptr().add(c));
                    _mm256_storeu_ps(a.as_mut_ptr().add(c), _mm256_fmadd_ps(pv, vv, x));
                }
                c += 8;
            }
            for d in hd8..hd {
                a[d] = p.mul_add(vj[d].to_f32(), a[d]);
            }
        }
    }
    for r in 0..w.n {
        for d in 0..hd {
            let lane = |l: usize| acc[(r * LANES + l) * hd + d];
            out[r * hd + d] = combine8(std::array::from_fn(lane));
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn hsum(v: std::arch::x86_64::__m256) -> f32 {
    use std::arch::x86_64::*;
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps::<1>(s, s));
    _mm_cvtss_f32(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Rng(u64);
    impl Rng {
        fn f32(&mut self) -> f32 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            let x = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D);
            (x >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
        }
    }

    /// A straightforward f64 attention at the same precision points (q and p rounded to
    /// f16), independent of the kernel's blocking, skipping and SIMD.
    fn reference(a: &Attention<'_>) -> Vec<f32> {
        let (b, nh, seq, total, hd) = (a.batch, a.n_head, a.seq, a.total, a.head_dim);
        let n_rep = nh / a.n_kv_head;
        let mut out = vec![0f32; b * seq * nh * hd];
        let at = |kv: &KvView<'_>, bb: usize, g: usize, j: usize, d: usize| {
            f64::from(kv.data[bb * kv.batch_stride + g * kv.head_stride + j * kv.pos_stride + d])
        };
        for bb in 0..b {
            for h in 0..nh {
                let g = h / n_rep;
                for i in 0..seq {
                    let q: Vec<f64> = (0..hd)
                        .map(|d| {
                            let v = a.q[((bb * nh + h) * seq + i) * hd + d];
                            f64::from(f16::from_f32(v).to_f32())
                        })
                        .collect();
                    let s: Vec<f64> = (0..total)
                        .map(|j| {
                            let m = a.mask.map_or(0.0, |m| m[(bb * seq + i) * total + j]);
                            let dot: f64 = (0..hd).map(|d| q[d] * at(&a.k, bb, g, j, d)).sum();
                            dot * f64::from(a.scale) + f64::from(m)
                        })
                        .collect();
                    let max = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    if max == f64::NEG_INFINITY {
                        continue;
                    }
                    let e: Vec<f64> = s.iter().map(|x| (x - max).exp()).collect();
                    let sum: f64 = e.iter().sum();
                    for d in 0..hd {
                        let o: f64 = (0..total)
                            .map(|j| {
                                let p = f16::from_f32((e[j] / sum) as f32).to_f32();
                                f64::from(p) * at(&a.v, bb, g, j, d)
                            })
                            .sum();
                        out[((bb * seq + i) * nh + h) * hd + d] = o as f32;
                    }
                }
            }
        }
        out
    }

    /// Random case: KV heads laid out in a `cap`-position buffer (a view with
    /// `pos_stride = hd + extra`), a causal mask with padding in the middle of row 1.
    #[allow(clippy::too_many_arguments)]
    fn case(
        b: usize,
        nh: usize,
        nkv: usize,
        seq: usize,
        total: usize,
        hd: usize,
        masked: bool,
        seed: u64,
    ) {
        let mut rng = Rng(seed);
        let cap = total + 3;
        let ps = hd + 2;
        let (hs, bs) = (cap * ps, nkv * cap * ps);
        let kv = |rng: &mut Rng| -> Vec<f16> {
            (0..b * bs)
                .map(|_| f16::from_f32(rng.f32() * 2.0))
                .collect()
        };
        let k = kv(&mut rng);
        let v = kv(&mut rng);
        let q: Vec<f32> = (0..b * nh * seq * hd).map(|_| rng.f32() * 2.0).collect();
        let start = total - seq;
        let mask: Vec<f32> = (0..b * seq * total)
            .map(|x| {
                let (r, i, j) = (x / (seq * total), x / total % seq, x % total);
                let hidden = j > start + i || (r == 1 && (2..5).contains(&j) && j != start + i);
                if hidden { f32::NEG_INFINITY } else { 0.0 }
            })
            .collect();
        fn view(data: &[f16], bs: usize, hs: usize, ps: usize) -> KvView<'_> {
            KvView {
                data,
                batch_stride: bs,
                head_stride: hs,
                pos_stride: ps,
            }
        }
        let a = Attention {
            batch: b,
            n_head: nh,
            n_kv_head: nkv,
            seq,
            total,
            head_dim: hd,
            scale: 1.0 / (hd as f32).sqrt(),
            q: &q,
            k: view(&k, bs, hs, ps),
            v: view(&v, bs, hs, ps),
            mask: masked.then_some(&mask[..]),
        };
        let want = reference(&a);
        for level in Level::supported() {
            let mut got = vec![f32::NAN; want.len()];
            a.run_with(level, &mut got).expect("run");
            for (x, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (g - w).abs() <= 2e-3 * (1.0 + w.abs()),
                    "{level:?} b{b} nh{nh} nkv{nkv} seq{seq} total{total} hd{hd} at {x}: {g} vs {w}"
                );
            }
        }
    }

    #[test]
    fn decode_matches_reference() {
        // SmolLM2-like and Qwen-like GQA, one query.
        case(1, 9, 3, 1, 37, 64, false, 1);
        case(1, 14, 2, 1, 200, 64, false, 2);
        case(2, 4, 4, 1, 9, 64, true, 3);
    }

    #[test]
    fn prefill_with_causal_and_middle_padding_matches_reference() {
        case(2, 6, 2, 7, 11, 64, true, 4);
        case(1, 9, 3, 33, 33, 64, true, 5);
        // A long prefill that fans out to the thread pool.
        case(1, 4, 2, 64, 96, 64, true, 9);
    }

    #[test]
    fn odd_head_dims_and_sizes_match_reference() {
        case(3, 3, 1, 5, 13, 13, true, 6);
        case(1, 2, 2, 3, 3, 7, true, 7);
        case(2, 5, 5, 2, 6, 24, false, 8);
    }

    #[test]
    fn fully_masked_query_gives_zeros_and_bad_shapes_are_errors() {
        let k = vec![f16::ONE; 2 * 4];
        let q = vec![1.0f32; 4];
        let view = KvView {
            data: &k,
            batch_stride: 8,
            head_stride: 8,
            pos_stride: 4,
        };
        let mask = [f32::NEG_INFINITY; 2];
        let mut a = Attention {
            batch: 1,
            n_head: 1,
            n_kv_head: 1,
            seq: 1,
            total: 2,
            head_dim: 4,
            scale: 0.5,
            q: &q,
            k: view,
            v: view,
            mask: Some(&mask),
        };
        let mut out = vec![f32::NAN; 4];
        a.run(&mut out).expect("run");
        assert_eq!(out, vec![0.0; 4]);
        a.total = 3;
        assert!(a.run(&mut out).is_err(), "view too short for 3 positions");
        a.total = 2;
        a.n_kv_head = 2;
        assert!(
            a.run(&mut out).is_err(),
            "1 query head cannot share 2 KV heads"
        );
        a.n_kv_head = 1;
        assert!(a.run(&mut [0.0; 3]).is_err(), "output too short");
    }
}
