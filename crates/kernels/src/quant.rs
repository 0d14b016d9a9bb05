//! Scalar reference code: block decoding (dequantization), activation quantization to
//! 8-bit blocks the way llama.cpp does it, and portable integer vec-dot kernels.
//!
//! The SIMD kernels in sibling modules must agree with the dot products here up to
//! float rounding; the unit tests check that.

use crate::GgmlDType;
use half::f16;

/// Half-precision bytes at `b[0..2]` as f32.
#[inline(always)]
pub(crate) fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// An activation block for the 32-element formats: `x ≈ d * qs`, `s = d * sum(qs)`.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub(crate) struct Q8Block {
    pub d: f32,
    pub s: f32,
    pub qs: [i8; 32],
}

impl Default for Q8Block {
    fn default() -> Self {
        Q8Block {
            d: 0.0,
            s: 0.0,
            qs: [0; 32],
        }
    }
}

/// Four activation rows' blocks at one block index, interleaved for the register-tiled
/// prefill kernels: `qs[j]`, `d[j]`, `s[j]` are row `j`'s [`Q8Block`] fields.
#[derive(Debug, Clone, Copy, Default)]
#[repr(C, align(32))]
pub(crate) struct Q8x4 {
    pub qs: [[i8; 32]; 4],
    pub d: [f32; 4],
    pub s: [f32; 4],
}

/// Interleave `m` rows of `nb` blocks into groups of four rows (`ceil(m/4) * nb`
/// entries, group-major); a last partial group repeats its last row.
pub(crate) fn interleave4(q: &[Q8Block], m: usize, nb: usize, out: &mut Vec<Q8x4>) {
    let groups = m.div_ceil(4);
    out.clear();
    out.resize(groups * nb, Q8x4::default());
    for g in 0..groups {
        for j in 0..4 {
            let r = (4 * g + j).min(m - 1);
            for b in 0..nb {
                let src = &q[r * nb + b];
                let dst = &mut out[g * nb + b];
                dst.qs[j] = src.qs;
                dst.d[j] = src.d;
                dst.s[j] = src.s;
            }
        }
    }
}

/// Activation rows per group of the AVX-512 VNNI prefill kernels (`vnni`): one 512-bit
/// register holds one 32-bit lane per row.
pub(crate) const GROUP: usize = 16;

/// Sixteen activation rows' [`Q8Block`]s at one block index, transposed for `vpdpbusd`:
/// `qs[t][r]` is bytes `4t..4t+4` of row `r`'s block, so one broadcast weight dword
/// times `qs[t]` adds four products to each of the sixteen rows' dot products.
#[derive(Debug, Clone, Copy)]
#[repr(C, align(64))]
pub(crate) struct Q8x16 {
    pub qs: [[i32; GROUP]; 8],
    pub d: [f32; GROUP],
    /// `-c * sum(q)`: the integer start of a dot product with weights stored as
    /// `v + c` (Q4_0 `c = 8`, Q5_0 16, Q8_0 128; 0 for the affine formats).
    pub init: [i32; GROUP],
    /// [`Q8Block::s`] (the affine formats' offset term).
    pub s: [f32; GROUP],
}

impl Default for Q8x16 {
    fn default() -> Self {
        Q8x16 {
            qs: [[0; GROUP]; 8],
            d: [0.0; GROUP],
            init: [0; GROUP],
            s: [0.0; GROUP],
        }
    }
}

/// The dword of `qs` starting at byte `4 * t`.
#[inline(always)]
fn dword(qs: &[i8], t: usize) -> i32 {
    i32::from_le_bytes([
        qs[4 * t] as u8,
        qs[4 * t + 1] as u8,
        qs[4 * t + 2] as u8,
        qs[4 * t + 3] as u8,
    ])
}

