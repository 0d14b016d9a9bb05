//! Exact nearest-neighbour search over a contiguous, memory-mapped f32 matrix.
//! Written by hand because the job is one loop: a dot product that the compiler
//! vectorises (an AVX2+FMA copy picked at run time), a bounded heap per thread,
//! and rayon over row blocks when the matrix is large.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use rayon::prelude::*;

/// Rows above which exact search splits the work across threads.
const PARALLEL_ROWS: usize = 16_384;
const BLOCK_ROWS: usize = 4_096;

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
    let mut s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

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
    let mut s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

/// Dot product of two equal-length vectors.
#[inline]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU supports the features the function was compiled for.
            return unsafe { dot_avx2(a, b) };
        }
    }
    dot_generic(a, b)
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
        for (i, v) in block.chunks_exact(dim).enumerate() {
            let row = first + i;
            if allow(row) {
                top.push(Scored {
                    row: row as u32,
                    score: dot(v, query),
                });
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
