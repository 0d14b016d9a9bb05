//! AVX2 + FMA vec-dot kernels.
//!
//! Every kernel computes the dot products of one weight row with `R` rows of quantized
//! activations at once (`R = 1` for decode, `R = 4` for prefill), so a weight block is
//! decoded once and reused across activation rows. The 32-element formats are decoded to
//! unsigned bytes and multiplied with `maddubs` (u8 x i8); the centring of Q4_0/Q5_0
//! (`-8`, `-16`) and the min of Q4_1/Q5_1 are applied through the activation block sums.
//!
//! All functions here are `unsafe`: callers must have checked AVX2, FMA and F16C support.

#![allow(unsafe_op_in_unsafe_fn)]

use crate::GgmlDType;
use crate::quant::{Q8Block, Q8KBlock, Q8x4};
use std::arch::x86_64::*;

pub(crate) const F_Q4_0: u8 = 0;
pub(crate) const F_Q4_1: u8 = 1;
pub(crate) const F_Q5_0: u8 = 2;
pub(crate) const F_Q5_1: u8 = 3;
pub(crate) const F_Q8_0: u8 = 4;

/// The f16 at `p` as f32, with the F16C instruction (no runtime check per call).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn f16_at(b: &[u8], at: usize) -> f32 {
    debug_assert!(at + 2 <= b.len());
    let bits = std::ptr::read_unaligned(b.as_ptr().add(at) as *const u16);
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn hsum_ps(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps::<1>(s, s));
    _mm_cvtss_f32(s)
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn hsum_epi32(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01_00_11_10>(s));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s));
    _mm_cvtsi128_si32(s)
}

/// 16 packed bytes to 32 nibbles: low nibbles in lane 0, high nibbles in lane 1.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn nibbles(p: *const u8) -> __m256i {
    let q = _mm_loadu_si128(p as *const __m128i);
    let m = _mm_set1_epi8(0x0F);
    _mm256_set_m128i(
        _mm_and_si128(_mm_srli_epi16::<4>(q), m),
        _mm_and_si128(q, m),
    )
}

/// 32 bits to 32 bytes, 0x10 where the bit is set.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn high_bits(p: *const u8) -> __m256i {
    let qh = std::ptr::read_unaligned(p as *const i32);
    let shuf = _mm256_setr_epi8(
        0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3,
        3, 3,
    );
    let bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(qh), shuf);
    let bit = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
    let set = _mm256_cmpeq_epi8(_mm256_and_si256(bytes, bit), bit);
    _mm256_and_si256(set, _mm256_set1_epi8(0x10))
}

/// Decode a 32-element block: (values, d, c) with `x = d * v + c_term`, where the
/// offset contributes `c * s_y` to a dot product (`s_y = d_y * sum(q_y)`).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn unpack<const F: u8>(p: *const u8) -> (__m256i, f32, f32) {
    let b = std::slice::from_raw_parts(p, 4);
    let d = f16_at(b, 0);
    match F {
        F_Q4_0 => (nibbles(p.add(2)), d, -8.0 * d),
        F_Q4_1 => (nibbles(p.add(4)), d, f16_at(b, 2)),
        F_Q5_0 => (
            _mm256_or_si256(nibbles(p.add(6)), high_bits(p.add(2))),
            d,
            -16.0 * d,
        ),
        F_Q5_1 => (
            _mm256_or_si256(nibbles(p.add(8)), high_bits(p.add(4))),
            d,
            f16_at(b, 2),
        ),
        _ => (_mm256_loadu_si256(p.add(2) as *const __m256i), d, 0.0),
    }
}

