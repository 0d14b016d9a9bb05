//! AVX-512 VNNI kernels for many-row (prefill) matmuls.
//!
//! Why not the AVX2 kernels: they take one weight row and one activation row per
//! 32-element block pair, and for every such pair pay `maddubs` + `madd` for the integer
//! products plus an int-to-float conversion and a scale `fma` over a full register whose
//! eight lanes all belong to *one* output; that per-product epilogue, not the weight
//! decoding, bounds them (see `docs/BENCHMARKS.md`). Here sixteen activation rows are
//! transposed so that lane `r` of a 512-bit register holds four bytes of row `r`
//! ([`Q8x16`], built once per matmul when the activations are quantized), and one weight
//! dword is broadcast against it: a single `vpdpbusd` (u8 x s8 -> i32, accumulating)
//! adds four products to sixteen different outputs, and the conversion and scale `fma`
//! of a block are shared by those sixteen outputs.
//!
//! The weights stay in their GGML layout (no repacked copy: memory stays at the file
//! size). Each chunk of weight rows a thread takes is decoded once into unsigned bytes
//! plus per-block f32 scales (a thread-local buffer of about the L1 size), which every
//! group of sixteen activation rows then reuses; with the prefill's 64-row calls that is
//! four groups per decode. Offsets are folded exactly in integers where the format
//! allows: weights are stored as `v + c` (Q4_0 `c = 8`, Q5_0 16, Q8_0 128, Q6_K 32) and
//! the dot product starts at `-c * sum(activations)`.
//!
//! All functions here are `unsafe`: callers must have checked AVX-512 F/BW/VL/VNNI plus
//! AVX2, FMA and F16C support (`Level::Avx512Vnni`).

#![allow(unsafe_op_in_unsafe_fn)]

use crate::GgmlDType;
use crate::avx2::{F_Q4_0, F_Q4_1, F_Q5_0, F_Q5_1, F_Q8_0};
use crate::quant::{GROUP, Q8Kx16, Q8x16, f16_at, scale_min_k4};
use std::arch::x86_64::*;
use std::cell::RefCell;

/// Weight rows per register tile: 4 rows x 16 activation rows keep 4 float and 4
/// integer accumulators plus the 8 activation registers of a block in the 32 zmm
/// registers, and each activation register is loaded once for four weight rows.
const W: usize = 4;

/// One piece of a prefill matmul: `rows` consecutive weight rows (`w`, whole rows of
/// `k` elements in the GGML layout) against all `m` activation rows (`acts`, groups of
/// [`GROUP`] rows, `k / block` entries per group), written to
/// `y[r * ldy + col0 + i]`.
pub(crate) struct Tile<'a, A> {
    pub w: &'a [u8],
    pub rows: usize,
    pub k: usize,
    pub acts: &'a [A],
    pub m: usize,
    pub y: *mut f32,
    pub ldy: usize,
    pub col0: usize,
}

/// Weight rows decoded to one unsigned byte per element, with per-(sub-)block scales
/// `sc` and, for the affine formats, offsets `mn`.
#[derive(Default)]
struct Decoded {
    q: Vec<u8>,
    sc: Vec<f32>,
    mn: Vec<f32>,
    /// The f16 scales (`d`, then `m`) of a chunk before their conversion.
    h16: Vec<u16>,
}

impl Decoded {
    fn reserve(&mut self, elems: usize, scales: usize) {
        // Grown once per thread to the largest chunk; never shrunk.
        if self.q.len() < elems {
            self.q.resize(elems, 0);
        }
        if self.sc.len() < scales {
            self.sc.resize(scales, 0.0);
            self.mn.resize(scales, 0.0);
            self.h16.resize(2 * scales, 0);
        }
    }
}

thread_local! {
    static BUF: RefCell<Decoded> = RefCell::default();
}

