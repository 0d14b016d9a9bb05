//! Grounding check: is each cited sentence of an answer supported by the passages it
//! cites? Two signals, either of which suffices:
//! - **semantic**: the best cosine similarity (with the index's embedder) between the
//!   sentence and any sentence of a cited passage;
//! - **lexical**: the share of the sentence's content words found in a cited passage.
//!
//! Thresholds are calibrated on `eval/answers/questions.jsonl` and documented in
//! `docs/BENCHMARKS.md` ("Grounded answers").

use overseer_index::Embedder;
use serde::Serialize;

use crate::Result;
use crate::citations;
use crate::quality::strip_citations;
use crate::retrieve::Source;
use crate::text::{content_words, dot, lexical_overlap, sentences};

/// Thresholds for calling a sentence supported.
#[derive(Debug, Clone, Copy)]
pub struct GroundingConfig {
    /// Cosine similarity (sentence vs best passage sentence) at or above which a
    /// sentence is supported.
    pub min_similarity: f32,
    /// Share of content words found in the passage at or above which a sentence is
    /// supported.
    pub min_overlap: f32,
}

impl GroundingConfig {
    /// Whether a sentence with this similarity (when an embedder was used) and
    /// lexical overlap to a piece of evidence is supported by it.
    pub fn supports(&self, similarity: Option<f32>, overlap: f32) -> bool {
        overlap >= self.min_overlap || similarity.is_some_and(|s| s >= self.min_similarity)
    }
}

impl Default for GroundingConfig {
    fn default() -> Self {
        Self {
            min_similarity: 0.6,
            min_overlap: 0.5,
        }
    }
}

/// The grounding verdict for one cited sentence of an answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SentenceSupport {
    /// Byte range of the sentence in the answer.
    pub start: usize,
    pub end: usize,
    pub text: String,
    /// Source numbers the sentence cites (all valid).
    pub cites: Vec<u32>,
    /// Per cited number: (n, similarity if an embedder was used, lexical overlap, supported).
    pub scores: Vec<(u32, Option<f32>, f32, bool)>,
    /// Whether at least one cited passage supports the sentence.
    pub supported: bool,
}