/// One weight block against `R` activation rows: `acc[r] += d_w d_y isum`, `off[r] += c s_y`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn step32<const F: u8, const R: usize>(
    wp: *const u8,
    ys: &[*const Q8Block; R],
    b: usize,
    acc: &mut [__m256; R],
    off: &mut [f32; R],
) {
    let ones = _mm256_set1_epi16(1);
    let (w, d, c) = unpack::<F>(wp);
    let aw = if F == F_Q8_0 {
        _mm256_sign_epi8(w, w)
    } else {
        w
    };
    for r in 0..R {
        let y = &*ys[r].add(b);
        let yv = _mm256_loadu_si256(y.qs.as_ptr() as *const __m256i);
        let yv = if F == F_Q8_0 {
            _mm256_sign_epi8(yv, w)
        } else {
            yv
        };
        let p32 = _mm256_madd_epi16(_mm256_maddubs_epi16(aw, yv), ones);
        acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p32), _mm256_set1_ps(d * y.d), acc[r]);
        if F != F_Q8_0 {
            off[r] += c * y.s;
        }
    }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot32<const F: u8, const R: usize, const TS: usize>(
    row: &[u8],
    xs: &[&[Q8Block]],
    out: &mut [f32],
) {
    let nb = row.len() / TS;
    let mut acc = [_mm256_setzero_ps(); R];
    let mut off = [0f32; R];
    let mut ys = [std::ptr::null::<Q8Block>(); R];
    for r in 0..R {
        assert!(
            xs[r].len() >= nb,
            "activation row shorter than the weight row"
        );
        ys[r] = xs[r].as_ptr();
    }
    let p = row.as_ptr();
    let mut b = 0;
    if R == 1 {
        // Two independent accumulator chains hide the FMA latency.
        let mut acc2 = [_mm256_setzero_ps(); R];
        let mut off2 = [0f32; R];
        while b + 2 <= nb {
            step32::<F, R>(p.add(b * TS), &ys, b, &mut acc, &mut off);
            step32::<F, R>(p.add((b + 1) * TS), &ys, b + 1, &mut acc2, &mut off2);
            b += 2;
        }
        for r in 0..R {
            acc[r] = _mm256_add_ps(acc[r], acc2[r]);
            off[r] += off2[r];
        }
    }
    while b < nb {
        step32::<F, R>(p.add(b * TS), &ys, b, &mut acc, &mut off);
        b += 1;
    }
    for r in 0..R {
        out[r] = hsum_ps(acc[r]) + off[r];
    }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_q4k<const R: usize, const Q5: bool>(row: &[u8], xs: &[&[Q8KBlock]], out: &mut [f32]) {
    const TS4: usize = 144;
    const TS5: usize = 176;
    let ts = if Q5 { TS5 } else { TS4 };
    let nb = row.len() / ts;
    let m4 = _mm256_set1_epi8(0x0F);
    let v16 = _mm256_set1_epi8(0x10);
    let mut acc = [_mm256_setzero_ps(); R];
    let mut off = [0f32; R];
    for b in 0..nb {
        let blk = &row[b * ts..(b + 1) * ts];
        let d = f16_at(blk, 0);
        let dmin = f16_at(blk, 2);
        // The 12 packed 6-bit scales and mins to 8 + 8 bytes without per-entry
        // branches (the same bit moves as `quant::scale_min_k4`).
        let u = |i: usize| {
            u32::from_le_bytes([
                blk[4 + 4 * i],
                blk[5 + 4 * i],
                blk[6 + 4 * i],
                blk[7 + 4 * i],
            ])
        };
        let (u0, u1, u2) = (u(0), u(1), u(2));
        const K1: u32 = 0x3f3f_3f3f;
        const K2: u32 = 0x0f0f_0f0f;
        const K3: u32 = 0x0303_0303;
        let sc_lo = u0 & K1;
        let sc_hi = (u2 & K2) | (((u0 >> 6) & K3) << 4);
        let mn_lo = u1 & K1;
        let mn_hi = ((u2 >> 4) & K2) | (((u1 >> 6) & K3) << 4);
        let scb = (sc_lo as u64 | (sc_hi as u64) << 32).to_le_bytes();
        let scales: [i16; 8] = std::array::from_fn(|j| scb[j] as i16);
        let mins16 = _mm_cvtepu8_epi16(_mm_set_epi32(0, 0, mn_hi as i32, mn_lo as i32));
        let qs = if Q5 {
            blk[48..].as_ptr()
        } else {
            blk[16..].as_ptr()
        };
        let hb = if Q5 {
            _mm256_loadu_si256(blk[16..].as_ptr() as *const __m256i)
        } else {
            _mm256_setzero_si256()
        };
        let mut sumi = [_mm256_setzero_si256(); R];
        for j in 0..4 {
            let q = _mm256_loadu_si256(qs.add(32 * j) as *const __m256i);
            let mut lo = _mm256_and_si256(q, m4);
            let mut hi = _mm256_and_si256(_mm256_srli_epi16::<4>(q), m4);
            if Q5 {
                let b1 = _mm256_set1_epi8(1 << (2 * j));
                let b2 = _mm256_set1_epi8((1u8 << (2 * j + 1)) as i8);
                lo = _mm256_or_si256(
                    lo,
                    _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(hb, b1), b1), v16),
                );
                hi = _mm256_or_si256(
                    hi,
                    _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(hb, b2), b2), v16),
                );
            }
            let s1 = _mm256_set1_epi16(scales[2 * j]);
            let s2 = _mm256_set1_epi16(scales[2 * j + 1]);
            for r in 0..R {
                let y = xs[r][b].qs.as_ptr();
                let y0 = _mm256_loadu_si256(y.add(64 * j) as *const __m256i);
                let y1 = _mm256_loadu_si256(y.add(64 * j + 32) as *const __m256i);
                let p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, y0), s1);
                let p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(hi, y1), s2);
                sumi[r] = _mm256_add_epi32(sumi[r], _mm256_add_epi32(p0, p1));
            }
        }
        for r in 0..R {
            let y = &xs[r][b];
            let bs = y.bsums.as_ptr() as *const __m128i;
            let pairs = _mm_hadd_epi16(_mm_loadu_si128(bs), _mm_loadu_si128(bs.add(1)));
            let v = _mm_madd_epi16(mins16, pairs);
            let v = _mm_add_epi32(v, _mm_shuffle_epi32::<0b01_00_11_10>(v));
            let v = _mm_add_epi32(v, _mm_shuffle_epi32::<0b10_11_00_01>(v));
            let summ = _mm_cvtsi128_si32(v);
            acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sumi[r]), _mm256_set1_ps(d * y.d), acc[r]);
            off[r] -= dmin * y.d * summ as f32;
        }
    }
    for r in 0..R {
        out[r] = hsum_ps(acc[r]) + off[r];
    }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_q6k<const R: usize>(row: &[u8], xs: &[&[Q8KBlock]], out: &mut [f32]) {
    const TS: usize = 210;
    let nb = row.len() / TS;
    let m4 = _mm256_set1_epi8(0x0F);
    let m2 = _mm256_set1_epi8(0x03);
    let mut acc = [_mm256_setzero_ps(); R];
    for b in 0..nb {
        let blk = &row[b * TS..(b + 1) * TS];
        let d = f16_at(blk, 208);
        let sc: [i16; 16] = std::array::from_fn(|i| blk[192 + i] as i8 as i16);
        let mut sumi = [_mm256_setzero_si256(); R];
        for n in 0..2 {
            let ql0 = _mm256_loadu_si256(blk[64 * n..].as_ptr() as *const __m256i);
            let ql1 = _mm256_loadu_si256(blk[64 * n + 32..].as_ptr() as *const __m256i);
            let qh = _mm256_loadu_si256(blk[128 + 32 * n..].as_ptr() as *const __m256i);
            let q = [
                _mm256_or_si256(
                    _mm256_and_si256(ql0, m4),
                    _mm256_slli_epi16::<4>(_mm256_and_si256(qh, m2)),
                ),
                _mm256_or_si256(
                    _mm256_and_si256(ql1, m4),
                    _mm256_slli_epi16::<4>(_mm256_and_si256(_mm256_srli_epi16::<2>(qh), m2)),
                ),
                _mm256_or_si256(
                    _mm256_and_si256(_mm256_srli_epi16::<4>(ql0), m4),
                    _mm256_slli_epi16::<4>(_mm256_and_si256(_mm256_srli_epi16::<4>(qh), m2)),
                ),
                _mm256_or_si256(
                    _mm256_and_si256(_mm256_srli_epi16::<4>(ql1), m4),
                    _mm256_slli_epi16::<4>(_mm256_and_si256(_mm256_srli_epi16::<6>(qh), m2)),
                ),
            ];
            for (k, qk) in q.iter().enumerate() {
                let g = 8 * n + 2 * k;
                let s = _mm256_set_m128i(_mm_set1_epi16(sc[g + 1]), _mm_set1_epi16(sc[g]));
                for r in 0..R {
                    let y = xs[r][b].qs.as_ptr().add(128 * n + 32 * k);
                    let yv = _mm256_loadu_si256(y as *const __m256i);
                    let p = _mm256_madd_epi16(_mm256_maddubs_epi16(*qk, yv), s);
                    sumi[r] = _mm256_add_epi32(sumi[r], p);
                }
            }
        }
        let scv = _mm256_loadu_si256(sc.as_ptr() as *const __m256i);
        for r in 0..R {
            let y = &xs[r][b];
            let bs = _mm256_loadu_si256(y.bsums.as_ptr() as *const __m256i);
            let offs = hsum_epi32(_mm256_madd_epi16(bs, scv));
            let tot = _mm256_sub_epi32(sumi[r], _mm256_setr_epi32(32 * offs, 0, 0, 0, 0, 0, 0, 0));
            acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(tot), _mm256_set1_ps(d * y.d), acc[r]);
        }
    }
    for r in 0..R {
        out[r] = hsum_ps(acc[r]);
    }
}