/// Transpose `rows.len() / nb` (at most [`GROUP`]) activation rows of `nb` blocks into
/// `out` (`nb` entries); missing rows are zero. `centre` is the weights' `c` (see
/// [`Q8x16::init`]).
pub(crate) fn interleave16(rows: &[Q8Block], nb: usize, centre: i32, out: &mut [Q8x16]) {
    let live = rows.len() / nb;
    debug_assert!(live <= GROUP && out.len() == nb);
    for (b, o) in out.iter_mut().enumerate() {
        *o = Q8x16::default();
        for r in 0..live {
            let q = &rows[r * nb + b];
            for t in 0..8 {
                o.qs[t][r] = dword(&q.qs, t);
            }
            o.d[r] = q.d;
            o.s[r] = q.s;
            o.init[r] = -centre * q.qs.iter().map(|&v| v as i32).sum::<i32>();
        }
    }
}

/// Sixteen activation rows' [`Q8KBlock`]s at one block index, transposed as [`Q8x16`].
#[derive(Debug, Clone, Copy)]
#[repr(C, align(64))]
pub(crate) struct Q8Kx16 {
    pub qs: [[i32; GROUP]; 64],
    pub d: [f32; GROUP],
    /// Sums of each 32-element sub-block's `qs` (the Q4_K/Q5_K mins term).
    pub bs32: [[f32; GROUP]; 8],
    /// `-32 *` the sums of each 16-element sub-block (Q6_K stores `v + 32`).
    pub init16: [[i32; GROUP]; 16],
}

impl Default for Q8Kx16 {
    fn default() -> Self {
        Q8Kx16 {
            qs: [[0; GROUP]; 64],
            d: [0.0; GROUP],
            bs32: [[0.0; GROUP]; 8],
            init16: [[0; GROUP]; 16],
        }
    }
}

/// [`interleave16`] for Q8_K rows.
pub(crate) fn interleave16k(rows: &[Q8KBlock], nb: usize, out: &mut [Q8Kx16]) {
    let live = rows.len() / nb;
    debug_assert!(live <= GROUP && out.len() == nb);
    for (b, o) in out.iter_mut().enumerate() {
        *o = Q8Kx16::default();
        for r in 0..live {
            let q = &rows[r * nb + b];
            for t in 0..64 {
                o.qs[t][r] = dword(&q.qs, t);
            }
            o.d[r] = q.d;
            for j in 0..8 {
                o.bs32[j][r] = (q.bsums[2 * j] as i32 + q.bsums[2 * j + 1] as i32) as f32;
            }
            for j in 0..16 {
                o.init16[j][r] = -32 * q.bsums[j] as i32;
            }
        }
    }
}

/// An activation block for the k-quants: 256 values, `x ≈ d * qs`, `bsums` the sums of
/// each 16 consecutive `qs`.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub(crate) struct Q8KBlock {
    pub d: f32,
    pub qs: [i8; 256],
    pub bsums: [i16; 16],
}

impl Default for Q8KBlock {
    fn default() -> Self {
        Q8KBlock {
            d: 0.0,
            qs: [0; 256],
            bsums: [0; 16],
        }
    }
}

/// Round to nearest, ties to even, for `|v| < 2^22`, without a libm call (baseline
/// x86-64 has no rounding instruction; `f32::round` costs a function call per value).
/// Ties-to-even is also what llama.cpp's SIMD quantizers do.
#[inline(always)]
fn round_even(v: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0; // 1.5 * 2^23
    (v + MAGIC) - MAGIC
}

