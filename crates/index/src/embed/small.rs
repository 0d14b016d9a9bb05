//! Dense layers for inputs of a few rows (a search query: ~10–40 tokens).
//!
//! Why not the `gemm` crate here: for a 19-token query it ran at ~27 GFLOP/s on one core
//! (perf: 70% of the search in its 16×6 microkernel), about a third of what the core can do.
//! With so few rows the job is dominated by streaming the weights (42 MB of f32 for
//! MiniLM, more than this machine's L3), plus `gemm`'s per-call packing. This kernel keeps
//! a copy of each weight matrix as f16 *panels* of 16 output columns, laid out
//! `[panel][in_dim][16]`, built once at load: a query streams 21 MB instead of 42 MB
//! (which fits in L3), each panel is read from memory once and reused from L1/L2 for
//! every block of up to 6 rows, and the 6×16 outputs of a block stay in 12 AVX2
//! accumulators. f16 weights (11-bit mantissa) change the embedding by far less than
//! the cosine fixture's tolerance (checked in `tests/embed.rs`).
//!
//! Runs only on x86-64 CPUs with AVX2, FMA and F16C; elsewhere [`Panels::forward`]
//! returns `false` and the caller uses the GEMM path. Not built where AMX runs: one core's
//! bf16 tiles embed a query in about half the time of this kernel on two (`ops.rs`).

use gemm::Parallelism;

use super::ops::Act;
use super::team::{Par, SharedPtr};

/// Output columns per panel.
const PANEL: usize = 16;
/// Most rows per register block.
const MAX_BLOCK: usize = 6;
/// Panels per parallel task (each task gets at least this much work: ~100 µs).
const MIN_PANELS_PER_TASK: usize = 8;
/// Items a matmul is cut into for a [`Team`](super::team::Team) (see `Team::share`).
const TEAM_ITEMS: usize = 16;

/// A `[in_dim, out_dim]` weight matrix as f16 panels (see the module docs).
#[derive(Debug, Clone)]
pub(crate) struct Panels {
    in_dim: usize,
    out_dim: usize,
    /// `[ceil(out_dim / 16)][in_dim][16]` f16 bit patterns, zero beyond `out_dim`.
    data: Vec<u16>,
}

/// Whether this CPU runs the panel kernel.
pub(crate) fn supported() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
            && std::arch::is_x86_feature_detected!("f16c")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

impl Panels {
    /// From a weight matrix stored `[in_dim, out_dim]` row-major (as in `Linear`).
    pub fn new(w: &[f32], in_dim: usize, out_dim: usize) -> Panels {
        assert_eq!(
            w.len(),
            in_dim * out_dim,
            "weight shape checked by the caller"
        );
        let n_panels = out_dim.div_ceil(PANEL);
        let mut data = vec![0u16; n_panels * in_dim * PANEL];
        for p in 0..n_panels {
            for i in 0..in_dim {
                for c in 0..PANEL {
                    let col = p * PANEL + c;
                    if col < out_dim {
                        data[(p * in_dim + i) * PANEL + c] =
                            half::f16::from_f32(w[i * out_dim + col]).to_bits();
                    }
                }
            }
        }
        Panels {
            in_dim,
            out_dim,
            data,
        }
    }

    /// `out[m, out_dim] = act(x[m, in_dim] W + bias)`, returning `false` (and touching
    /// nothing) when the CPU lacks AVX2/FMA/F16C. With `Parallelism::Rayon(t)`, `t > 1`,
    /// panels are split across the current rayon pool; with a team, shared in small runs. The
    /// activation is applied to each 16-column tile while it is in L1, on the thread that
    /// computed it (a separate pass over the output ran on one thread only).
    pub fn forward(
        &self,
        x: &[f32],
        m: usize,
        bias: &[f32],
        out: &mut [f32],
        par: Par<'_>,
        act: Act,
    ) -> bool {
        let (k, n) = (self.in_dim, self.out_dim);
        assert!(x.len() >= m * k, "input holds m rows");
        assert!(out.len() >= m * n, "output holds m rows");
        assert_eq!(bias.len(), n, "one bias per output");
        if !supported() {
            return false;
        }
        if m == 0 {
            return true;
        }
        let n_panels = n.div_ceil(PANEL);
        let tasks = match par {
            Par::Pool(Parallelism::Rayon(t)) if t > 1 => {
                t.min(n_panels / MIN_PANELS_PER_TASK).max(1)
            }
            Par::Team(_) if n_panels >= 2 => 2,
            _ => 1,
        };
        // Each task writes only its own output columns.
        let out_ptr = SharedPtr(out.as_mut_ptr());
        let run = |panels: std::ops::Range<usize>| {
            let dst = out_ptr.get();
            // SAFETY: the CPU features were checked by `supported()`; x holds m×k, the
            // panels `panels` exist, and this task writes only the output columns of
            // its own panels (< n), within the m×n output asserted above.
            #[cfg(target_arch = "x86_64")]
            unsafe {
                self.run_panels(x, m, bias, dst, panels, act);
            }
            #[cfg(not(target_arch = "x86_64"))]
            let _ = (dst, panels);
        };
        if tasks == 1 {
            run(0..n_panels);
        } else if let Par::Team(team) = par {
            // About 16 items per matmul (one to six panels each, 4–30 µs of work), shared
            // between the two threads as they come free.
            let per = (n_panels / TEAM_ITEMS).max(1);
            team.share(n_panels.div_ceil(per), |_, i| {
                run(i * per..((i + 1) * per).min(n_panels));
            });
        } else {
            use rayon::prelude::*;
            let per = n_panels.div_ceil(tasks);
            (0..tasks).into_par_iter().for_each(|t| {
                let a = (t * per).min(n_panels);
                run(a..((t + 1) * per).min(n_panels));
            });
        }
        true
    }

