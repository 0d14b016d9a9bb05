//! Kernels for the BERT encoder: dense layers with bias (AMX bf16 tiles from
//! `overseer-kernels` where the CPU has them, else the `gemm` crate in f32 and `small.rs`
//! for few rows), and the element-wise parts (LayerNorm, exact-erf GELU, softmax) in f32,
//! written so that LLVM vectorises them.
//!
//! Why AMX where present: all-MiniLM-L6-v2's matmuls were ~75% of a batch on AVX-512;
//! on one core's tiles they run at several hundred GMAC/s, and bf16 inputs (f32 sums,
//! f32 everywhere else) keep the sentence-transformers fixture at cosine ≥ 0.9999.
//!
//! Why hand-written element-wise code: with 2 cores the f32 GEMMs of all-MiniLM-L6-v2 take
//! only ~75% of the time (and less than half on AMX), so GELU (1536 erf per token per layer) and softmax matter; a
//! libm `erf`/`exp` per element would cost as much as the matmuls. The functions below use
//! branch-free polynomial approximations (`exp` from `overseer-kernels`) (|error| < 2e-7) and are compiled twice: once for
//! the baseline target and once with AVX2+FMA, picked at run time.

use gemm::Parallelism;
use overseer_kernels::{Bf16Matrix, exp_approx, max_lanes};

use super::small::{self, Panels};
use super::team::Par;

/// A dense layer `y = x W + b` with `W` stored pre-transposed as `[in_dim, out_dim]`
/// row-major, so the GEMM reads the right-hand side along contiguous rows.
#[derive(Debug, Clone)]
pub(crate) struct Linear {
    pub in_dim: usize,
    pub out_dim: usize,
    /// `[in_dim * out_dim]`, row `i` holds the weights from input `i` to every output.
    pub w: Vec<f32>,
    /// `[out_dim]`.
    pub b: Vec<f32>,
    /// The same weights as f16 panels for inputs of at most [`SMALL_ROWS`] rows
    /// (`None` on CPUs without AVX2/FMA/F16C, or when `amx` is there); see `small.rs`.
    small: Option<Panels>,
    /// The same weights packed for AMX bf16 tiles, used for inputs of any size
    /// (`None` where the CPU or OS has no AMX, or AMX is off: `Bf16Matrix::set_enabled`). One route for
    /// every size keeps a text's embedding independent of its batch, bit for bit.
    amx: Option<Bf16Matrix>,
}

/// An element-wise function applied to a dense layer's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Act {
    /// The identity.
    None,
    /// Exact (erf) GELU, as [`gelu`].
    Gelu,
}

impl Act {
    /// Apply in place. Inlined into its caller, so that inside a function compiled for
    /// AVX2+FMA (the few-rows kernel) it is vectorised for AVX2 as well.
    #[inline(always)]
    pub fn apply(self, x: &mut [f32]) {
        match self {
            Act::None => {}
            Act::Gelu => gelu_body(x),
        }
    }
}

/// Inputs with at most this many rows (tokens of a pack) use the few-rows kernel of
/// `small.rs` instead of `gemm`.
pub(crate) const SMALL_ROWS: usize = 64;

impl Linear {
    /// From a PyTorch `nn.Linear` weight `[out_dim, in_dim]` (row-major) and its bias.
    pub fn from_torch(weight: &[f32], bias: Vec<f32>, out_dim: usize, in_dim: usize) -> Linear {
        assert_eq!(
            weight.len(),
            out_dim * in_dim,
            "weight shape checked by the loader"
        );
        assert_eq!(bias.len(), out_dim, "bias shape checked by the loader");
        let mut w = vec![0.0f32; in_dim * out_dim];
        for o in 0..out_dim {
            for i in 0..in_dim {
                w[i * out_dim + o] = weight[o * in_dim + i];
            }
        }
        let amx = Bf16Matrix::available()
            .then(|| Bf16Matrix::from_f32(weight, out_dim, in_dim).ok())
            .flatten();
        let small = (amx.is_none() && small::supported()).then(|| Panels::new(&w, in_dim, out_dim));
        Linear {
            in_dim,
            out_dim,
            w,
            b: bias,
            small,
            amx,
        }
    }

