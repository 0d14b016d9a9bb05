//! Exact nearest-neighbour search over a contiguous, memory-mapped f32 matrix.
//! Written by hand because the job is one loop: dot products that the compiler
//! vectorises, a bounded heap per thread, and rayon over row blocks when the matrix is
//! large.
//!
//! The scan ([`score_rows`]) is one AVX2+FMA function per block of rows (the CPU check
//! runs once per block, not once per row) that scores four rows per iteration with
//! independent accumulators. Each row's score is computed with exactly the operations
//! of [`dot`] (same lanes, same fused multiply-adds, same reduction order), so a row
//! scores bit-for-bit the same in the scan, in [`dot`] and in the HNSW graph.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use rayon::prelude::*;

use crate::embed::Team;

/// Rows above which exact search splits the work across threads.
const PARALLEL_ROWS: usize = 16_384;
const BLOCK_ROWS: usize = 4_096;
/// Rows scored per call of the scan kernel before their scores go to the heap (the
/// scores stay in L1).
const SCORE_ROWS: usize = 256;

/// Sum of the eight lanes in the one order every path uses.
#[inline(always)]
fn reduce8(acc: &[f32; 8]) -> f32 {
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]))
}

#[inline(always)]
fn dot_generic(a: &[f32], b: &[f32]) -> f32 {
    // Eight independent lanes so the loop vectorises without reassociating floats.
    let mut acc = [0f32; 8];
    let (ca, ra) = a.as_chunks::<8>();
    let (cb, rb) = b.as_chunks::<8>();
    for (x, y) in ca.iter().zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s = reduce8(&acc);
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

/// The AVX2 dot product: lane `i` accumulates `fma(a[8j+i], b[8j+i], acc)` over the
/// whole 8-wide chunks, then [`reduce8`], then the tail with separate multiply and add.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, ra) = a.as_chunks::<8>();
    let (cb, rb) = b.as_chunks::<8>();
    for (x, y) in ca.iter().zip(cb) {
        for i in 0..8 {
            acc[i] = x[i].mul_add(y[i], acc[i]);
        }
    }
    let mut s = reduce8(&acc);
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

fn has_avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Dot product of two equal-length vectors.
#[inline]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    #[cfg(target_arch = "x86_64")]
    {
        if has_avx2_fma() {
            // SAFETY: the CPU supports the features the function was compiled for.
            return unsafe { dot_avx2(a, b) };
        }
    }
    dot_generic(a, b)
}

/// `out[i] = dot(rows[i], query)` for every row of `rows` (`out.len()` rows of
/// `query.len()` floats), bit-identical to [`dot`] row by row.
fn score_rows(rows: &[f32], query: &[f32], out: &mut [f32]) {
    let dim = query.len();
    assert_eq!(rows.len(), out.len() * dim, "one score per row");
    #[cfg(target_arch = "x86_64")]
    {
        if has_avx2_fma() {
            // SAFETY: the CPU supports AVX2 and FMA (checked just above).
            unsafe { score_rows_avx2(rows, query, out) };
            return;
        }
    }
    for (v, o) in rows.chunks_exact(dim.max(1)).zip(out.iter_mut()) {
        *o = dot_generic(v, query);
    }
}

/// The eight lanes of `v` summed as [`reduce8`] sums an array (same order, so the
/// kernels below stay bit-identical to [`dot`]).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn hsum8(v: std::arch::x86_64::__m256) -> f32 {
    let mut lanes = [0f32; 8];
    // SAFETY: `lanes` holds 8 floats.
    unsafe { std::arch::x86_64::_mm256_storeu_ps(lanes.as_mut_ptr(), v) };
    reduce8(&lanes)
}

