//! Which topic an item belongs to: zero-shot, by cosine similarity between the item's
//! document vector (the mean of its chunk vectors, as the index stores them) and each
//! topic's vectors (its title and description, and its examples when it has them), in
//! the index's own embedding space. No labelled data is needed, so a user's own
//! taxonomy works the same way as the built-in one.

use overseer_index::Embedder;

use crate::Result;
use crate::digest::Taxonomy;
use crate::text::dot;

/// Settings of the classifier (defaults tuned on the newsletter dev split, see
/// `docs/DIGEST.md`).
#[derive(Debug, Clone, Copy)]
pub struct ClassifyConfig {
    /// Best-topic similarity under which an item goes to "Other".
    pub min_similarity: f32,
    /// Further topics within this much similarity of the primary become secondary.
    pub secondary_within: f32,
    /// At most this many secondary topics.
    pub max_secondary: usize,
    /// Softmax temperature that turns similarities into a confidence.
    pub temperature: f32,
    /// Confidence under which an item is marked as uncertain.
    pub low_confidence: f32,
    /// Weight of the examples' centroid against the description (0..1).
    pub example_weight: f32,
}

impl Default for ClassifyConfig {
    fn default() -> Self {
        Self {
            min_similarity: 0.3,
            secondary_within: 0.03,
            max_secondary: 2,
            temperature: 0.03,
            low_confidence: 0.4,
            example_weight: 0.6,
        }
    }
}

/// Where one item was filed.
#[derive(Debug, Clone, PartialEq)]
pub struct Classification {
    /// Index of the primary topic in the taxonomy, `None` for "Other".
    pub topic: Option<usize>,
    /// Secondary topics, most similar first.
    pub secondary: Vec<usize>,
    /// Probability of the primary topic under a softmax over all topics; for "Other",
    /// how far the best topic's similarity is under the floor (0.1 under it or more: 1).
    pub confidence: f32,
    /// Cosine similarity to the primary (or best) topic: the item's relevance to it.
    pub similarity: f32,
    /// Whether the confidence is under [`ClassifyConfig::low_confidence`].
    pub uncertain: bool,
}

/// A taxonomy embedded once, ready to classify document vectors.
pub struct Classifier {
    topics: Vec<Vec<f32>>,
    cfg: ClassifyConfig,
}

impl std::fmt::Debug for Classifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Classifier")
            .field("topics", &self.topics.len())
            .field("cfg", &self.cfg)
            .finish()
    }
}

/// The text a topic's description vector is made from.
pub(crate) fn topic_text(t: &crate::digest::Topic) -> String {
    format!("{}. {}", t.title, t.description)
}

fn normalize(v: &mut [f32]) {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if n > 0.0 {
        v.iter_mut().for_each(|x| *x /= n);
    }
}

impl Classifier {
    /// Embed every topic of `taxonomy` with `embedder` (the index's).
    ///
    /// Errors: the embedder's.
    pub fn new(
        taxonomy: &Taxonomy,
        embedder: &dyn Embedder,
        cfg: ClassifyConfig,
    ) -> Result<Classifier> {
        let texts: Vec<String> = taxonomy.topics.iter().map(topic_text).collect();
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let desc = embedder.embed(&refs)?;
        let mut topics = Vec::with_capacity(desc.len());
        for (t, mut d) in taxonomy.topics.iter().zip(desc) {
            if !t.examples.is_empty() && cfg.example_weight > 0.0 {
                let refs: Vec<&str> = t.examples.iter().map(String::as_str).collect();
                let ex = embedder.embed(&refs)?;
                let mut c = vec![0f32; d.len()];
                for e in &ex {
                    c.iter_mut().zip(e).for_each(|(a, x)| *a += x);
                }
                normalize(&mut c);
                let w = cfg.example_weight.clamp(0.0, 1.0);
                d.iter_mut()
                    .zip(&c)
                    .for_each(|(a, x)| *a = (1.0 - w) * *a + w * x);
            }
            normalize(&mut d);
            topics.push(d);
        }
        Ok(Classifier { topics, cfg })
    }

