//! A small deterministic embedder for tests and examples: hashed bag of words.
//! It needs no model files, so unit tests of chunking, storage and fusion run
//! anywhere; it is not meant for real retrieval quality.

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