/// [`score_rows`] with AVX2+FMA: four rows per iteration, one accumulator register
/// each, so four independent FMA chains hide the FMA latency and every query chunk
/// loaded serves four rows.
///
/// # Safety
/// The CPU supports AVX2 and FMA; `rows.len() == out.len() * query.len()`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn score_rows_avx2(rows: &[f32], query: &[f32], out: &mut [f32]) {
    use std::arch::x86_64::*;
    let dim = query.len();
    let full = dim / 8 * 8;
    let n = out.len();
    assert!(rows.len() >= n * dim, "caller passes n rows");
    let finish = |acc: __m256, row: &[f32]| {
        let mut s = hsum8(acc);
        for (x, y) in row[full..].iter().zip(&query[full..]) {
            s += x * y;
        }
        s
    };
    let qp = query.as_ptr();
    let mut r = 0;
    while r + 4 <= n {
        let p = rows[r * dim..].as_ptr();
        // SAFETY: rows r..r+4 exist (r + 4 <= n, rows holds n × dim), and every load
        // reads 8 floats at an offset c + 8 <= full <= dim within a row or the query.
        let (a0, a1, a2, a3) = unsafe {
            let mut a = [_mm256_setzero_ps(); 4];
            let mut c = 0;
            while c < full {
                let q = _mm256_loadu_ps(qp.add(c));
                a[0] = _mm256_fmadd_ps(_mm256_loadu_ps(p.add(c)), q, a[0]);
                a[1] = _mm256_fmadd_ps(_mm256_loadu_ps(p.add(dim + c)), q, a[1]);
                a[2] = _mm256_fmadd_ps(_mm256_loadu_ps(p.add(2 * dim + c)), q, a[2]);
                a[3] = _mm256_fmadd_ps(_mm256_loadu_ps(p.add(3 * dim + c)), q, a[3]);
                c += 8;
            }
            (a[0], a[1], a[2], a[3])
        };
        for (i, acc) in [a0, a1, a2, a3].into_iter().enumerate() {
            let row = &rows[(r + i) * dim..(r + i + 1) * dim];
            out[r + i] = finish(acc, row);
        }
        r += 4;
    }
    while r < n {
        out[r] = dot_avx2(&rows[r * dim..(r + 1) * dim], query);
        r += 1;
    }
}

/// A (row, score) pair ordered by score, ties by row (lower row wins).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scored {
    pub row: u32,
    pub score: f32,
}

impl Eq for Scored {}
impl Ord for Scored {
    fn cmp(&self, o: &Self) -> Ordering {
        self.score
            .total_cmp(&o.score)
            .then_with(|| o.row.cmp(&self.row))
    }
}
impl PartialOrd for Scored {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}

/// Keeps the `k` best items seen.
pub(crate) struct TopK {
    k: usize,
    heap: BinaryHeap<std::cmp::Reverse<Scored>>,
}

impl TopK {
    pub fn new(k: usize) -> Self {
        Self {
            k,
            heap: BinaryHeap::with_capacity(k + 1),
        }
    }
    #[inline]
    pub fn push(&mut self, s: Scored) {
        if self.heap.len() < self.k {
            self.heap.push(std::cmp::Reverse(s));
        } else if let Some(min) = self.heap.peek()
            && s > min.0
        {
            self.heap.pop();
            self.heap.push(std::cmp::Reverse(s));
        }
    }
    /// Worst kept score once full.
    pub fn threshold(&self) -> Option<f32> {
        (self.heap.len() >= self.k).then(|| self.heap.peek().map_or(f32::MIN, |m| m.0.score))
    }
    pub fn merge(mut self, other: TopK) -> TopK {
        for s in other.heap {
            self.push(s.0);
        }
        self
    }
    /// Best first.
    pub fn into_sorted(self) -> Vec<Scored> {
        let mut v: Vec<Scored> = self.heap.into_iter().map(|r| r.0).collect();
        v.sort_by(|a, b| b.cmp(a));
        v
    }
}

/// Exact top-`k` rows of `matrix` (rows × `dim`, row-major) by dot product with `query`,
/// over rows for which `allow(row)` holds. Best first.
pub(crate) fn exact_search(
    matrix: &[f32],
    dim: usize,
    query: &[f32],
    k: usize,
    allow: &(dyn Fn(usize) -> bool + Sync),
) -> Vec<Scored> {
    if k == 0 || dim == 0 {
        return Vec::new();
    }
    let rows = matrix.len() / dim;
    let scan = |first: usize, block: &[f32]| {
        let mut top = TopK::new(k);
        let mut scores = [0f32; SCORE_ROWS];
        for (c, part) in block.chunks(SCORE_ROWS * dim).enumerate() {
            let n = part.len() / dim;
            score_rows(&part[..n * dim], query, &mut scores[..n]);
            let base = first + c * SCORE_ROWS;
            for (i, &score) in scores[..n].iter().enumerate() {
                let row = base + i;
                // Cheap reject first: most rows score below a full heap's worst.
                if top.threshold().is_some_and(|t| score < t) {
                    continue;
                }
                if allow(row) {
                    top.push(Scored {
                        row: row as u32,
                        score,
                    });
                }
            }
        }
        top
    };
    if rows < PARALLEL_ROWS {
        return scan(0, matrix).into_sorted();
    }
    matrix
        .par_chunks(BLOCK_ROWS * dim)
        .enumerate()
        .map(|(b, block)| scan(b * BLOCK_ROWS, block))
        .reduce(|| TopK::new(k), TopK::merge)
        .into_sorted()
}