/// `n` f16 values at `src` to f32 at `dst`, sixteen at a time.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn f16s_to_f32(src: *const u16, dst: *mut f32, n: usize) {
    let mut i = 0;
    while i + 16 <= n {
        let h = _mm256_loadu_si256(src.add(i).cast());
        _mm512_storeu_ps(dst.add(i), _mm512_cvtph_ps(h));
        i += 16;
    }
    while i < n {
        *dst.add(i) = half::f16::from_bits(*src.add(i)).to_f32();
        i += 1;
    }
}

/// Decode `blocks` blocks of a 32-element format (format `F` as in `avx2`, `TS` bytes
/// each): per block 32 unsigned bytes, the scale `d` and, for Q4_1/Q5_1, the offset
/// `m`. The fifth bits of Q5_0/Q5_1 go in with one masked add (the 32-bit field is the
/// mask), and the f16 scales are converted sixteen at a time after the loop; per block
/// that is about half the work of the AVX2 decoding, which was a fifth of a prefill's
/// matmul time.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn decode32<const F: u8, const TS: usize>(w: &[u8], blocks: usize, dec: &mut Decoded) {
    assert!(w.len() >= blocks * TS);
    dec.reserve(blocks * 32, blocks);
    let affine = F == F_Q4_1 || F == F_Q5_1;
    let (qh_at, qs_at) = match F {
        F_Q4_0 => (0, 2),
        F_Q4_1 => (0, 4),
        F_Q5_0 => (2, 6),
        F_Q5_1 => (4, 8),
        _ => (0, 2),
    };
    let m4 = _mm_set1_epi8(0x0F);
    let v16 = _mm256_set1_epi8(0x10);
    let flip = _mm256_set1_epi8(-128);
    let (q, h) = (dec.q.as_mut_ptr(), dec.h16.as_mut_ptr());
    for i in 0..blocks {
        let p = w.as_ptr().add(i * TS);
        let v = if F == F_Q8_0 {
            // Q8_0 is signed: stored as v + 128 (its offset is in `Q8x16::init`).
            _mm256_xor_si256(_mm256_loadu_si256(p.add(2).cast()), flip)
        } else {
            let b = _mm_loadu_si128(p.add(qs_at).cast());
            let lo = _mm_and_si128(b, m4);
            let hi = _mm_and_si128(_mm_srli_epi16::<4>(b), m4);
            let v = _mm256_inserti128_si256::<1>(_mm256_castsi128_si256(lo), hi);
            if F == F_Q5_0 || F == F_Q5_1 {
                let bits = std::ptr::read_unaligned(p.add(qh_at).cast::<u32>());
                _mm256_mask_add_epi8(v, bits, v, v16)
            } else {
                v
            }
        };
        _mm256_storeu_si256(q.add(32 * i).cast(), v);
        *h.add(i) = std::ptr::read_unaligned(p.cast::<u16>());
        if affine {
            *h.add(blocks + i) = std::ptr::read_unaligned(p.add(2).cast::<u16>());
        }
    }
    f16s_to_f32(h, dec.sc.as_mut_ptr(), blocks);
    if affine {
        f16s_to_f32(h.add(blocks), dec.mn.as_mut_ptr(), blocks);
    }
}