/// Dot products of one 32-block-format weight row with `xs.len()` activation rows.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C; `row` holds whole blocks of `dtype` and every
/// `xs[i]` at least as many blocks; `out.len() == xs.len()`.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn dot_rows32(dtype: GgmlDType, row: &[u8], xs: &[&[Q8Block]], out: &mut [f32]) {
    macro_rules! go {
        ($f:expr, $ts:expr) => {{
            let mut i = 0;
            while i + 4 <= xs.len() {
                dot32::<{ $f }, 4, { $ts }>(row, &xs[i..i + 4], &mut out[i..i + 4]);
                i += 4;
            }
            while i < xs.len() {
                dot32::<{ $f }, 1, { $ts }>(row, &xs[i..i + 1], &mut out[i..i + 1]);
                i += 1;
            }
        }};
    }
    match dtype {
        GgmlDType::Q4_0 => go!(F_Q4_0, 18),
        GgmlDType::Q4_1 => go!(F_Q4_1, 20),
        GgmlDType::Q5_0 => go!(F_Q5_0, 22),
        GgmlDType::Q5_1 => go!(F_Q5_1, 24),
        GgmlDType::Q8_0 => go!(F_Q8_0, 34),
        _ => unreachable!("dot_rows32 is only called for 32-element block formats"),
    }
}

