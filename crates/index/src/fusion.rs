//! Fusion of ranked lists: reciprocal-rank fusion and a convex combination of
//! min-max normalised scores. Pure functions over (key, score) lists so they are
//! tested without an index.

use rustc_hash::{FxHashMap, FxHashSet};

use serde::{Deserialize, Serialize};

/// How hybrid search merges the BM25 and dense lists.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Fusion {
    /// Reciprocal-rank fusion: `sum 1 / (k + rank)`, rank from 1.
    Rrf { k: f32 },
    /// `alpha * dense + (1 - alpha) * bm25`, each min-max normalised over its list;
    /// a key missing from a list gets 0 there.
    Convex { alpha: f32 },
    /// `alpha * dense + (1 - alpha) * bm25`, each z-score normalised over its list
    /// (`(s - mean) / std`); a key missing from a list gets that list's lowest z.
    /// Unlike min-max, one outlying top score does not squash the rest of its list.
    ZScore { alpha: f32 },
}

impl Default for Fusion {
    /// Chosen on the dev half of `eval/retrieval` (see docs/BENCHMARKS.md).
    fn default() -> Self {
        Fusion::Convex {
            alpha: DEFAULT_ALPHA,
        }
    }
}

/// Default weight of the dense list in [`Fusion::Convex`]. Re-chosen (was 0.7) on the dev
/// halves of eval/retrieval and of the known-item set once BM25 stopped over-weighting
/// titles (swept 0.2-0.7, mean MRR@10 of the two; eval/retrieval/README.md).
pub const DEFAULT_ALPHA: f32 = 0.4;
/// Default constant of [`Fusion::Rrf`].
pub const DEFAULT_RRF_K: f32 = 60.0;

/// Fuse `bm25` and `dense` (each best first, keys unique within a list).
/// Returns keys best first with their fused score.
pub(crate) fn fuse(bm25: &[(u32, f32)], dense: &[(u32, f32)], fusion: Fusion) -> Vec<(u32, f32)> {
    // FxHash, not SipHash: keys are our own row/document numbers (no untrusted input), and
    // with the default depth of 400 per list hashing was most of this function's time.
    let mut acc: FxHashMap<u32, f32> =
        FxHashMap::with_capacity_and_hasher(bm25.len() + dense.len(), Default::default());
    match fusion {
        Fusion::Rrf { k } => {
            let k = if k.is_finite() && k >= 0.0 {
                k
            } else {
                DEFAULT_RRF_K
            };
            for list in [bm25, dense] {
                for (rank, (key, _)) in list.iter().enumerate() {
                    *acc.entry(*key).or_default() += 1.0 / (k + rank as f32 + 1.0);
                }
            }
        }
        Fusion::ZScore { alpha } => {
            let alpha = clamp_alpha(alpha);
            let mut floor = [0.0f32; 2];
            let mut z: [FxHashMap<u32, f32>; 2] = [FxHashMap::default(), FxHashMap::default()];
            for (i, list) in [bm25, dense].into_iter().enumerate() {
                if list.is_empty() {
                    continue;
                }
                let n = list.len() as f32;
                let mean = list.iter().map(|(_, s)| s).sum::<f32>() / n;
                let var = list
                    .iter()
                    .map(|(_, s)| (s - mean) * (s - mean))
                    .sum::<f32>()
                    / n;
                let sd = if var > 0.0 { var.sqrt() } else { 1.0 };
                let mut lo = f32::INFINITY;
                for (key, s) in list {
                    let v = (s - mean) / sd;
                    lo = lo.min(v);
                    z[i].insert(*key, v);
                }
                floor[i] = lo;
            }
            for key in z[0].keys().chain(z[1].keys()) {
                let b = z[0].get(key).copied().unwrap_or(floor[0]);
                let d = z[1].get(key).copied().unwrap_or(floor[1]);
                acc.insert(*key, (1.0 - alpha) * b + alpha * d);
            }
        }
        Fusion::Convex { alpha } => {
            let alpha = clamp_alpha(alpha);
            for (list, w) in [(bm25, 1.0 - alpha), (dense, alpha)] {
                let (lo, hi) = list
                    .iter()
                    .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), (_, s)| {
                        (lo.min(*s), hi.max(*s))
                    });
                for (key, s) in list {
                    let norm = if hi > lo { (s - lo) / (hi - lo) } else { 1.0 };
                    *acc.entry(*key).or_default() += w * norm;
                }
            }
        }
    }
    let mut out: Vec<(u32, f32)> = acc.into_iter().collect();
    // Keys are unique, so the order is total and an unstable sort gives the same result.
    out.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    out
}