/// Decode Q4_K (or Q5_K) blocks: 8 sub-blocks of 32 with scale `d * s_j` and offset
/// `-dmin * m_j`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn decode_q4k<const Q5: bool>(w: &[u8], blocks: usize, dec: &mut Decoded) {
    let ts = if Q5 { 176 } else { 144 };
    assert!(w.len() >= blocks * ts);
    dec.reserve(blocks * 256, blocks * 8);
    let m4 = _mm256_set1_epi8(0x0F);
    let v16 = _mm256_set1_epi8(0x10);
    let (q, sc, mn) = (dec.q.as_mut_ptr(), dec.sc.as_mut_ptr(), dec.mn.as_mut_ptr());
    for i in 0..blocks {
        let blk = &w[i * ts..(i + 1) * ts];
        let d = f16_at(blk, 0);
        let dmin = f16_at(blk, 2);
        for j in 0..8 {
            let (s, m) = scale_min_k4(j, &blk[4..16]);
            *sc.add(8 * i + j) = d * s as f32;
            *mn.add(8 * i + j) = -dmin * m as f32;
        }
        let qs = if Q5 {
            blk[48..].as_ptr()
        } else {
            blk[16..].as_ptr()
        };
        let hb = if Q5 {
            _mm256_loadu_si256(blk[16..].as_ptr().cast())
        } else {
            _mm256_setzero_si256()
        };
        let out = q.add(256 * i);
        for j in 0..4 {
            let v = _mm256_loadu_si256(qs.add(32 * j).cast());
            let mut lo = _mm256_and_si256(v, m4);
            let mut hi = _mm256_and_si256(_mm256_srli_epi16::<4>(v), m4);
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
            _mm256_storeu_si256(out.add(64 * j).cast(), lo);
            _mm256_storeu_si256(out.add(64 * j + 32).cast(), hi);
        }
    }
}

/// Decode Q6_K blocks: 16 sub-blocks of 16 with scale `d * sc_j`, values stored as
/// `v + 32` (unsigned 6-bit).
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn decode_q6k(w: &[u8], blocks: usize, dec: &mut Decoded) {
    const TS: usize = 210;
    assert!(w.len() >= blocks * TS);
    dec.reserve(blocks * 256, blocks * 16);
    let m4 = _mm256_set1_epi8(0x0F);
    let m2 = _mm256_set1_epi8(0x03);
    let (q, sc) = (dec.q.as_mut_ptr(), dec.sc.as_mut_ptr());
    for i in 0..blocks {
        let blk = &w[i * TS..(i + 1) * TS];
        let d = f16_at(blk, 208);
        for j in 0..16 {
            *sc.add(16 * i + j) = d * blk[192 + j] as i8 as f32;
        }
        let out = q.add(256 * i);
        for n in 0..2 {
            let ql0 = _mm256_loadu_si256(blk[64 * n..].as_ptr().cast());
            let ql1 = _mm256_loadu_si256(blk[64 * n + 32..].as_ptr().cast());
            let qh = _mm256_loadu_si256(blk[128 + 32 * n..].as_ptr().cast());
            let v = [
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
            for (kk, vk) in v.iter().enumerate() {
                _mm256_storeu_si256(out.add(128 * n + 32 * kk).cast(), *vk);
            }
        }
    }
}

/// The weight dword at `p` broadcast to all sixteen lanes.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn bcast(p: *const u8) -> __m512i {
    _mm512_set1_epi32(std::ptr::read_unaligned(p.cast::<i32>()))
}

/// `nd` (even) dwords of weights at `wp` against activation registers `av[..nd]`,
/// starting from `init`; two accumulator chains hide the `vpdpbusd` latency.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn dots(wp: *const u8, av: &[__m512i; 8], nd: usize, init: __m512i) -> __m512i {
    let mut s0 = init;
    let mut s1 = _mm512_setzero_si512();
    let mut t = 0;
    while t < nd {
        s0 = _mm512_dpbusd_epi32(s0, bcast(wp.add(4 * t)), av[t]);
        s1 = _mm512_dpbusd_epi32(s1, bcast(wp.add(4 * t + 4)), av[t + 1]);
        t += 2;
    }
    _mm512_add_epi32(s0, s1)
}