/// Rows from which the f16 pass is split across a team.
const SPLIT_ROWS: usize = 2_048;

/// Most rows for which a search keeps an f16 copy of the vectors in memory (2 bytes a
/// value: 100 MB at 384 dims); larger indexes scan the f32 file directly.
pub(crate) const HALF_MAX_ROWS: usize = 131_072;

/// An f16 copy of a vector matrix, for a first pass that reads half the bytes of the f32
/// matrix, followed by an exact f32 re-score of the candidates that could be in the top
/// `k` (see [`HalfMatrix::search`]).
///
/// Why: the exact scan of a small index is bound by memory, not arithmetic (9 MB of f32
/// for 5,833 chunks, mostly evicted from L3 by the embedding model's weights between
/// queries; measured 0.27 ms hot, 0.78 ms cold, against ~0.05 ms of FMAs).
pub(crate) struct HalfMatrix {
    dim: usize,
    /// `rows × dim` f16 bit patterns.
    data: Vec<u16>,
    /// Bound on the f16 rounding of any row: `max_r ‖v_r − f16(v_r)‖` (computed in f64,
    /// rounded up).
    max_err: f64,
    /// `max_r max(‖v_r‖, ‖f16(v_r)‖)`.
    max_norm: f64,
}

impl std::fmt::Debug for HalfMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HalfMatrix")
            .field("dim", &self.dim)
            .field("rows", &(self.data.len() / self.dim.max(1)))
            .finish_non_exhaustive()
    }
}

impl HalfMatrix {
    /// The f16 copy of `matrix` (`rows × dim`), or `None` when it would not help or
    /// could not be exact: no F16C/AVX2/FMA, more than [`HALF_MAX_ROWS`] rows, or a value
    /// that is not finite or does not fit f16's range.
    pub fn new(matrix: &[f32], dim: usize) -> Option<HalfMatrix> {
        if dim == 0 || !has_f16c() {
            return None;
        }
        let rows = matrix.len() / dim;
        if rows > HALF_MAX_ROWS {
            return None;
        }
        let mut data = Vec::with_capacity(rows * dim);
        let (mut max_err, mut max_norm) = (0f64, 0f64);
        for row in matrix[..rows * dim].chunks_exact(dim) {
            let (mut err2, mut n2, mut h2) = (0f64, 0f64, 0f64);
            for &x in row {
                if !x.is_finite() || x.abs() > 65_000.0 {
                    return None;
                }
                let h = half::f16::from_f32(x);
                let hx = f64::from(h.to_f32());
                let xd = f64::from(x);
                err2 += (xd - hx) * (xd - hx);
                n2 += xd * xd;
                h2 += hx * hx;
                data.push(h.to_bits());
            }
            max_err = max_err.max(err2.sqrt());
            max_norm = max_norm.max(n2.sqrt()).max(h2.sqrt());
        }
        Some(HalfMatrix {
            dim,
            data,
            max_err: max_err * (1.0 + 1e-9),
            max_norm: max_norm * (1.0 + 1e-9),
        })
    }