fn clamp_alpha(alpha: f32) -> f32 {
    if alpha.is_finite() {
        alpha.clamp(0.0, 1.0)
    } else {
        DEFAULT_ALPHA
    }
}

/// Collapse a chunk list (best first) to a document list: each document keeps its
/// first (best) chunk's score. `doc_of` maps a chunk key to its document.
pub(crate) fn to_docs(list: &[(u32, f32)], doc_of: impl Fn(u32) -> u32) -> Vec<(u32, f32)> {
    let mut seen = FxHashSet::default();
    list.iter()
        .filter_map(|&(row, s)| {
            let d = doc_of(row);
            seen.insert(d).then_some((d, s))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rrf_rewards_agreement() {
        let bm25 = [(1, 9.0), (2, 5.0), (3, 1.0)];
        let dense = [(4, 0.9), (2, 0.8), (3, 0.1)];
        let f = fuse(&bm25, &dense, Fusion::Rrf { k: 60.0 });
        assert_eq!(f[0].0, 2); // ranks 2 and 2 beat ranks 1 and absent
        assert!((f[0].1 - 2.0 / 62.0).abs() < 1e-6);
        assert_eq!(f.len(), 4);
    }

    #[test]
    fn convex_endpoints_reproduce_single_lists() {
        let bm25 = [(1, 9.0), (2, 5.0), (3, 1.0)];
        let dense = [(3, 0.9), (2, 0.8), (4, 0.1)];
        let only_bm25: Vec<u32> = fuse(&bm25, &dense, Fusion::Convex { alpha: 0.0 })
            .iter()
            .take(3)
            .map(|x| x.0)
            .collect();
        assert_eq!(only_bm25, vec![1, 2, 3]);
        let only_dense: Vec<u32> = fuse(&bm25, &dense, Fusion::Convex { alpha: 1.0 })
            .iter()
            .take(2)
            .map(|x| x.0)
            .collect();
        assert_eq!(only_dense, vec![3, 2]);
        let mid = fuse(&bm25, &dense, Fusion::Convex { alpha: 0.5 });
        // 3: 0.5*0 + 0.5*1 = 0.5; 2: 0.5*0.5 + 0.5*0.875 = 0.6875 -> 2 first
        assert_eq!(mid[0].0, 2);
        assert!((mid[0].1 - 0.6875).abs() < 1e-6);
    }

    #[test]
    fn zscore_by_hand() {
        // bm25 scores 3, 2, 1: mean 2, sd sqrt(2/3); dense 0.9, 0.1: mean 0.5, sd 0.4.
        let bm25 = [(1, 3.0), (2, 2.0), (3, 1.0)];
        let dense = [(3, 0.9), (4, 0.1)];
        let f = fuse(&bm25, &dense, Fusion::ZScore { alpha: 0.5 });
        let sd = (2.0f32 / 3.0).sqrt();
        let z = |key: u32| f.iter().find(|x| x.0 == key).expect("key").1;
        // 3: bm25 z = -1/sd, dense z = +1; 4: missing from bm25 -> lowest bm25 z.
        assert!((z(3) - 0.5 * (-1.0 / sd + 1.0)).abs() < 1e-5);
        assert!((z(4) - 0.5 * (-1.0 / sd - 1.0)).abs() < 1e-5);
        // 1: dense missing -> lowest dense z (-1).
        assert!((z(1) - 0.5 * (1.0 / sd - 1.0)).abs() < 1e-5);
        assert_eq!(f.len(), 4);
        assert_eq!(f[0].0, 1); // 0.5 * (1.22 - 1) beats 0.5 * (-1.22 + 1)
        // alpha 0 reproduces the bm25 order.
        let b: Vec<u32> = fuse(&bm25, &dense, Fusion::ZScore { alpha: 0.0 })
            .iter()
            .take(3)
            .map(|x| x.0)
            .collect();
        assert_eq!(b, vec![1, 2, 3]);
    }

    #[test]
    fn docs_keep_best_chunk() {
        let l = [(10, 3.0), (11, 2.0), (20, 1.5), (12, 1.0)];
        let d = to_docs(&l, |r| r / 10);
        assert_eq!(d, vec![(1, 3.0), (2, 1.5)]);
    }
}