/// Dot products of one k-quant weight row with `xs.len()` Q8_K activation rows.
///
/// # Safety
/// As [`dot_rows32`].
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn dot_rowsk(dtype: GgmlDType, row: &[u8], xs: &[&[Q8KBlock]], out: &mut [f32]) {
    macro_rules! go {
        ($call4:expr, $call1:expr) => {{
            let mut i = 0;
            while i + 4 <= xs.len() {
                $call4(row, &xs[i..i + 4], &mut out[i..i + 4]);
                i += 4;
            }
            while i < xs.len() {
                $call1(row, &xs[i..i + 1], &mut out[i..i + 1]);
                i += 1;
            }
        }};
    }
    match dtype {
        GgmlDType::Q4K => go!(dot_q4k::<4, false>, dot_q4k::<1, false>),
        GgmlDType::Q5K => go!(dot_q4k::<4, true>, dot_q4k::<1, true>),
        GgmlDType::Q6K => go!(dot_q6k::<4>, dot_q6k::<1>),
        _ => unreachable!("dot_rowsk is only called for k-quant formats"),
    }
}

/// The four horizontal sums of `v[0..4]`, in order.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn hsum4(v: &[__m256; 4]) -> __m128 {
    let t0 = _mm256_hadd_ps(v[0], v[1]);
    let t1 = _mm256_hadd_ps(v[2], v[3]);
    let t = _mm256_hadd_ps(t0, t1);
    _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps::<1>(t))
}