/// Quantize `x` (a multiple of 32 long) to Q8_0/Q8_1-style blocks as llama.cpp's
/// `quantize_row_q8_0`/`quantize_row_q8_1` do: `d = max|x| / 127` rounded to f16,
/// `q = round(x * 127 / max|x|)` (ties to even, as its AVX2 version).
///
/// `s` depends on what the weights need. With `f16_sum` (the Q4_1/Q5_1 weights, whose
/// activation type is llama.cpp's Q8_1) it is `d * sum(q)` rounded to f16, exactly as
/// llama.cpp stores it; the offset term `m * s` then carries the same rounding as
/// llama.cpp's, which keeps greedy decoding on its path (a 0.1% difference per matmul
/// compounds over 30 layers into logit differences of 0.5). Without it (Q4_0/Q5_0,
/// whose `-8 d`/`-16 d` offset the SIMD kernels fold into `s`), `s = d16 * sum(q)`,
/// exact in f32, so those dot products equal llama.cpp's signed integer ones.
pub(crate) fn quantize_q8(x: &[f32], out: &mut [Q8Block], f16_sum: bool) {
    debug_assert_eq!(x.len(), out.len() * 32);
    for (xb, y) in x.chunks_exact(32).zip(out.iter_mut()) {
        let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        let mut sum = 0i32;
        for (q, &v) in y.qs.iter_mut().zip(xb) {
            let r = round_even(v * id) as i32;
            *q = r as i8;
            sum += r;
        }
        let d16 = f16::from_f32(d).to_f32();
        y.d = d16;
        y.s = if f16_sum {
            f16::from_f32(d * sum as f32).to_f32()
        } else {
            d16 * sum as f32
        };
    }
}

/// Quantize `x` (a multiple of 256 long) to Q8_K blocks as llama.cpp's
/// `quantize_row_q8_K_ref` does.
pub(crate) fn quantize_q8k(x: &[f32], out: &mut [Q8KBlock]) {
    debug_assert_eq!(x.len(), out.len() * 256);
    for (xb, y) in x.chunks_exact(256).zip(out.iter_mut()) {
        let mut amax = 0f32;
        let mut max = 0f32;
        for &v in xb {
            if amax < v.abs() {
                amax = v.abs();
                max = v;
            }
        }
        if amax == 0.0 {
            *y = Q8KBlock::default();
            continue;
        }
        let iscale = -127.0 / max;
        for (q, &v) in y.qs.iter_mut().zip(xb) {
            *q = round_even(iscale * v).clamp(-128.0, 127.0) as i8;
        }
        for (j, s) in y.bsums.iter_mut().enumerate() {
            *s = y.qs[j * 16..(j + 1) * 16].iter().map(|&q| q as i16).sum();
        }
        y.d = 1.0 / iscale;
    }
}

/// Decode one 32-element block of a 32-block format into integer values and the affine
/// map `x = d * v + m` (llama.cpp semantics: Q4_0/Q5_0/Q8_0 are centred, `m = 0`).
#[inline(always)]
pub(crate) fn unpack32(dtype: GgmlDType, b: &[u8]) -> ([i8; 32], f32, f32) {
    let mut v = [0i8; 32];
    match dtype {
        GgmlDType::Q4_0 => {
            for j in 0..16 {
                v[j] = (b[2 + j] & 0x0F) as i8 - 8;
                v[j + 16] = (b[2 + j] >> 4) as i8 - 8;
            }
            (v, f16_at(b, 0), 0.0)
        }
        GgmlDType::Q4_1 => {
            for j in 0..16 {
                v[j] = (b[4 + j] & 0x0F) as i8;
                v[j + 16] = (b[4 + j] >> 4) as i8;
            }
            (v, f16_at(b, 0), f16_at(b, 2))
        }
        GgmlDType::Q5_0 | GgmlDType::Q5_1 => {
            let (qh_at, qs_at, centre) = if dtype == GgmlDType::Q5_0 {
                (2, 6, 16)
            } else {
                (4, 8, 0)
            };
            let qh = u32::from_le_bytes([b[qh_at], b[qh_at + 1], b[qh_at + 2], b[qh_at + 3]]);
            for j in 0..16 {
                let h0 = ((qh >> j) & 1) as u8;
                let h1 = ((qh >> (j + 16)) & 1) as u8;
                v[j] = ((b[qs_at + j] & 0x0F) | (h0 << 4)) as i8 - centre;
                v[j + 16] = ((b[qs_at + j] >> 4) | (h1 << 4)) as i8 - centre;
            }
            let m = if dtype == GgmlDType::Q5_1 {
                f16_at(b, 2)
            } else {
                0.0
            };
            (v, f16_at(b, 0), m)
        }
        GgmlDType::Q8_0 => {
            for j in 0..32 {
                v[j] = b[2 + j] as i8;
            }
            (v, f16_at(b, 0), 0.0)
        }
        _ => unreachable!("unpack32 is only called for 32-element block formats"),
    }
}

