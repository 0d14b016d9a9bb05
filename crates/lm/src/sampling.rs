//! Choosing the next token from logits: greedy, or temperature with top-k / top-p
//! filtering, reproducible with a seed.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::model::argmax;
use crate::{Error, Result};

/// How to pick the next token. `temperature <= 0` means greedy (the other fields are
/// then ignored).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SamplingParams {
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens (0: no limit).
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches `top_p` (1.0: no limit).
    pub top_p: f32,
    /// Seed of the random generator: equal seeds give equal samples.
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self::greedy()
    }
}

impl SamplingParams {
    /// Always the most likely token.
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            seed: 0,
        }
    }

    /// Check the values: `temperature` finite and not negative (0 is greedy), `top_p`
    /// in (0, 1]. Generation calls it first, so a bad value is an error rather than
    /// silently greedy (NaN) or an empty candidate set.
    ///
    /// Errors: [`Error::InvalidArgument`] naming the field.
    pub fn validate(&self) -> Result<()> {
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            return Err(Error::InvalidArgument(format!(
                "temperature {} must be a finite number, 0 (greedy) or more",
                self.temperature
            )));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(Error::InvalidArgument(format!(
                "top_p {} must be above 0 and at most 1",
                self.top_p
            )));
        }
        Ok(())
    }

    /// Whether this is greedy decoding.
    /// A NaN or non-positive temperature means greedy.
    pub fn is_greedy(&self) -> bool {
        self.temperature.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater)
    }
}

/// A sampler with its own random state.
pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
    /// Scratch: (index, logit) candidates.
    cand: Vec<(u32, f32)>,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Self {
        Self {
            params,
            rng: StdRng::seed_from_u64(params.seed),
            cand: Vec::new(),
        }
    }

    /// The parameters.
    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Pick a token from `logits` (one row, length vocab). NaN logits are never chosen
    /// unless every logit is NaN.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        if self.params.is_greedy() || logits.len() <= 1 {
            return argmax(logits);
        }
        let t = self.params.temperature;
        self.cand.clear();
        self.cand.extend(
            logits
                .iter()
                .enumerate()
                .filter(|(_, l)| !l.is_nan())
                .map(|(i, &l)| (i as u32, l / t)),
        );
        if self.cand.is_empty() {
            return 0;
        }
        // Sort descending by logit; top-k truncates first (as llama.cpp's default chain).
        let k = if self.params.top_k == 0 {
            self.cand.len()
        } else {
            self.params.top_k.min(self.cand.len())
        };
        if k < self.cand.len() {
            self.cand
                .select_nth_unstable_by(k - 1, |a, b| b.1.total_cmp(&a.1));
            self.cand.truncate(k);
        }
        self.cand
            .sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let max = self.cand[0].1;
        let mut probs: Vec<f64> = self
            .cand
            .iter()
            .map(|c| f64::from(c.1 - max).exp())
            .collect();
        let total: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= total);
        let top_p = f64::from(self.params.top_p);
        if top_p < 1.0 {
            let mut acc = 0.0;
            let mut keep = probs.len();
            for (i, p) in probs.iter().enumerate() {
                acc += p;
                if acc >= top_p {
                    keep = i + 1;
                    break;
                }
            }
            probs.truncate(keep.max(1));
        }
        let total: f64 = probs.iter().sum();
        let mut r = self.rng.random::<f64>() * total;
        for (i, p) in probs.iter().enumerate() {
            r -= p;
            if r <= 0.0 {
                return self.cand[i].0;
            }
        }
        self.cand[probs.len() - 1].0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logits() -> Vec<f32> {
        vec![0.1, 2.0, -1.0, 1.9, 0.5, 3.0, f32::NAN]
    }

    #[test]
    fn greedy_takes_argmax() {
        let mut s = Sampler::new(SamplingParams::greedy());
        assert_eq!(s.sample(&logits()), 5);
    }

    #[test]
    fn seeded_sampling_is_deterministic_and_varies() {
        let p = SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            seed: 42,
        };
        let draw = |p| {
            let mut s = Sampler::new(p);
            (0..200).map(|_| s.sample(&logits())).collect::<Vec<_>>()
        };
        let a = draw(p);
        assert_eq!(a, draw(p));
        assert_ne!(a, draw(SamplingParams { seed: 43, ..p }));
        // Several tokens appear, never the NaN one.
        let distinct: std::collections::BTreeSet<_> = a.iter().collect();
        assert!(distinct.len() >= 3, "{distinct:?}");
        assert!(!a.contains(&6));
    }

    #[test]
    fn top_k_and_top_p_restrict_the_candidates() {
        let mut s = Sampler::new(SamplingParams {
            temperature: 1.0,
            top_k: 2,
            top_p: 1.0,
            seed: 1,
        });
        for _ in 0..100 {
            let t = s.sample(&logits());
            assert!(t == 5 || t == 1, "{t}");
        }
        // p(5) = e^3 / sum ≈ 0.52 of all tokens: top_p 0.5 keeps only it.
        let mut s = Sampler::new(SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 0.5,
            seed: 1,
        });
        for _ in 0..50 {
            assert_eq!(s.sample(&logits()), 5);
        }
    }

    #[test]
    fn validate_refuses_unusable_values() {
        let ok = SamplingParams {
            temperature: 0.7,
            top_k: 40,
            top_p: 0.95,
            seed: 1,
        };
        assert!(ok.validate().is_ok());
        assert!(SamplingParams::greedy().validate().is_ok());
        for (t, p) in [
            (-1.0, 0.9),
            (f32::NAN, 0.9),
            (f32::INFINITY, 0.9),
            (0.7, -3.0),
            (0.7, 0.0),
            (0.7, 1.5),
            (0.7, f32::NAN),
        ] {
            let bad = SamplingParams {
                temperature: t,
                top_p: p,
                ..ok
            };
            assert!(
                matches!(bad.validate(), Err(Error::InvalidArgument(_))),
                "{t} {p}"
            );
        }
    }
}