    /// `out[m, out_dim] = act(x[m, in_dim] W + b)`. Rows are independent: the result of
    /// one row does not depend on the others (up to float summation order inside the GEMM).
    pub fn forward(&self, x: &[f32], m: usize, out: &mut [f32], par: Par<'_>, act: Act) {
        let (k, n) = (self.in_dim, self.out_dim);
        assert!(x.len() >= m * k, "input holds m rows");
        assert!(out.len() >= m * n, "output holds m rows");
        if m == 0 {
            return;
        }
        if let Some(w) = &self.amx {
            let (x, y) = (&x[..m * k], &mut out[..m * n]);
            // A team's helper is left free: it runs the query's BM25 side job meanwhile
            // (`Team::run_with_side`), and one core's tiles already outrun the two-thread
            // f16 kernel on a query (1.8 vs 3.4 ms for 19 tokens).
            let done = match par {
                Par::Pool(Parallelism::None) | Par::Team(_) => w.matmul_serial(x, y),
                Par::Pool(_) => w.matmul(x, y),
            };
            if done.is_ok() {
                for row in y.chunks_exact_mut(n) {
                    add_assign(row, &self.b);
                }
                if act == Act::Gelu {
                    gelu(y);
                }
                return;
            }
        }
        if m <= SMALL_ROWS
            && let Some(p) = &self.small
            && p.forward(x, m, &self.b, out, par, act)
        {
            return;
        }
        for row in out[..m * n].chunks_exact_mut(n) {
            row.copy_from_slice(&self.b);
        }
        // SAFETY: the asserts above guarantee every pointer/stride pair stays inside its
        // slice: x is m×k row-major, w is k×n row-major, out is m×n row-major.
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                out.as_mut_ptr(),
                1,
                n as isize,
                true,
                x.as_ptr(),
                1,
                k as isize,
                self.w.as_ptr(),
                1,
                n as isize,
                1.0,
                1.0,
                false,
                false,
                false,
                par.pool(),
            );
        }
        if act == Act::Gelu {
            // One multiversioned pass (AVX2 when available) over the whole output.
            gelu(&mut out[..m * n]);
        }
    }
}

/// `dst[m×n] = a[m×k] · b[k×n]` on strided views (row stride, column stride 1 for `a` and
/// `dst`; `b` given by its row and column strides), overwriting `dst`.
///
/// # Safety
/// Every element addressed by the shapes and strides must lie inside the given pointers'
/// allocations, and `dst` must not overlap `a` or `b`.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn matmul_strided(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: usize,
    a: *const f32,
    a_rs: usize,
    b: *const f32,
    b_rs: usize,
    b_cs: usize,
) {
    // SAFETY: forwarded from the caller's contract.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_rs as isize,
            false,
            a,
            1,
            a_rs as isize,
            b,
            b_cs as isize,
            b_rs as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            Parallelism::None,
        );
    }
}