    /// The settings in use.
    pub fn config(&self) -> &ClassifyConfig {
        &self.cfg
    }

    /// Cosine similarity of a unit `vector` to each topic, in taxonomy order.
    pub fn similarities(&self, vector: &[f32]) -> Vec<f32> {
        self.topics.iter().map(|t| dot(t, vector)).collect()
    }

    /// File a document vector (unit length, the index's space).
    pub fn classify(&self, vector: &[f32]) -> Classification {
        let sims = self.similarities(vector);
        let mut order: Vec<usize> = (0..sims.len()).collect();
        order.sort_by(|&a, &b| sims[b].total_cmp(&sims[a]));
        let best = order[0];
        let t = self.cfg.temperature.max(1e-4);
        let exps: Vec<f32> = sims.iter().map(|s| ((s - sims[best]) / t).exp()).collect();
        let z: f32 = exps.iter().sum();
        let p_best = exps[best] / z;
        if sims[best] < self.cfg.min_similarity {
            // How far under the floor the best topic is: 0.1 under it or more is sure.
            let confidence = ((self.cfg.min_similarity - sims[best]) / 0.1).clamp(0.0, 1.0);
            return Classification {
                topic: None,
                secondary: Vec::new(),
                confidence,
                similarity: sims[best],
                uncertain: confidence < self.cfg.low_confidence,
            };
        }
        let secondary = order[1..]
            .iter()
            .copied()
            .filter(|&i| {
                sims[i] >= self.cfg.min_similarity
                    && sims[best] - sims[i] <= self.cfg.secondary_within
            })
            .take(self.cfg.max_secondary)
            .collect();
        Classification {
            topic: Some(best),
            secondary,
            confidence: p_best,
            similarity: sims[best],
            uncertain: p_best < self.cfg.low_confidence,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Topic;

    /// A toy embedder: one dimension per keyword.
    struct Words;
    const KEYS: [&str; 4] = ["jailbreak", "scaling", "governance", "cooking"];
    impl Embedder for Words {
        fn name(&self) -> &str {
            "words"
        }
        fn dim(&self) -> usize {
            KEYS.len()
        }
        fn max_tokens(&self) -> usize {
            512
        }
        fn count_tokens(&self, t: &str) -> usize {
            t.split_whitespace().count()
        }
        fn embed(&self, texts: &[&str]) -> overseer_index::Result<Vec<Vec<f32>>> {
            Ok(texts
                .iter()
                .map(|t| {
                    let t = t.to_lowercase();
                    let mut v: Vec<f32> =
                        KEYS.iter().map(|k| t.matches(k).count() as f32).collect();
                    normalize(&mut v);
                    v
                })
                .collect())
        }
    }

    fn topic(id: &str, d: &str) -> Topic {
        Topic {
            id: id.into(),
            category: String::new(),
            title: id.into(),
            description: d.into(),
            examples: Vec::new(),
        }
    }

    #[test]
    fn files_items_by_nearest_topic_and_unrelated_ones_under_other() {
        let tax = Taxonomy {
            topics: vec![
                topic("jb", "jailbreak attacks"),
                topic("sc", "scaling laws"),
                topic("gov", "governance and policy"),
            ],
        };
        let c = Classifier::new(&tax, &Words, ClassifyConfig::default()).unwrap();
        let v = |t: &str| Words.embed(&[t]).unwrap().remove(0);
        let r = c.classify(&v("a new jailbreak"));
        assert_eq!(r.topic, Some(0));
        assert!(r.confidence > 0.9 && !r.uncertain, "{r:?}");
        // Half jailbreak, half governance: both named, the confidence says it is split.
        let r = c.classify(&v("jailbreak governance"));
        assert!(matches!(r.topic, Some(0) | Some(2)));
        assert_eq!(r.secondary.len(), 1);
        assert!(r.confidence < 0.6, "{r:?}");
        assert_eq!(r.uncertain, r.confidence < c.config().low_confidence);
        let r = c.classify(&v("cooking pasta"));
        assert_eq!(r.topic, None);
    }
}