/// The 6-bit scale and min of sub-block `j` of a Q4_K/Q5_K block's 12 scale bytes.
#[inline(always)]
pub(crate) fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// Decode one row (`bytes` holding whole blocks) to f32. The reference everything is
/// tested against.
pub(crate) fn dequantize_row(dtype: GgmlDType, bytes: &[u8], out: &mut [f32]) {
    let bs = dtype.block_size();
    let ts = dtype.type_size();
    debug_assert_eq!(bytes.len() / ts * bs, out.len());
    match dtype {
        GgmlDType::F32 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        GgmlDType::F16 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = f16::from_le_bytes([c[0], c[1]]).to_f32();
            }
        }
        GgmlDType::Q4_0 | GgmlDType::Q4_1 | GgmlDType::Q5_0 | GgmlDType::Q5_1 | GgmlDType::Q8_0 => {
            for (o, b) in out.chunks_exact_mut(32).zip(bytes.chunks_exact(ts)) {
                let (v, d, m) = unpack32(dtype, b);
                for (oo, &q) in o.iter_mut().zip(&v) {
                    *oo = d * q as f32 + m;
                }
            }
        }
        GgmlDType::Q4K | GgmlDType::Q5K => {
            for (o, b) in out.chunks_exact_mut(256).zip(bytes.chunks_exact(ts)) {
                let d = f16_at(b, 0);
                let dmin = f16_at(b, 2);
                let sc = &b[4..16];
                let (qh, qs) = if dtype == GgmlDType::Q5K {
                    (&b[16..48], &b[48..176])
                } else {
                    (&b[0..0], &b[16..144])
                };
                for j in 0..4 {
                    let (s1, m1) = scale_min_k4(2 * j, sc);
                    let (s2, m2) = scale_min_k4(2 * j + 1, sc);
                    for l in 0..32 {
                        let q = qs[32 * j + l];
                        let (h1, h2) = if qh.is_empty() {
                            (0, 0)
                        } else {
                            (
                                ((qh[l] >> (2 * j)) & 1) << 4,
                                ((qh[l] >> (2 * j + 1)) & 1) << 4,
                            )
                        };
                        o[64 * j + l] = d * s1 as f32 * ((q & 0x0F) | h1) as f32 - dmin * m1 as f32;
                        o[64 * j + 32 + l] =
                            d * s2 as f32 * ((q >> 4) | h2) as f32 - dmin * m2 as f32;
                    }
                }
            }
        }
        GgmlDType::Q6K => {
            for (o, b) in out.chunks_exact_mut(256).zip(bytes.chunks_exact(ts)) {
                let d = f16_at(b, 208);
                for n in 0..2 {
                    let ql = &b[64 * n..64 * n + 64];
                    let qh = &b[128 + 32 * n..128 + 32 * n + 32];
                    let sc = &b[192 + 8 * n..192 + 8 * n + 8];
                    let o = &mut o[128 * n..128 * n + 128];
                    for l in 0..32 {
                        let is = l / 16;
                        let q1 = ((ql[l] & 0x0F) | ((qh[l] & 3) << 4)) as i32 - 32;
                        let q2 = ((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                        let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                        let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                        o[l] = d * (sc[is] as i8) as f32 * q1 as f32;
                        o[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
                        o[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
                        o[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
                    }
                }
            }
        }
    }
}

/// Scalar dot product of one row of a 32-block format with quantized activations.
pub(crate) fn dot32_scalar(dtype: GgmlDType, row: &[u8], x: &[Q8Block]) -> f32 {
    let ts = dtype.type_size();
    let mut acc = 0f32;
    for (b, y) in row.chunks_exact(ts).zip(x) {
        let (v, d, m) = unpack32(dtype, b);
        let isum: i32 = v
            .iter()
            .zip(&y.qs)
            .map(|(&a, &b)| a as i32 * b as i32)
            .sum();
        acc += d * y.d * isum as f32 + m * y.s;
    }
    acc
}

/// Scalar dot product of one row of a k-quant format with Q8_K activations.
pub(crate) fn dotk_scalar(dtype: GgmlDType, row: &[u8], x: &[Q8KBlock]) -> f32 {
    let ts = dtype.type_size();
    let mut acc = 0f32;
    for (b, y) in row.chunks_exact(ts).zip(x) {
        match dtype {
            GgmlDType::Q4K | GgmlDType::Q5K => {
                let d = f16_at(b, 0) * y.d;
                let dmin = f16_at(b, 2) * y.d;
                let sc = &b[4..16];
                let q5 = dtype == GgmlDType::Q5K;
                let qs = if q5 { &b[48..176] } else { &b[16..144] };
                let mut sumi = 0i32;
                let mut summ = 0i32;
                for j in 0..4 {
                    let (s1, m1) = scale_min_k4(2 * j, sc);
                    let (s2, m2) = scale_min_k4(2 * j + 1, sc);
                    let (mut lo, mut hi) = (0i32, 0i32);
                    for l in 0..32 {
                        let q = qs[32 * j + l];
                        let (h1, h2) = if q5 {
                            let h = b[16 + l];
                            (((h >> (2 * j)) & 1) << 4, ((h >> (2 * j + 1)) & 1) << 4)
                        } else {
                            (0, 0)
                        };
                        lo += ((q & 0x0F) | h1) as i32 * y.qs[64 * j + l] as i32;
                        hi += ((q >> 4) | h2) as i32 * y.qs[64 * j + 32 + l] as i32;
                    }
                    sumi += s1 as i32 * lo + s2 as i32 * hi;
                    summ += m1 as i32 * (y.bsums[4 * j] as i32 + y.bsums[4 * j + 1] as i32);
                    summ += m2 as i32 * (y.bsums[4 * j + 2] as i32 + y.bsums[4 * j + 3] as i32);
                }
                acc += d * sumi as f32 - dmin * summ as f32;
            }
            GgmlDType::Q6K => {
                let d = f16_at(b, 208) * y.d;
                let mut sumi = 0i32;
                for n in 0..2 {
                    let ql = &b[64 * n..64 * n + 64];
                    let qh = &b[128 + 32 * n..128 + 32 * n + 32];
                    let sc = &b[192 + 8 * n..192 + 8 * n + 8];
                    let ys = &y.qs[128 * n..128 * n + 128];
                    let mut part = [0i32; 8];
                    for l in 0..32 {
                        let is = l / 16;
                        let q1 = ((ql[l] & 0x0F) | ((qh[l] & 3) << 4)) as i32 - 32;
                        let q2 = ((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                        let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                        let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                        part[is] += q1 * ys[l] as i32;
                        part[is + 2] += q2 * ys[l + 32] as i32;
                        part[is + 4] += q3 * ys[l + 64] as i32;
                        part[is + 6] += q4 * ys[l + 96] as i32;
                    }
                    for (p, &s) in part.iter().zip(sc) {
                        sumi += p * (s as i8) as i32;
                    }
                }
                acc += d * sumi as f32;
            }
            _ => unreachable!("dotk_scalar is only called for k-quant formats"),
        }
    }
    acc
}