/// Check every sentence of `answer` that cites one of `sources` (numbered from 1).
/// Citation numbers must already be valid (see [`citations::clean`]).
pub fn check(
    answer: &str,
    sources: &[Source],
    embedder: Option<&dyn Embedder>,
    cfg: &GroundingConfig,
) -> Result<Vec<SentenceSupport>> {
    struct Pending {
        start: usize,
        end: usize,
        text: String,
        claim: String,
        cites: Vec<u32>,
    }
    let mut pending = Vec::new();
    for s in sentences(answer) {
        let mut cites: Vec<u32> = Vec::new();
        for m in citations::parse(s.text) {
            for n in m.numbers {
                if n >= 1 && (n as usize) <= sources.len() && !cites.contains(&n) {
                    cites.push(n);
                }
            }
        }
        if cites.is_empty() {
            continue;
        }
        pending.push(Pending {
            start: s.start,
            end: s.end,
            text: s.text.to_string(),
            claim: strip_citations(s.text).trim().to_string(),
            cites,
        });
    }
    if pending.is_empty() {
        return Ok(Vec::new());
    }

    // Embed claims and the sentences of every cited passage in one batch.
    let mut cited: Vec<u32> = pending.iter().flat_map(|p| p.cites.clone()).collect();
    cited.sort_unstable();
    cited.dedup();
    let passage_units: Vec<(u32, Vec<String>)> = cited
        .iter()
        .map(|&n| {
            let p = &sources[n as usize - 1].passage;
            let mut units: Vec<String> = sentences(p)
                .iter()
                .map(|s| s.text.to_string())
                .filter(|t| t.len() > 15)
                .collect();
            if units.is_empty() {
                units.push(p.clone());
            }
            (n, units)
        })
        .collect();
    // (claim vectors, per cited source: its sentence vectors)
    type Vectors = (Vec<Vec<f32>>, Vec<(u32, Vec<Vec<f32>>)>);
    let sims: Option<Vectors> = match embedder {
        None => None,
        Some(e) => {
            let mut texts: Vec<&str> = pending.iter().map(|p| p.claim.as_str()).collect();
            for (_, units) in &passage_units {
                texts.extend(units.iter().map(String::as_str));
            }
            let mut vecs = e.embed(&texts)?.into_iter();
            let claims: Vec<Vec<f32>> = vecs.by_ref().take(pending.len()).collect();
            let per: Vec<(u32, Vec<Vec<f32>>)> = passage_units
                .iter()
                .map(|(n, units)| (*n, vecs.by_ref().take(units.len()).collect()))
                .collect();
            Some((claims, per))
        }
    };

    let mut out = Vec::with_capacity(pending.len());
    for (i, p) in pending.into_iter().enumerate() {
        let claim_words = content_words(&p.claim);
        let mut scores = Vec::new();
        for &n in &p.cites {
            let evidence = content_words(&sources[n as usize - 1].passage);
            let overlap = lexical_overlap(&claim_words, &evidence);
            let sim = sims.as_ref().map(|(claims, per)| {
                let units = &per
                    .iter()
                    .find(|(m, _)| *m == n)
                    .expect("every cited n embedded")
                    .1;
                units
                    .iter()
                    .map(|u| dot(&claims[i], u))
                    .fold(f32::MIN, f32::max)
            });
            let ok = cfg.supports(sim, overlap);
            scores.push((n, sim, overlap, ok));
        }
        let supported = scores.iter().any(|s| s.3);
        out.push(SentenceSupport {
            start: p.start,
            end: p.end,
            text: p.text,
            cites: p.cites,
            scores,
            supported,
        });
    }
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::retrieve::tests::src;

    /// A deterministic bag-of-words embedder for tests: hashed content words, L2-normalised.
    pub(crate) struct BowEmbedder;
    impl Embedder for BowEmbedder {
        fn name(&self) -> &str {
            "bow-test"
        }
        fn dim(&self) -> usize {
            256
        }
        fn max_tokens(&self) -> usize {
            512
        }
        fn count_tokens(&self, text: &str) -> usize {
            text.split_whitespace().count()
        }
        fn embed(&self, texts: &[&str]) -> overseer_index::Result<Vec<Vec<f32>>> {
            Ok(texts
                .iter()
                .map(|t| {
                    let mut v = vec![0f32; 256];
                    for w in content_words(t) {
                        let h = w.bytes().fold(1469598103934665603u64, |h, b| {
                            (h ^ b as u64).wrapping_mul(1099511628211)
                        });
                        v[(h % 256) as usize] += 1.0;
                    }
                    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-9);
                    v.iter().map(|x| x / norm).collect()
                })
                .collect())
        }
    }

    fn sources() -> Vec<Source> {
        vec![
            src(
                "a",
                "Gradient hacking",
                "Gradient hacking is when a deceptive model deliberately shapes its own training \
                 gradients. It could protect mesa-objectives from being changed by SGD.",
            ),
            src(
                "b",
                "Compute trends",
                "Training compute for the largest models doubled every few months.",
            ),
        ]
    }

    #[test]
    fn supported_and_unsupported_sentences() {
        let answer = "Gradient hacking is when a deceptive model shapes its training gradients [1]. \
                      Bananas are yellow fruit grown in tropical regions [2]. No citation here.";
        for emb in [None, Some(&BowEmbedder as &dyn Embedder)] {
            let r = check(answer, &sources(), emb, &GroundingConfig::default()).unwrap_or_default();
            assert_eq!(r.len(), 2, "uncited sentences are not checked");
            assert!(r[0].supported, "{:?}", r[0]);
            assert_eq!(r[0].cites, vec![1]);
            assert!(!r[1].supported, "{:?}", r[1]);
            assert_eq!(&answer[r[1].start..r[1].end], r[1].text);
            assert_eq!(r[0].scores[0].1.is_some(), emb.is_some());
        }
    }

    #[test]
    fn a_sentence_citing_two_sources_needs_one_to_support_it() {
        let answer = "Compute for the largest models doubled every few months [1, 2].";
        let r = check(answer, &sources(), None, &GroundingConfig::default()).unwrap_or_default();
        assert!(r[0].supported);
        assert!(!r[0].scores[0].3 && r[0].scores[1].3, "{:?}", r[0].scores);
    }
}