/// Register tile: weight rows `w0`, `w1` (whole blocks of format `F`, `nb` of them)
/// against one interleaved group of four activation rows; returns the 2 x 4 dot
/// products, row `i` in `out[i]`. Each weight block is decoded once for four
/// activation rows and each activation block loaded once for two weight rows.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn kernel_2x4<const F: u8, const TS: usize>(
    w0: *const u8,
    w1: *const u8,
    ys: *const Q8x4,
    nb: usize,
    out: &mut [[f32; 4]; 2],
) {
    let ones = _mm256_set1_epi16(1);
    let mut acc = [[_mm256_setzero_ps(); 4]; 2];
    let mut off = _mm256_setzero_ps();
    for b in 0..nb {
        let (q0, d0, c0) = unpack::<F>(w0.add(b * TS));
        let (q1, d1, c1) = unpack::<F>(w1.add(b * TS));
        let y = &*ys.add(b);
        let (u0, u1) = if F == F_Q8_0 {
            (_mm256_sign_epi8(q0, q0), _mm256_sign_epi8(q1, q1))
        } else {
            (q0, q1)
        };
        let dw0 = _mm256_set1_ps(d0);
        let dw1 = _mm256_set1_ps(d1);
        for j in 0..4 {
            let yv = _mm256_load_si256(y.qs[j].as_ptr() as *const __m256i);
            let dy = _mm256_broadcast_ss(&y.d[j]);
            let (y0, y1) = if F == F_Q8_0 {
                (_mm256_sign_epi8(yv, q0), _mm256_sign_epi8(yv, q1))
            } else {
                (yv, yv)
            };
            let p0 = _mm256_cvtepi32_ps(_mm256_madd_epi16(_mm256_maddubs_epi16(u0, y0), ones));
            let p1 = _mm256_cvtepi32_ps(_mm256_madd_epi16(_mm256_maddubs_epi16(u1, y1), ones));
            acc[0][j] = _mm256_fmadd_ps(p0, _mm256_mul_ps(dw0, dy), acc[0][j]);
            acc[1][j] = _mm256_fmadd_ps(p1, _mm256_mul_ps(dw1, dy), acc[1][j]);
        }
        if F != F_Q8_0 {
            let sy = _mm256_broadcast_ps(&*(y.s.as_ptr() as *const __m128));
            let c = _mm256_set_m128(_mm_set1_ps(c1), _mm_set1_ps(c0));
            off = _mm256_fmadd_ps(c, sy, off);
        }
    }
    let r0 = _mm_add_ps(hsum4(&acc[0]), _mm256_castps256_ps128(off));
    let r1 = _mm_add_ps(hsum4(&acc[1]), _mm256_extractf128_ps::<1>(off));
    _mm_storeu_ps(out[0].as_mut_ptr(), r0);
    _mm_storeu_ps(out[1].as_mut_ptr(), r1);
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn tile32_impl<const F: u8, const TS: usize>(t: &Tile32<'_>) {
    let nb = t.nb;
    let rb = nb * TS;
    let groups = t.m.div_ceil(4);
    let mut out = [[0f32; 4]; 2];
    for g in 0..groups {
        let ys = t.acts.as_ptr().add(g * nb);
        let live = (t.m - 4 * g).min(4);
        let mut i = 0;
        while i < t.rows {
            let w0 = t.w.as_ptr().add(i * rb);
            // An odd last row is paired with itself; its second result is dropped.
            let pair = i + 1 < t.rows;
            let w1 = if pair { w0.add(rb) } else { w0 };
            kernel_2x4::<F, TS>(w0, w1, ys, nb, &mut out);
            for (di, o) in out.iter().enumerate().take(if pair { 2 } else { 1 }) {
                for (j, &v) in o.iter().enumerate().take(live) {
                    *t.y.add((4 * g + j) * t.ldy + t.col0 + i + di) = v;
                }
            }
            i += 2;
        }
    }
}

/// One register-tiled piece of a prefill matmul: `rows` consecutive weight rows (`w`,
/// whole rows of `nb` blocks) against all `m` activation rows (`acts`, groups of four
/// from `interleave4`), written to `y[r * ldy + col0 + i]`.
pub(crate) struct Tile32<'a> {
    pub w: &'a [u8],
    pub rows: usize,
    pub nb: usize,
    pub acts: &'a [Q8x4],
    pub m: usize,
    pub y: *mut f32,
    pub ldy: usize,
    pub col0: usize,
}