/// `N` decoded weight rows (`q` with row stride `k`, scales `sc` with row stride
/// `k / 32`) against one group of sixteen activation rows of a centred 32-element
/// format (Q4_0, Q5_0, Q8_0); `out[w][r]` is the dot product of weight row `w` and
/// activation row `r`. Each block's integer dot product is exact, scaled once.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn kernel32<const N: usize>(
    q: *const u8,
    sc: *const f32,
    k: usize,
    acts: *const Q8x16,
    out: &mut [[f32; GROUP]; W],
) {
    let nb = k / 32;
    let mut acc = [_mm512_setzero_ps(); N];
    let mut av = [_mm512_setzero_si512(); 8];
    for b in 0..nb {
        let a = &*acts.add(b);
        for (t, v) in av.iter_mut().enumerate() {
            *v = _mm512_load_si512(a.qs[t].as_ptr().cast());
        }
        let dy = _mm512_load_ps(a.d.as_ptr());
        let init = _mm512_load_si512(a.init.as_ptr().cast());
        for (w, acc) in acc.iter_mut().enumerate() {
            let s = dots(q.add(w * k + 32 * b), &av, 8, init);
            let scale = _mm512_mul_ps(dy, _mm512_set1_ps(*sc.add(w * nb + b)));
            *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), scale, *acc);
        }
    }
    for (o, a) in out.iter_mut().zip(&acc) {
        _mm512_storeu_ps(o.as_mut_ptr(), *a);
    }
}

/// [`kernel32`] for the affine formats (Q4_1, Q5_1: `x = d * v + m`, offsets `mn`),
/// rounded as llama.cpp's AVX2 `vec_dot_q4_1_q8_1` rounds: each dword's four-product
/// sum is scaled and accumulated in its own float lane (here: its own register per
/// dword), the eight lanes summed in ggml's `hsum_float_8` order, and the offset term
/// accumulated separately (`summs += m * s`, product then sum) and added last.
///
/// Why not the cheaper exact-per-block sum of [`kernel32`]: SmolLM2 (all Q4_1) runs its
/// greedy path through near-ties, and with that rounding its agreement with llama.cpp
/// on the reference-stable prompts (`crates/lm/tests/reference.rs`) fell from 4 to 3 of
/// 5. The extra conversions and `fma`s cost about half the kernel's speed.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn kernel_affine<const N: usize>(
    q: *const u8,
    sc: *const f32,
    mn: *const f32,
    k: usize,
    acts: *const Q8x16,
    out: &mut [[f32; GROUP]; W],
) {
    let nb = k / 32;
    let mut lanes = [[_mm512_setzero_ps(); 8]; N];
    let mut off = [_mm512_setzero_ps(); N];
    let mut av = [_mm512_setzero_si512(); 8];
    let zero = _mm512_setzero_si512();
    for b in 0..nb {
        let a = &*acts.add(b);
        for (t, v) in av.iter_mut().enumerate() {
            *v = _mm512_load_si512(a.qs[t].as_ptr().cast());
        }
        let dy = _mm512_load_ps(a.d.as_ptr());
        let sy = _mm512_load_ps(a.s.as_ptr());
        for w in 0..N {
            let wp = q.add(w * k + 32 * b);
            let scale = _mm512_mul_ps(dy, _mm512_set1_ps(*sc.add(w * nb + b)));
            for (t, l) in lanes[w].iter_mut().enumerate() {
                let s = _mm512_dpbusd_epi32(zero, bcast(wp.add(4 * t)), av[t]);
                *l = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), scale, *l);
            }
            let ms = _mm512_mul_ps(sy, _mm512_set1_ps(*mn.add(w * nb + b)));
            off[w] = _mm512_add_ps(off[w], ms);
        }
    }
    for w in 0..N {
        let l = &lanes[w];
        let h0 = _mm512_add_ps(_mm512_add_ps(l[4], l[0]), _mm512_add_ps(l[6], l[2]));
        let h1 = _mm512_add_ps(_mm512_add_ps(l[5], l[1]), _mm512_add_ps(l[7], l[3]));
        let v = _mm512_add_ps(_mm512_add_ps(h0, h1), off[w]);
        _mm512_storeu_ps(out[w].as_mut_ptr(), v);
    }
}