    /// Exactly [`exact_search`]`(matrix, dim, query, k, allow)` (same rows, same scores,
    /// same order), where `matrix` is the f32 matrix this copy was made from.
    ///
    /// How: score every allowed row against the f16 copy; let `t` be the `k`-th best
    /// approximate score. With `ε` a bound on |f32 score − f16 score| for any row (f16
    /// rounding of the row, `‖q‖·max‖v − f16(v)‖`, plus the float rounding of both dot
    /// products, `2γ_dim·‖q‖·max‖v‖`), every row of the exact top `k` scores at least
    /// `t − 2ε` approximately, so re-scoring just those rows with [`dot`] and keeping the
    /// best `k` gives the exact answer.
    ///
    /// With a `team`, the f16 pass is split in two halves of rows between its threads
    /// (the pass is bound by memory bandwidth, which two cores double).
    pub fn search(
        &self,
        matrix: &[f32],
        query: &[f32],
        k: usize,
        allow: &(dyn Fn(usize) -> bool + Sync),
        team: Option<&Team>,
    ) -> Vec<Scored> {
        let dim = self.dim;
        let rows = self.data.len() / dim;
        let qnorm = query
            .iter()
            .map(|&x| f64::from(x) * f64::from(x))
            .sum::<f64>()
            .sqrt();
        // γ_n = n·u / (1 − n·u) bounds the relative rounding error of an n-term dot
        // product in f32 in any summation order (u = 2^-24).
        let nu = (dim as f64 + 2.0) * f64::from(f32::EPSILON) / 2.0;
        let gamma = nu / (1.0 - nu);
        let eps = qnorm * (self.max_err + 2.0 * gamma * self.max_norm);
        if k == 0
            || query.len() != dim
            || matrix.len() < rows * dim
            || !has_f16c()
            || !eps.is_finite()
            || eps > 1e30
        {
            return exact_search(matrix, dim, query, k, allow);
        }
        // Widened by a relative 1e-6 and a tiny absolute amount: the bound itself is
        // computed in floating point.
        let margin = (2.0 * eps * (1.0 + 1e-6) + 1e-30) as f32;
        let mut approx = vec![0f32; rows];
        let pass = |data: &[u16], out: &mut [f32]| {
            for (part, out) in data
                .chunks(SCORE_ROWS * dim)
                .zip(out.chunks_mut(SCORE_ROWS))
            {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: F16C, AVX2 and FMA checked above; `part` holds as many rows of
                // `dim` as `out` has scores.
                unsafe {
                    score_rows_f16(part, query, out);
                }
                #[cfg(not(target_arch = "x86_64"))]
                let _ = (part, out);
            }
        };
        match team {
            Some(team) if rows >= SPLIT_ROWS => {
                let mid = rows / 2;
                let (lo, hi) = approx.split_at_mut(mid);
                let (lo, hi) = (std::sync::Mutex::new(lo), std::sync::Mutex::new(hi));
                // Each half locks its own mutex once (uncontended): a way to hand the two
                // disjoint halves to `Fn` closures without unsafe code.
                team.split(
                    || {
                        pass(
                            &self.data[..mid * dim],
                            &mut lo.lock().expect("fresh mutex"),
                        )
                    },
                    || {
                        pass(
                            &self.data[mid * dim..],
                            &mut hi.lock().expect("fresh mutex"),
                        )
                    },
                );
            }
            _ => pass(&self.data, &mut approx),
        }
        // k-th best approximate score among allowed rows: a linear-time selection over a
        // copy of the scores (a heap of k = 400 over 5,833 rows took ~0.1 ms a query).
        let mut allowed: Vec<f32> = approx
            .iter()
            .enumerate()
            .filter(|&(row, _)| allow(row))
            .map(|(_, &score)| score)
            .collect();
        if allowed.len() <= k {
            // At most k allowed rows: all of them are the answer.
            let every = (0..rows).filter(|&r| allow(r)).map(|r| r as u32);
            return rescore(matrix, dim, query, k, every);
        }
        let (_, &mut t, _) = allowed.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a));
        let floor = t - margin;
        if !floor.is_finite() {
            return exact_search(matrix, dim, query, k, allow);
        }
        let candidates = approx
            .iter()
            .enumerate()
            .filter(|&(row, &score)| score >= floor && allow(row))
            .map(|(row, _)| row as u32);
        rescore(matrix, dim, query, k, candidates)
    }
}

/// The best `k` of `rows`, scored exactly with [`dot`].
///
/// The rows are scattered through a matrix that the query embedding has mostly evicted
/// from the caches, so the next rows are prefetched while one is scored (each row a new
/// stream that the hardware prefetcher would only pick up after its first misses).
fn rescore(
    matrix: &[f32],
    dim: usize,
    query: &[f32],
    k: usize,
    rows: impl Iterator<Item = u32>,
) -> Vec<Scored> {
    /// Rows fetched ahead of the one being scored.
    const AHEAD: usize = 4;
    let rows: Vec<u32> = rows.collect();
    let row_of = |r: u32| &matrix[r as usize * dim..(r as usize + 1) * dim];
    for &r in rows.iter().take(AHEAD) {
        prefetch(row_of(r));
    }
    let mut top = TopK::new(k);
    for (i, &row) in rows.iter().enumerate() {
        if let Some(&next) = rows.get(i + AHEAD) {
            prefetch(row_of(next));
        }
        top.push(Scored {
            row,
            score: dot(row_of(row), query),
        });
    }
    top.into_sorted()
}