/// Run a [`Tile32`] for a 32-element block format.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C; `w` holds `rows * nb` blocks of `dtype`;
/// `acts` holds `ceil(m/4) * nb` groups; `y` is valid for writes at every
/// `r * ldy + col0 + i` with `r < m`, `i < rows`, and no other thread writes there.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn tile32(dtype: GgmlDType, t: &Tile32<'_>) {
    assert!(t.w.len() >= t.rows * t.nb * dtype.type_size());
    assert!(t.acts.len() >= t.m.div_ceil(4) * t.nb);
    match dtype {
        GgmlDType::Q4_0 => tile32_impl::<F_Q4_0, 18>(t),
        GgmlDType::Q4_1 => tile32_impl::<F_Q4_1, 20>(t),
        GgmlDType::Q5_0 => tile32_impl::<F_Q5_0, 22>(t),
        GgmlDType::Q5_1 => tile32_impl::<F_Q5_1, 24>(t),
        GgmlDType::Q8_0 => tile32_impl::<F_Q8_0, 34>(t),
        _ => unreachable!("tile32 is only called for 32-element block formats"),
    }
}

/// Lanes 0..8 of `a`, `b`, `c`, `d` (i32 in -128..=127) as 32 bytes in order.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn pack_i8(a: __m256i, b: __m256i, c: __m256i, d: __m256i) -> __m256i {
    // `packs` works per 128-bit lane; the permute restores element order.
    let p = _mm256_packs_epi16(_mm256_packs_epi32(a, b), _mm256_packs_epi32(c, d));
    _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn hmax_ps(v: __m256) -> f32 {
    let s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_max_ss(s, _mm_shuffle_ps::<1>(s, s));
    _mm_cvtss_f32(s)
}