/// [`kernel32`] for the k-quants: sub-blocks of `SUB` (32: Q4_K/Q5_K with mins, 16:
/// Q6_K with its `-32` in [`Q8Kx16::init16`]) scaled by `sc` (row stride `k / SUB`),
/// the activations' one scale per 256 applied once per block.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn kernelk<const N: usize, const SUB: usize>(
    q: *const u8,
    sc: *const f32,
    mn: *const f32,
    k: usize,
    acts: *const Q8Kx16,
    out: &mut [[f32; GROUP]; W],
) {
    let nb = k / 256;
    let nsub = 256 / SUB;
    let nd = SUB / 4;
    let ksub = k / SUB;
    let mut acc = [_mm512_setzero_ps(); N];
    let mut av = [_mm512_setzero_si512(); 8];
    for b in 0..nb {
        let a = &*acts.add(b);
        let mut blk = [_mm512_setzero_ps(); N];
        for j in 0..nsub {
            for (t, v) in av.iter_mut().enumerate().take(nd) {
                *v = _mm512_load_si512(a.qs[j * nd + t].as_ptr().cast());
            }
            let init = if SUB == 16 {
                _mm512_load_si512(a.init16[j].as_ptr().cast())
            } else {
                _mm512_setzero_si512()
            };
            for (w, blk) in blk.iter_mut().enumerate() {
                let s = dots(q.add(w * k + 256 * b + SUB * j), &av, nd, init);
                let scale = _mm512_set1_ps(*sc.add(w * ksub + b * nsub + j));
                *blk = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), scale, *blk);
                if SUB == 32 {
                    let bs = _mm512_load_ps(a.bs32[j].as_ptr());
                    *blk = _mm512_fmadd_ps(bs, _mm512_set1_ps(*mn.add(w * ksub + 8 * b + j)), *blk);
                }
            }
        }
        let dy = _mm512_load_ps(a.d.as_ptr());
        for (acc, blk) in acc.iter_mut().zip(&blk) {
            *acc = _mm512_fmadd_ps(*blk, dy, *acc);
        }
    }
    for (o, a) in out.iter_mut().zip(&acc) {
        _mm512_storeu_ps(o.as_mut_ptr(), *a);
    }
}

/// Write `out[w][r]` to `y` for the `n` weight rows from `i` and the live rows of
/// group `g`.
#[inline]
unsafe fn store<A>(t: &Tile<'_, A>, g: usize, i: usize, n: usize, out: &[[f32; GROUP]; W]) {
    let live = (t.m - g * GROUP).min(GROUP);
    for (w, o) in out.iter().enumerate().take(n) {
        for (r, &v) in o.iter().enumerate().take(live) {
            *t.y.add((g * GROUP + r) * t.ldy + t.col0 + i + w) = v;
        }
    }
}

/// Every group of activation rows against the decoded rows; `per_row` is the number of
/// scales per weight row.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn run<A, const KIND: u8>(t: &Tile<'_, A>, dec: &Decoded, block: usize, per_row: usize) {
    let nb = t.k / block;
    let mut out = [[0f32; GROUP]; W];
    for g in 0..t.m.div_ceil(GROUP) {
        let acts = t.acts.as_ptr().add(g * nb);
        let mut i = 0;
        // The affine kernel's eight accumulators per row fit two rows in the registers.
        let wmax = if KIND == K_AFFINE { 2 } else { W };
        while i < t.rows {
            let n = (t.rows - i).min(wmax);
            let q = dec.q.as_ptr().add(i * t.k);
            let sc = dec.sc.as_ptr().add(i * per_row);
            let mn = dec.mn.as_ptr().add(i * per_row);
            macro_rules! go {
                ($n:literal) => {
                    match KIND {
                        K_CENTRED => kernel32::<$n>(q, sc, t.k, acts.cast(), &mut out),
                        K_AFFINE => kernel_affine::<$n>(q, sc, mn, t.k, acts.cast(), &mut out),
                        K_SUB32 => kernelk::<$n, 32>(q, sc, mn, t.k, acts.cast(), &mut out),
                        K_SUB16 => kernelk::<$n, 16>(q, sc, mn, t.k, acts.cast(), &mut out),
                        _ => unreachable!("no such kernel kind"),
                    }
                };
            }
            match n {
                4 => go!(4),
                3 => go!(3),
                2 => go!(2),
                _ => go!(1),
            }
            store(t, g, i, n, &out);
            i += n;
        }
    }
}