/// Hint the CPU to bring `data` into the caches (no effect on results).
#[inline]
fn prefetch(data: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    for line in data.chunks(16) {
        // SAFETY: a prefetch never faults and has no architectural effect; the address
        // is inside `data`.
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                line.as_ptr().cast(),
            );
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = data;
}

fn has_f16c() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        has_avx2_fma() && std::is_x86_feature_detected!("f16c")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `out[i] = Σ_j f16(rows[i][j]) · query[j]` (f32 arithmetic), four rows per iteration.
///
/// # Safety
/// The CPU supports AVX2, FMA and F16C; `rows.len() == out.len() * query.len()`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn score_rows_f16(rows: &[u16], query: &[f32], out: &mut [f32]) {
    use std::arch::x86_64::*;
    let dim = query.len();
    let full = dim / 8 * 8;
    let n = out.len();
    assert!(rows.len() >= n * dim, "caller passes n rows");
    let tail = |row: &[u16]| -> f32 {
        row[full..]
            .iter()
            .zip(&query[full..])
            .map(|(&h, &y)| half::f16::from_bits(h).to_f32() * y)
            .sum()
    };
    let qp = query.as_ptr();
    let mut r = 0;
    while r + 4 <= n {
        let p = rows[r * dim..].as_ptr();
        // SAFETY: rows r..r+4 exist, and each load reads 8 values at offset c + 8 <= full
        // <= dim within a row or the query.
        let a = unsafe {
            let mut a = [_mm256_setzero_ps(); 4];
            let mut c = 0;
            while c < full {
                let q = _mm256_loadu_ps(qp.add(c));
                for (j, acc) in a.iter_mut().enumerate() {
                    let v = _mm256_cvtph_ps(_mm_loadu_si128(p.add(j * dim + c).cast()));
                    *acc = _mm256_fmadd_ps(v, q, *acc);
                }
                c += 8;
            }
            a
        };
        for (j, acc) in a.into_iter().enumerate() {
            let row = &rows[(r + j) * dim..(r + j + 1) * dim];
            out[r + j] = hsum8(acc) + tail(row);
        }
        r += 4;
    }
    for (j, o) in out.iter_mut().enumerate().skip(r) {
        let row = &rows[j * dim..(j + 1) * dim];
        *o = row[..full]
            .iter()
            .zip(&query[..full])
            .map(|(&h, &y)| half::f16::from_bits(h).to_f32() * y)
            .sum::<f32>()
            + tail(row);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_matches_naive() {
        for n in [0, 1, 7, 8, 9, 31, 384] {
            let a: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
            let b: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11).cos()).collect();
            let naive: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
            assert!((dot(&a, &b) - naive).abs() < 1e-4, "n={n}");
        }
    }

    #[test]
    fn scan_scores_are_bit_identical_to_dot() {
        // Dims with and without a tail, row counts not a multiple of four.
        for (rows, dim) in [
            (0usize, 8usize),
            (1, 384),
            (7, 384),
            (9, 13),
            (257, 20),
            (5, 3),
        ] {
            let m: Vec<f32> = (0..rows * dim)
                .map(|i| ((i as f32) * 0.731).sin() * 0.2)
                .collect();
            let q: Vec<f32> = (0..dim).map(|i| (i as f32 * 0.37).cos()).collect();
            let mut out = vec![f32::NAN; rows];
            score_rows(&m, &q, &mut out);
            for r in 0..rows {
                let want = dot(&m[r * dim..(r + 1) * dim], &q);
                assert_eq!(
                    out[r].to_bits(),
                    want.to_bits(),
                    "rows={rows} dim={dim} r={r}"
                );
            }
        }
    }

    #[test]
    fn exact_search_matches_brute_force_at_embedding_width() {
        // The shape of a real index (384 dims), a depth larger than the block of scores,
        // and ties (duplicated rows) broken by the lower row.
        let (rows, dim, k) = (3_001usize, 384usize, 400usize);
        let mut m: Vec<f32> = (0..rows * dim)
            .map(|i| (((i as u64 * 2654435761) % 10_007) as f32 / 10_007.0 - 0.5) * 0.1)
            .collect();
        let first: Vec<f32> = m[..dim].to_vec();
        m[1000 * dim..1001 * dim].copy_from_slice(&first);
        // The query is row 0 itself, so rows 0 and 1000 tie for first place.
        let q = first;
        for allow in [
            &(|_: usize| true) as &(dyn Fn(usize) -> bool + Sync),
            &|r| r % 5 != 1,
        ] {
            let got = exact_search(&m, dim, &q, k, allow);
            let mut all: Vec<Scored> = (0..rows)
                .filter(|&r| allow(r))
                .map(|r| Scored {
                    row: r as u32,
                    score: dot(&m[r * dim..(r + 1) * dim], &q),
                })
                .collect();
            all.sort_by(|a, b| b.cmp(a));
            all.truncate(k);
            assert_eq!(got.len(), k);
            assert_eq!((got[0].row, got[1].row), (0, 1000));
            assert!(
                got.iter()
                    .zip(&all)
                    .all(|(a, b)| a.row == b.row && a.score.to_bits() == b.score.to_bits())
            );
        }
    }

    /// Unit vectors clustered around a few directions (like embeddings: many rows with
    /// close scores near the k-th place).
    fn clustered(rows: usize, dim: usize) -> Vec<f32> {
        let mut m = Vec::with_capacity(rows * dim);
        for r in 0..rows {
            let c = r % 7;
            let row: Vec<f32> = (0..dim)
                .map(|j| {
                    let centre = ((c * 31 + j) as f32 * 0.173).sin();
                    let noise = (((r * dim + j) as u64 * 2654435761) % 10_007) as f32 / 10_007.0;
                    centre + 0.3 * (noise - 0.5)
                })
                .collect();
            let n = row.iter().map(|x| x * x).sum::<f32>().sqrt();
            m.extend(row.iter().map(|x| x / n));
        }
        m
    }

    #[test]
    fn half_search_is_identical_to_exact_search() {
        if !has_f16c() {
            return;
        }
        for (rows, dim) in [(SPLIT_ROWS + 101, 384), (300, 13), (50, 8)] {
            let mut m = clustered(rows, dim);
            // Ties: row 40 duplicates row 3.
            let dup: Vec<f32> = m[3 * dim..4 * dim].to_vec();
            m[40 * dim..41 * dim].copy_from_slice(&dup);
            let half = HalfMatrix::new(&m, dim).expect("finite values, F16C present");
            for qi in [3usize, 11, 27] {
                let q: Vec<f32> = m[qi * dim..(qi + 1) * dim]
                    .iter()
                    .enumerate()
                    .map(|(j, x)| x + 0.01 * (j as f32).cos())
                    .collect();
                let filters: [&(dyn Fn(usize) -> bool + Sync); 3] =
                    [&|_| true, &|r| r % 3 != 0, &|r| r < 20];
                for allow in filters {
                    for k in [1usize, 10, 400, rows + 5] {
                        let want = exact_search(&m, dim, &q, k, allow);
                        let alone = half.search(&m, &q, k, allow, None);
                        let split = Team::run(|t| half.search(&m, &q, k, allow, Some(t)));
                        for got in [alone, split] {
                            assert_eq!(got.len(), want.len(), "rows={rows} k={k}");
                            for (g, w) in got.iter().zip(&want) {
                                assert_eq!(g.row, w.row, "rows={rows} dim={dim} k={k} q={qi}");
                                assert_eq!(g.score.to_bits(), w.score.to_bits());
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn half_copy_refuses_values_it_cannot_hold() {
        assert!(HalfMatrix::new(&[1.0, f32::NAN, 0.0, 1.0], 2).is_none());
        assert!(HalfMatrix::new(&[1.0, 1e6, 0.0, 1.0], 2).is_none());
        assert!(HalfMatrix::new(&[], 0).is_none());
    }

    #[test]
    fn exact_search_serial_and_parallel_agree_with_sort() {
        let dim = 16;
        for rows in [100usize, 40_000] {
            let m: Vec<f32> = (0..rows * dim)
                .map(|i| ((i * 2654435761) % 1000) as f32 / 1000.0 - 0.5)
                .collect();
            let q: Vec<f32> = (0..dim).map(|i| (i as f32).sin()).collect();
            let allow = |r: usize| !r.is_multiple_of(3);
            let got = exact_search(&m, dim, &q, 10, &allow);
            let mut all: Vec<Scored> = (0..rows)
                .filter(|&r| allow(r))
                .map(|r| Scored {
                    row: r as u32,
                    score: dot(&m[r * dim..(r + 1) * dim], &q),
                })
                .collect();
            all.sort_by(|a, b| b.cmp(a));
            all.truncate(10);
            assert_eq!(got, all, "rows={rows}");
        }
    }
}