/// `quant::quantize_q8` with the same arithmetic (f32 products, round to nearest even),
/// so bit-identical to it; the scalar loop was ~4% of a prefill once the VNNI matmuls
/// took the rest down.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C; `x.len() == 32 * out.len()`.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn quantize_q8(x: &[f32], out: &mut [Q8Block], f16_sum: bool) {
    assert_eq!(x.len(), out.len() * 32);
    let sign = _mm256_set1_ps(-0.0);
    for (xb, y) in x.chunks_exact(32).zip(out.iter_mut()) {
        let p = xb.as_ptr();
        let v = [
            _mm256_loadu_ps(p),
            _mm256_loadu_ps(p.add(8)),
            _mm256_loadu_ps(p.add(16)),
            _mm256_loadu_ps(p.add(24)),
        ];
        let mut mx = _mm256_andnot_ps(sign, v[0]);
        for vi in &v[1..] {
            mx = _mm256_max_ps(mx, _mm256_andnot_ps(sign, *vi));
        }
        let amax = hmax_ps(mx);
        let d = amax / 127.0;
        let id = _mm256_set1_ps(if amax != 0.0 { 127.0 / amax } else { 0.0 });
        let mut q = [_mm256_setzero_si256(); 4];
        for (qi, vi) in q.iter_mut().zip(&v) {
            *qi = _mm256_cvtps_epi32(_mm256_round_ps::<
                { _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC },
            >(_mm256_mul_ps(*vi, id)));
        }
        let sum = hsum_epi32(_mm256_add_epi32(
            _mm256_add_epi32(q[0], q[1]),
            _mm256_add_epi32(q[2], q[3]),
        ));
        _mm256_storeu_si256(y.qs.as_mut_ptr().cast(), pack_i8(q[0], q[1], q[2], q[3]));
        let d16 = half::f16::from_f32(d).to_f32();
        y.d = d16;
        y.s = if f16_sum {
            half::f16::from_f32(d * sum as f32).to_f32()
        } else {
            d16 * sum as f32
        };
    }
}

/// `quant::quantize_q8k`, bit-identical to it (see [`quantize_q8`]).
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C; `x.len() == 256 * out.len()`.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn quantize_q8k(x: &[f32], out: &mut [Q8KBlock]) {
    assert_eq!(x.len(), out.len() * 256);
    let sign = _mm256_set1_ps(-0.0);
    for (xb, y) in x.chunks_exact(256).zip(out.iter_mut()) {
        let p = xb.as_ptr();
        let mut mx = _mm256_setzero_ps();
        for c in 0..32 {
            mx = _mm256_max_ps(mx, _mm256_andnot_ps(sign, _mm256_loadu_ps(p.add(8 * c))));
        }
        let amax = hmax_ps(mx);
        if amax == 0.0 {
            *y = Q8KBlock::default();
            continue;
        }
        // The signed value of the first element of largest magnitude, as the scalar
        // loop picks it.
        let am = _mm256_set1_ps(amax);
        let mut max = amax;
        for c in 0..32 {
            let v = _mm256_loadu_ps(p.add(8 * c));
            let hit =
                _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_EQ_OQ>(_mm256_andnot_ps(sign, v), am));
            if hit != 0 {
                max = xb[8 * c + hit.trailing_zeros() as usize];
                break;
            }
        }
        let iscale = -127.0 / max;
        let is = _mm256_set1_ps(iscale);
        for g in 0..8 {
            let mut q = [_mm256_setzero_si256(); 4];
            for (i, qi) in q.iter_mut().enumerate() {
                let v = _mm256_loadu_ps(p.add(32 * g + 8 * i));
                let r = _mm256_cvtps_epi32(_mm256_round_ps::<
                    { _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC },
                >(_mm256_mul_ps(v, is)));
                // Clamped to -128..=127 as the scalar code does (before the sums).
                *qi = _mm256_max_epi32(
                    _mm256_min_epi32(r, _mm256_set1_epi32(127)),
                    _mm256_set1_epi32(-128),
                );
            }
            _mm256_storeu_si256(
                y.qs.as_mut_ptr().add(32 * g).cast(),
                pack_i8(q[0], q[1], q[2], q[3]),
            );
            y.bsums[2 * g] = hsum_epi32(_mm256_add_epi32(q[0], q[1])) as i16;
            y.bsums[2 * g + 1] = hsum_epi32(_mm256_add_epi32(q[2], q[3])) as i16;
        }
        y.d = 1.0 / iscale;
    }
}
