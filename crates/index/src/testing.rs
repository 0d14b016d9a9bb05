//! Deterministic embedders for tests and benchmarks. They need no model files, so
//! unit tests of chunking, storage and fusion run anywhere, and a synthetic
//! million-chunk index can be built in minutes rather than hours of MiniLM
//! (`examples/scale_bench.rs`). Neither is meant for real retrieval quality.

use std::collections::HashMap;

use rayon::prelude::*;

use crate::{Embedder, Result};

/// Hashed bag-of-words embedder (lower-cased words, crude plural stripping).
#[derive(Debug, Clone)]
pub struct HashEmbedder {
    dim: usize,
    name: String,
}

impl HashEmbedder {
    /// An embedder with `dim` dimensions (at least 1).
    pub fn new(dim: usize) -> Self {
        let dim = dim.max(1);
        Self {
            dim,
            name: format!("hash-bow-v1-{dim}"),
        }
    }

    fn words(text: &str) -> impl Iterator<Item = String> + '_ {
        text.split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
            .map(|w| {
                let w = w.to_lowercase();
                match w.strip_suffix('s') {
                    Some(s) if s.len() > 3 => s.to_string(),
                    _ => w,
                }
            })
    }
}

fn fnv(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

impl Embedder for HashEmbedder {
    fn name(&self) -> &str {
        &self.name
    }
    fn dim(&self) -> usize {
        self.dim
    }
    fn max_tokens(&self) -> usize {
        256
    }
    /// One token per word or punctuation mark.
    fn count_tokens(&self, text: &str) -> usize {
        let words = text
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
            .count();
        let punct = text.chars().filter(|c| c.is_ascii_punctuation()).count();
        words + punct
    }
    fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        Ok(texts
            .iter()
            .map(|t| {
                let mut v = vec![0f32; self.dim];
                for w in Self::words(t) {
                    let h = fnv(&w);
                    let sign = if h >> 63 == 0 { 1.0 } else { -1.0 };
                    v[(h % self.dim as u64) as usize] += sign;
                }
                let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
                if n > 0.0 {
                    v.iter_mut().for_each(|x| *x /= n);
                } else {
                    v[0] = 1.0;
                }
                v
            })
            .collect())
    }
}

/// English function words that [`WordVectorEmbedder`] ignores (as a trained model
/// mostly does), so that texts do not all share one dominant direction.
const STOPWORDS: &[&str] = &[
    "a", "an", "and", "are", "as", "at", "be", "but", "by", "can", "for", "from", "has", "have",
    "if", "in", "is", "it", "its", "not", "of", "on", "or", "that", "the", "their", "this", "to",
    "was", "we", "were", "which", "will", "with",
];

/// Dense hashed bag-of-words embedder, a benchmark and testing aid.
///
/// Every distinct word (lower-cased, stop words skipped) maps to a fixed
/// pseudo-random vector with components uniform in [-1, 1], seeded by the word's
/// hash; a text's vector is the sum of its words' vectors weighted by `1 + ln(tf)`,
/// L2-normalised. Texts that share words therefore have correlated, dense vectors
/// (unlike [`HashEmbedder`]'s sparse ones), which gives an HNSW graph a realistic
/// workload. Deterministic across runs and machines; batches are embedded in
/// parallel with rayon. Tokens are counted as words plus punctuation marks.
#[derive(Debug, Clone)]
pub struct WordVectorEmbedder {
    dim: usize,
    name: String,
}

impl WordVectorEmbedder {
    /// An embedder with `dim` dimensions (at least 1).
    pub fn new(dim: usize) -> Self {
        let dim = dim.max(1);
        Self {
            dim,
            name: format!("word-vector-v1-{dim}"),
        }
    }

    /// Term frequencies of the non-stop words of `text`, lower-cased, sorted by word
    /// (a fixed summation order keeps vectors bit-identical across runs).
    fn term_freqs(text: &str) -> Vec<(String, u32)> {
        let mut tf: HashMap<String, u32> = HashMap::new();
        for w in text.split(|c: char| !c.is_alphanumeric()) {
            if w.is_empty() {
                continue;
            }
            let w = w.to_lowercase();
            if STOPWORDS.contains(&w.as_str()) {
                continue;
            }
            *tf.entry(w).or_default() += 1;
        }
        let mut tf: Vec<(String, u32)> = tf.into_iter().collect();
        tf.sort_unstable();
        tf
    }

    /// The fixed pseudo-random vector of `word`.
    fn word_vector(&self, word: &str) -> Vec<f32> {
        let mut state = fnv(word);
        (0..self.dim)
            .map(|_| {
                state = splitmix64(state);
                // Top 24 bits -> uniform in [-1, 1).
                (state >> 40) as f32 / (1u64 << 23) as f32 - 1.0
            })
            .collect()
    }
}

fn splitmix64(state: u64) -> u64 {
    let mut z = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Embedder for WordVectorEmbedder {
    fn name(&self) -> &str {
        &self.name
    }
    fn dim(&self) -> usize {
        self.dim
    }
    fn max_tokens(&self) -> usize {
        256
    }
    /// One token per word or punctuation mark.
    fn count_tokens(&self, text: &str) -> usize {
        HashEmbedder::new(1).count_tokens(text)
    }
    fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        // Word vectors are computed once per batch (Zipf-distributed words repeat a lot).
        let tfs: Vec<Vec<(String, u32)>> = texts.par_iter().map(|t| Self::term_freqs(t)).collect();
        let mut words: Vec<&str> = tfs
            .iter()
            .flat_map(|tf| tf.iter().map(|(w, _)| w.as_str()))
            .collect();
        words.sort_unstable();
        words.dedup();
        let table: HashMap<&str, Vec<f32>> = words
            .par_iter()
            .map(|w| (*w, self.word_vector(w)))
            .collect();
        Ok(tfs
            .par_iter()
            .map(|tf| {
                let mut v = vec![0f32; self.dim];
                for (w, n) in tf {
                    let weight = 1.0 + (*n as f32).ln();
                    let wv = &table[w.as_str()];
                    v.iter_mut().zip(wv).for_each(|(x, y)| *x += weight * y);
                }
                let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
                if norm > 0.0 {
                    v.iter_mut().for_each(|x| *x /= norm);
                } else {
                    v[0] = 1.0;
                }
                v
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cos(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    #[test]
    fn word_vectors_are_deterministic_normalised_and_correlate_with_shared_words() {
        let e = WordVectorEmbedder::new(384);
        let texts = [
            "Reward hacking in reinforcement learning agents.",
            "Agents in reinforcement learning exploit reward misspecification.",
            "Sparse autoencoders find interpretable features in transformer activations.",
            "",
        ];
        let a = e.embed(&texts).unwrap();
        let b = WordVectorEmbedder::new(384).embed(&texts).unwrap();
        assert!(a == b, "same input, same vectors");
        for v in &a {
            assert_eq!(v.len(), 384);
            assert!((cos(v, v) - 1.0).abs() < 1e-4, "unit length");
        }
        let related = cos(&a[0], &a[1]);
        let unrelated = cos(&a[0], &a[2]);
        assert!(related > 0.4, "shared words correlate: {related}");
        assert!(
            unrelated.abs() < 0.2,
            "disjoint words nearly orthogonal: {unrelated}"
        );
        // Stop words and case do not change the vector.
        let c = e
            .embed(&["The REWARD of the agents", "reward agents"])
            .unwrap();
        assert!((cos(&c[0], &c[1]) - 1.0).abs() < 1e-5);
        assert_eq!(e.count_tokens("Hello, world."), 4);
    }
}