/// Defines `pub(crate) fn $name(args)` that runs `$body` compiled for AVX2+FMA when the
/// CPU has it, and for the baseline target otherwise.
macro_rules! multiversion {
    ($(#[$doc:meta])* fn $name:ident($($arg:ident: $ty:ty),*) $(-> $ret:ty)? => $body:ident) => {
        $(#[$doc])*
        pub(crate) fn $name($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                unsafe fn fast($($arg: $ty),*) $(-> $ret)? {
                    $body($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: the CPU supports AVX2 and FMA (checked just above).
                    return unsafe { fast($($arg),*) };
                }
            }
            $body($($arg),*)
        }
    };
}

multiversion! {
    /// `x[r] = LayerNorm(x[r] + delta[r])` for every row `r` of width `gamma.len()`
    /// (`delta` may be empty: then plain LayerNorm).
    fn add_layer_norm(x: &mut [f32], delta: &[f32], gamma: &[f32], beta: &[f32], eps: f32) => add_layer_norm_body
}

multiversion! {
    /// Exact (erf) GELU in place: `0.5·x·(1 + erf(x/√2))`.
    fn gelu(x: &mut [f32]) => gelu_body
}

multiversion! {
    /// Row-wise softmax in place over rows of width `width`.
    fn softmax_rows(x: &mut [f32], width: usize) => softmax_rows_body
}

multiversion! {
    /// `acc += x` element-wise.
    fn add_assign(acc: &mut [f32], x: &[f32]) => add_assign_body
}

#[inline(always)]
fn sum_lanes(x: &[f32]) -> f32 {
    // Eight independent accumulators let LLVM keep a vector register per lane
    // (float addition is not reassociated otherwise).
    let mut acc = [0.0f32; 8];
    let chunks = x.chunks_exact(8);
    let tail = chunks.remainder();
    for c in chunks {
        for i in 0..8 {
            acc[i] += c[i];
        }
    }
    let mut s = (acc[0] + acc[4]) + (acc[1] + acc[5]) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for v in tail {
        s += v;
    }
    s
}

#[inline(always)]
fn add_layer_norm_body(x: &mut [f32], delta: &[f32], gamma: &[f32], beta: &[f32], eps: f32) {
    let n = gamma.len();
    if !delta.is_empty() {
        assert_eq!(
            delta.len(),
            x.len(),
            "residual and delta have the same shape"
        );
        for (a, d) in x.iter_mut().zip(delta) {
            *a += d;
        }
    }
    for row in x.chunks_exact_mut(n) {
        let mean = sum_lanes(row) / n as f32;
        for v in row.iter_mut() {
            *v -= mean;
        }
        let mut acc = [0.0f32; 8];
        let chunks = row.chunks_exact(8);
        let tail: f32 = chunks.remainder().iter().map(|v| v * v).sum();
        for c in chunks {
            for i in 0..8 {
                acc[i] += c[i] * c[i];
            }
        }
        let var = (acc.iter().sum::<f32>() + tail) / n as f32;
        let inv = 1.0 / (var + eps).sqrt();
        for ((v, g), b) in row.iter_mut().zip(gamma).zip(beta) {
            *v = *v * inv * g + b;
        }
    }
}

/// `0.5·x·(1 + erf(x/√2))` with erf from Abramowitz & Stegun 7.1.26 (|error| ≤ 1.5e-7),
/// arranged so that `1 + erf` is computed without cancellation for negative `x`.
#[inline(always)]
fn gelu1(x: f32) -> f32 {
    const P: f32 = 0.327_591_1;
    const A1: f32 = 0.254_829_6;
    const A2: f32 = -0.284_496_74;
    const A3: f32 = 1.421_413_8;
    const A4: f32 = -1.453_152;
    const A5: f32 = 1.061_405_4;
    let z = x * std::f32::consts::FRAC_1_SQRT_2;
    let az = z.abs();
    let t = 1.0 / (1.0 + P * az);
    let poly = t * (A1 + t * (A2 + t * (A3 + t * (A4 + t * A5))));
    // q = 1 - erf(|z|)
    let q = poly * exp_approx(-az * az);
    let one_plus_erf = if x >= 0.0 { 2.0 - q } else { q };
    0.5 * x * one_plus_erf
}

#[inline(always)]
fn gelu_body(x: &mut [f32]) {
    for v in x.iter_mut() {
        *v = gelu1(*v);
    }
}

#[inline(always)]
fn softmax_rows_body(x: &mut [f32], width: usize) {
    for row in x.chunks_exact_mut(width) {
        let max = max_lanes(row);
        for v in row.iter_mut() {
            *v = exp_approx(*v - max);
        }
        let inv = 1.0 / sum_lanes(row);
        for v in row.iter_mut() {
            *v *= inv;
        }
    }
}

#[inline(always)]
fn add_assign_body(acc: &mut [f32], x: &[f32]) {
    for (a, v) in acc.iter_mut().zip(x) {
        *a += v;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn erf_ref(x: f64) -> f64 {
        // Series for small |x|, continued fraction-free: integrate exp(-t^2) numerically.
        let n = 20_000;
        let h = x / n as f64;
        let mut s = 0.0;
        for i in 0..n {
            let t0 = i as f64 * h;
            let t1 = t0 + h;
            let tm = t0 + h / 2.0;
            s += (h / 6.0) * ((-t0 * t0).exp() + 4.0 * (-tm * tm).exp() + (-t1 * t1).exp());
        }
        s * 2.0 / std::f64::consts::PI.sqrt()
    }

    #[test]
    fn gelu_matches_erf_definition() {
        let xs: Vec<f32> = (-120..=120).map(|i| i as f32 * 0.05).collect();
        let mut got = xs.clone();
        gelu(&mut got);
        for (x, g) in xs.iter().zip(&got) {
            let x64 = *x as f64;
            let want = 0.5 * x64 * (1.0 + erf_ref(x64 / 2f64.sqrt()));
            assert!(
                (*g as f64 - want).abs() < 1e-6,
                "gelu({x}) = {g}, want {want}"
            );
        }
    }

    #[test]
    fn softmax_and_layer_norm() {
        let mut s = vec![1.0f32, 2.0, 3.0, -1.0, 0.0, 1000.0];
        softmax_rows(&mut s, 3);
        let e = [1f64.exp(), 2f64.exp(), 3f64.exp()];
        let z: f64 = e.iter().sum();
        for i in 0..3 {
            assert!((s[i] as f64 - e[i] / z).abs() < 1e-6);
        }
        assert!((s[5] - 1.0).abs() < 1e-6 && s[3] < 1e-30);

        let mut x: Vec<f32> = (0..16).map(|i| i as f32).collect();
        let delta = vec![1.0f32; 16];
        let gamma = vec![2.0f32; 16];
        let beta = vec![0.5f32; 16];
        add_layer_norm(&mut x, &delta, &gamma, &beta, 1e-12);
        let mean: f32 = x.iter().sum::<f32>() / 16.0;
        assert!((mean - 0.5).abs() < 1e-5);
        let var: f32 = x.iter().map(|v| (v - 0.5) * (v - 0.5)).sum::<f32>() / 16.0;
        assert!((var - 4.0).abs() < 1e-4);
    }

    #[test]
    fn linear_matches_naive() {
        // More rows than SMALL_ROWS: the gemm path, or AMX bf16 tiles where the CPU has
        // them (the f16 few-rows path is tested in small.rs; with AMX, few rows take the
        // tiles too). Sizes off the tile grid.
        let (m, k, n) = (SMALL_ROWS + 21, 45, 37);
        let w: Vec<f32> = (0..n * k).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..n).map(|i| i as f32 * 0.1 - 1.0).collect();
        let lin = Linear::from_torch(&w, b.clone(), n, k);
        assert_eq!(lin.amx.is_some(), Bf16Matrix::available());
        // What the route multiplies: the inputs themselves, or rounded to bf16.
        let round = |v: f32| match lin.amx {
            Some(_) => half::bf16::from_f32(v).to_f32(),
            None => v,
        };
        let x: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.11).cos()).collect();
        let rows: &[usize] = if lin.amx.is_some() { &[3, m] } else { &[m] };
        for (&m, act) in rows.iter().flat_map(|m| [(m, Act::None), (m, Act::Gelu)]) {
            for par in [Parallelism::None, Parallelism::Rayon(2)] {
                let mut out = vec![0.0f32; m * n];
                lin.forward(&x, m, &mut out, Par::Pool(par), act);
                for r in 0..m {
                    for o in 0..n {
                        let dot: f64 = (0..k)
                            .map(|i| {
                                f64::from(round(x[r * k + i])) * f64::from(round(w[o * k + i]))
                            })
                            .sum();
                        let mut want = [(f64::from(b[o]) + dot) as f32];
                        act.apply(&mut want);
                        let got = out[r * n + o];
                        assert!(
                            (got - want[0]).abs() < 1e-4,
                            "{act:?} row {r} col {o}: {got} vs {}",
                            want[0]
                        );
                    }
                }
            }
        }
    }
}
