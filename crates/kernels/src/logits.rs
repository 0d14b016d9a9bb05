//! Reductions over a row of logits: log-sum-exp and the KL divergence of two softmaxes,
//! in vector code, with f64 sums.
//!
//! Why: the lab scores every candidate direction, and measures cross-entropy over every
//! generated token, through these reductions over the whole vocabulary (151,936 entries
//! for Qwen2.5). Written as iterator chains over f64 they ran at one libm `exp` per
//! element, ~3 ms per row: about 40 s of each cross-entropy pass over 64 completions, and
//! ~0.4 s per candidate direction. Here `exp` is a polynomial in f32 (relative error
//! < 2e-7) that LLVM vectorises, compiled for AVX-512 or AVX2+FMA where the CPU has
//! them; partial sums of 256 terms are kept in f32 lanes, then added in f64, so a sum
//! over the vocabulary is accurate to ~1e-6 relative.

/// `e^x` for `x` in about [-87, 88] (clamped outside, so `-inf` gives ~1e-38, not 0),
/// relative error < 2e-7. Range reduction `x = n·ln2 + r`, |r| ≤ ln2/2, then a degree-6
/// Taylor polynomial. Inlined into callers so that it vectorises in their loops.
#[inline(always)]
pub fn exp_approx(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // Adding and subtracting 1.5·2^23 rounds to the nearest integer without a libcall.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let t = x * LOG2E + ROUND;
    let n = t - ROUND;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    // `t`'s last mantissa bits hold `n` (its ulp is 1): the integer without a float→int
    // conversion, which Rust saturates and LLVM then leaves scalar.
    let ni = (t.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    let scale = f32::from_bits((ni.wrapping_add(127) as u32) << 23);
    p * scale
}

/// Lanes of the vector loops (one AVX-512 register of f32).
const LANES: usize = 16;
/// Terms summed in f32 lanes before they are added in f64.
const BLOCK: usize = 256;

/// Defines `pub fn $name(args)` that runs `$body` compiled for AVX-512 or AVX2+FMA
/// when the CPU has them, and for the baseline target otherwise.
macro_rules! multiversion {
    ($(#[$doc:meta])* fn $name:ident($($arg:ident: $ty:ty),*) -> $ret:ty => $body:ident) => {
        $(#[$doc])*
        pub fn $name($($arg: $ty),*) -> $ret {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512bw,avx2,fma")]
                unsafe fn avx512($($arg: $ty),*) -> $ret {
                    $body($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) -> $ret {
                    $body($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512bw")
                {
                    // SAFETY: the CPU has AVX-512 F and BW (checked just above), and
                    // every such CPU has AVX2 and FMA.
                    return unsafe { avx512($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: the CPU has AVX2 and FMA (checked just above).
                    return unsafe { avx2($($arg),*) };
                }
            }
            $body($($arg),*)
        }
    };
}

multiversion! {
    /// `log Σ exp(x_i)`, computed as `max + log Σ exp(x_i − max)`. `-inf` for an empty
    /// row or one of all `-inf`; NaN if any entry is NaN; `+inf` if any is `+inf`.
    fn log_sum_exp(x: &[f32]) -> f64 => log_sum_exp_body
}

multiversion! {
    /// `KL(softmax(p) ‖ softmax(q))` in nats, for two logit rows of one length (terms
    /// where `p_i` is `-inf` count 0). NaN if the lengths differ or a row has no finite
    /// maximum.
    fn kl_divergence(p: &[f32], q: &[f32]) -> f64 => kl_divergence_body
}

/// The largest of `x` (`-inf` if empty), as a vectorisable reduction: a plain comparison
/// per lane, not `f32::max`, whose NaN rule keeps LLVM from vectorising it (so a NaN
/// entry may be skipped: callers that care look for NaN themselves). Inlined into
/// callers so that it runs at their SIMD level.
#[inline(always)]
pub fn max_lanes(x: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let chunks = x.chunks_exact(LANES);
    let mut max = f32::NEG_INFINITY;
    for &v in chunks.remainder() {
        max = if v > max { v } else { max };
    }
    for c in chunks {
        for i in 0..LANES {
            lanes[i] = if c[i] > lanes[i] { c[i] } else { lanes[i] };
        }
    }
    for v in lanes {
        max = if v > max { v } else { max };
    }
    max
}

/// `Σ f(x_i)` with blocks of [`BLOCK`] terms summed in f32 lanes, the blocks in f64.
#[inline(always)]
fn block_sum(x: &[f32], f: impl Fn(f32) -> f32) -> f64 {
    let mut total = 0.0f64;
    for block in x.chunks(BLOCK) {
        let mut lanes = [0.0f32; LANES];
        let chunks = block.chunks_exact(LANES);
        let mut tail = 0.0f32;
        for &v in chunks.remainder() {
            tail += f(v);
        }
        for c in chunks {
            for i in 0..LANES {
                lanes[i] += f(c[i]);
            }
        }
        total += lanes.iter().map(|&v| f64::from(v)).sum::<f64>() + f64::from(tail);
    }
    total
}

#[inline(always)]
fn log_sum_exp_body(x: &[f32]) -> f64 {
    let max = max_lanes(x);
    if x.iter().any(|v| v.is_nan()) {
        return f64::NAN;
    }
    if !max.is_finite() {
        return f64::from(max);
    }
    f64::from(max) + block_sum(x, |v| exp_approx(v - max)).ln()
}

#[inline(always)]
fn kl_divergence_body(p: &[f32], q: &[f32]) -> f64 {
    if p.len() != q.len() {
        return f64::NAN;
    }
    let (lp, lq) = (log_sum_exp_body(p), log_sum_exp_body(q));
    if !lp.is_finite() || !lq.is_finite() {
        return f64::NAN;
    }
    // Σ softmax(p)_i · ((p_i − lp) − (q_i − lq)), the offsets in f32 once per row.
    let (lp32, shift) = (lp as f32, (lq - lp) as f32);
    let mut total = 0.0f64;
    for (bp, bq) in p.chunks(BLOCK).zip(q.chunks(BLOCK)) {
        let mut lanes = [0.0f32; LANES];
        let term = |a: f32, b: f32| {
            let t = exp_approx(a - lp32) * (a - b + shift);
            if a == f32::NEG_INFINITY { 0.0 } else { t }
        };
        let (cp, cq) = (bp.chunks_exact(LANES), bq.chunks_exact(LANES));
        let mut tail = 0.0f32;
        for (&a, &b) in cp.remainder().iter().zip(cq.remainder()) {
            tail += term(a, b);
        }
        for (a, b) in cp.zip(cq) {
            for i in 0..LANES {
                lanes[i] += term(a[i], b[i]);
            }
        }
        total += lanes.iter().map(|&v| f64::from(v)).sum::<f64>() + f64::from(tail);
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lse_f64(x: &[f32]) -> f64 {
        let m = x
            .iter()
            .fold(f64::NEG_INFINITY, |m, &v| m.max(f64::from(v)));
        m + x
            .iter()
            .map(|&v| (f64::from(v) - m).exp())
            .sum::<f64>()
            .ln()
    }

    #[test]
    fn exp_matches_std() {
        for i in -8700..=8800 {
            let x = i as f32 * 0.01;
            let (got, want) = (exp_approx(x) as f64, (x as f64).exp());
            assert!(
                (got - want).abs() <= 3e-7 * want,
                "exp({x}) = {got}, want {want}"
            );
        }
    }

    #[test]
    fn log_sum_exp_matches_f64() {
        // Vocabulary-sized rows, odd lengths (tails), and a peaked row.
        for (n, scale) in [(151_936, 30.0), (1001, 4.0), (17, 1.0), (1, 1.0)] {
            let x = crate::tests::uniform(n, n as u64, scale);
            let (got, want) = (log_sum_exp(&x), lse_f64(&x));
            assert!(
                (got - want).abs() <= 1e-5 * want.abs().max(1.0),
                "n {n}: {got} vs {want}"
            );
        }
        assert_eq!(log_sum_exp(&[]), f64::NEG_INFINITY);
        assert_eq!(log_sum_exp(&[f32::NEG_INFINITY; 3]), f64::NEG_INFINITY);
        assert!(log_sum_exp(&[0.0, f32::NAN, 1.0]).is_nan());
        assert_eq!(log_sum_exp(&[0.0, f32::INFINITY]), f64::INFINITY);
        // Masked entries contribute nothing.
        let masked = [1.0, f32::NEG_INFINITY, 2.0];
        assert!((log_sum_exp(&masked) - lse_f64(&[1.0, 2.0])).abs() < 1e-6);
    }

    #[test]
    fn kl_matches_f64() {
        let kl_f64 = |p: &[f32], q: &[f32]| {
            let (lp, lq) = (lse_f64(p), lse_f64(q));
            p.iter()
                .zip(q)
                .filter(|(a, _)| a.is_finite())
                .map(|(&a, &b)| {
                    let (a, b) = (f64::from(a) - lp, f64::from(b) - lq);
                    a.exp() * (a - b)
                })
                .sum::<f64>()
        };
        let p = crate::tests::uniform(151_936, 3, 20.0);
        for (seed, amount) in [(4, 0.05f32), (5, 1.0), (6, 10.0)] {
            let noise = crate::tests::uniform(p.len(), seed, amount);
            let q: Vec<f32> = p.iter().zip(&noise).map(|(a, b)| a + b).collect();
            let (got, want) = (kl_divergence(&p, &q), kl_f64(&p, &q));
            // f32 offsets of logits up to ±10: ~1e-6 absolute.
            assert!(
                (got - want).abs() <= 1e-5 + 1e-4 * want,
                "noise {amount}: {got} vs {want}"
            );
        }
        assert!(kl_divergence(&p, &p).abs() < 1e-6);
        let mut masked = p.clone();
        masked[7] = f32::NEG_INFINITY;
        let (got, want) = (kl_divergence(&masked, &p), kl_f64(&masked, &p));
        assert!((got - want).abs() < 1e-6, "{got} vs {want}");
        assert!(kl_divergence(&p, &p[1..]).is_nan());
    }
}