    /// # Safety
    /// AVX2, FMA and F16C present; `x` holds `m × in_dim`; `out` points to `m × out_dim`
    /// floats of which this call writes only the columns of `panels`.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn run_panels(
        &self,
        x: &[f32],
        m: usize,
        bias: &[f32],
        out: *mut f32,
        panels: std::ops::Range<usize>,
        act: Act,
    ) {
        let (k, n) = (self.in_dim, self.out_dim);
        // Rows split into blocks of nearly equal size (19 rows: 5+5+5+4, not 6+6+6+1,
        // since a 1-row block is bound by FMA latency, not throughput).
        let blocks = m.div_ceil(MAX_BLOCK);
        let mut bias_pad = [0.0f32; PANEL];
        let mut tile = [0.0f32; MAX_BLOCK * PANEL];
        for p in panels {
            let w = &self.data[p * k * PANEL..(p + 1) * k * PANEL];
            let c0 = p * PANEL;
            let cols = PANEL.min(n - c0);
            bias_pad[..cols].copy_from_slice(&bias[c0..c0 + cols]);
            let mut row = 0;
            for b in 0..blocks {
                let rows = (m - row).div_ceil(blocks - b);
                let xs = &x[row * k..(row + rows) * k];
                // SAFETY: features enabled on this function; slices sized as required.
                unsafe {
                    match rows {
                        1 => block::<1>(xs, k, w, &bias_pad, &mut tile),
                        2 => block::<2>(xs, k, w, &bias_pad, &mut tile),
                        3 => block::<3>(xs, k, w, &bias_pad, &mut tile),
                        4 => block::<4>(xs, k, w, &bias_pad, &mut tile),
                        5 => block::<5>(xs, k, w, &bias_pad, &mut tile),
                        _ => block::<6>(xs, k, w, &bias_pad, &mut tile),
                    }
                }
                act.apply(&mut tile[..rows * PANEL]);
                for r in 0..rows {
                    // SAFETY: row + r < m and c0 + cols <= n: inside the m×n output.
                    unsafe {
                        std::ptr::copy_nonoverlapping(
                            tile.as_ptr().add(r * PANEL),
                            out.add((row + r) * n + c0),
                            cols,
                        );
                    }
                }
                row += rows;
            }
        }
    }
}

/// `tile[r][0..16] = bias + Σ_i xs[r][i] · w[i][0..16]` for `R` rows.
///
/// # Safety
/// AVX2, FMA and F16C present; `xs` holds `R × k`, `w` holds `k × 16`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn block<const R: usize>(
    xs: &[f32],
    k: usize,
    w: &[u16],
    bias: &[f32; PANEL],
    tile: &mut [f32; MAX_BLOCK * PANEL],
) {
    use std::arch::x86_64::*;
    assert!(R <= MAX_BLOCK && xs.len() >= R * k && w.len() >= k * PANEL);
    let xp = xs.as_ptr();
    let wp = w.as_ptr();
    // SAFETY: every load below is inside xs (r < R, i < k) or w (i < k, 16 per row);
    // the stores stay inside tile (R ≤ 6 rows of 16).
    unsafe {
        let b0 = _mm256_loadu_ps(bias.as_ptr());
        let b1 = _mm256_loadu_ps(bias.as_ptr().add(8));
        let mut lo = [b0; R];
        let mut hi = [b1; R];
        for i in 0..k {
            let wi = wp.add(i * PANEL) as *const __m128i;
            let w0 = _mm256_cvtph_ps(_mm_loadu_si128(wi));
            let w1 = _mm256_cvtph_ps(_mm_loadu_si128(wi.add(1)));
            for r in 0..R {
                let xv = _mm256_broadcast_ss(&*xp.add(r * k + i));
                lo[r] = _mm256_fmadd_ps(xv, w0, lo[r]);
                hi[r] = _mm256_fmadd_ps(xv, w1, hi[r]);
            }
        }
        for r in 0..R {
            _mm256_storeu_ps(tile.as_mut_ptr().add(r * PANEL), lo[r]);
            _mm256_storeu_ps(tile.as_mut_ptr().add(r * PANEL + 8), hi[r]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_naive_f16_weights() {
        if !supported() {
            return;
        }
        // Odd shapes: a partial last panel and every block size.
        for (m, k, n) in [
            (1, 7, 3),
            (5, 33, 40),
            (13, 64, 48),
            (19, 96, 37),
            (7, 40, 300),
        ] {
            let w: Vec<f32> = (0..k * n).map(|i| (i as f32 * 0.37).sin()).collect();
            let bias: Vec<f32> = (0..n).map(|i| i as f32 * 0.1).collect();
            let x: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.11).cos()).collect();
            let p = Panels::new(&w, k, n);
            super::super::team::Team::run(|team| {
                for par in [
                    Par::Pool(Parallelism::None),
                    Par::Pool(Parallelism::Rayon(3)),
                    Par::Team(team),
                ] {
                    let mut out = vec![f32::NAN; m * n];
                    assert!(p.forward(&x, m, &bias, &mut out, par, Act::None));
                    for r in 0..m {
                        for c in 0..n {
                            let want: f32 = bias[c]
                                + (0..k)
                                    .map(|i| {
                                        x[r * k + i] * half::f16::from_f32(w[i * n + c]).to_f32()
                                    })
                                    .sum::<f32>();
                            let got = out[r * n + c];
                            assert!(
                                (got - want).abs() < 1e-4 * (1.0 + want.abs()),
                                "m={m} k={k} n={n} [{r},{c}]: {got} vs {want}"
                            );
                        }
                    }
                }
            });
        }
    }
}