const K_CENTRED: u8 = 0;
const K_AFFINE: u8 = 1;
const K_SUB32: u8 = 2;
const K_SUB16: u8 = 3;

/// Run a [`Tile`] of a 32-element block format.
///
/// # Safety
/// The CPU must support `Level::Avx512Vnni`; `w` holds `rows * k / 32` blocks of
/// `dtype`; `acts` holds `ceil(m / 16) * k / 32` groups made by
/// `quant::interleave16` with this format's centre; `y` is valid for writes at every
/// `r * ldy + col0 + i` with `r < m`, `i < rows`, and no other thread writes there.
pub(crate) unsafe fn tile32(dtype: GgmlDType, t: &Tile<'_, Q8x16>) {
    let nb = t.k / 32;
    assert!(t.acts.len() >= t.m.div_ceil(GROUP) * nb);
    let blocks = t.rows * nb;
    BUF.with(|b| {
        let dec = &mut *b.borrow_mut();
        match dtype {
            GgmlDType::Q4_0 => decode32::<F_Q4_0, 18>(t.w, blocks, dec),
            GgmlDType::Q4_1 => decode32::<F_Q4_1, 20>(t.w, blocks, dec),
            GgmlDType::Q5_0 => decode32::<F_Q5_0, 22>(t.w, blocks, dec),
            GgmlDType::Q5_1 => decode32::<F_Q5_1, 24>(t.w, blocks, dec),
            GgmlDType::Q8_0 => decode32::<F_Q8_0, 34>(t.w, blocks, dec),
            _ => unreachable!("tile32 is only called for 32-element block formats"),
        }
        if matches!(dtype, GgmlDType::Q4_1 | GgmlDType::Q5_1) {
            run::<_, K_AFFINE>(t, dec, 32, nb);
        } else {
            run::<_, K_CENTRED>(t, dec, 32, nb);
        }
    });
}

/// The centre `c` a 32-element format's weights are decoded with (see [`Q8x16::init`]).
pub(crate) fn centre(dtype: GgmlDType) -> i32 {
    match dtype {
        GgmlDType::Q4_0 => 8,
        GgmlDType::Q5_0 => 16,
        GgmlDType::Q8_0 => 128,
        _ => 0,
    }
}

/// Run a [`Tile`] of a k-quant format.
///
/// # Safety
/// As [`tile32`], with `acts` made by `quant::interleave16k` (`k / 256` per group).
pub(crate) unsafe fn tilek(dtype: GgmlDType, t: &Tile<'_, Q8Kx16>) {
    let nb = t.k / 256;
    assert!(t.acts.len() >= t.m.div_ceil(GROUP) * nb);
    let blocks = t.rows * nb;
    BUF.with(|b| {
        let dec = &mut *b.borrow_mut();
        match dtype {
            GgmlDType::Q4K => {
                decode_q4k::<false>(t.w, blocks, dec);
                run::<_, K_SUB32>(t, dec, 256, 8 * nb);
            }
            GgmlDType::Q5K => {
                decode_q4k::<true>(t.w, blocks, dec);
                run::<_, K_SUB32>(t, dec, 256, 8 * nb);
            }
            GgmlDType::Q6K => {
                decode_q6k(t.w, blocks, dec);
                run::<_, K_SUB16>(t, dec, 256, 16 * nb);
            }
            _ => unreachable!("tilek is only called for k-quant formats"),
        }
    });
}
