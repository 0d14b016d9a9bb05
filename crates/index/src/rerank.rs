//! Second stage of hybrid search: re-score the top fused documents with evidence the
//! first stage cannot see. Fusion ranks whole chunks (one BM25 score, one chunk vector);
//! here each candidate's best passage is looked at sentence by sentence, its title is
//! compared with the query, and passages that are about the document rather than its
//! content (prefaces, tables of contents, link lists, "I'm not summarising this" notes)
//! are demoted. Uses only the index's own embedder: no language model.
//!
//! The score of a candidate is
//! `fused + sentence · max_s cos(q, s) + title · cos(q, title) + title_words · overlap
//! - quality · penalty`, where `fused` is the fusion score min-max normalised over the
//! candidates, `s` runs over the passage's sentences, `overlap` is the share of the
//! title's content words that the query contains, and `penalty` in `[0, 1]` comes from
//! [`quality_penalty`]. The weights were chosen on dev queries (see [`Rerank`]).

use serde::{Deserialize, Serialize};

/// Reranking of hybrid document results ([`crate::SearchRequest::rerank`]).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Rerank {
    /// Fused documents re-scored (0 turns reranking off). Documents below keep their
    /// fused order after the re-scored ones.
    pub depth: usize,
    /// Weight of the best sentence's cosine similarity with the query.
    pub sentence: f32,
    /// Weight of the cosine similarity of the title (and heading path) with the query.
    pub title: f32,
    /// Weight of the share of the title's content words found in the query.
    pub title_words: f32,
    /// Weight of the passage-quality penalty.
    pub quality: f32,
}

impl Rerank {
    /// No reranking: results in fused order.
    pub const OFF: Rerank = Rerank {
        depth: 0,
        sentence: 0.0,
        title: 0.0,
        title_words: 0.0,
        quality: 0.0,
    };

    pub fn is_off(&self) -> bool {
        self.depth == 0
    }
}

impl Default for Rerank {
    /// [`Rerank::OFF`]: reranking did not help on held-out queries (see the module docs).
    fn default() -> Self {
        Rerank::OFF
    }
}

/// Tuned reranking (opt-in): the best mean MRR@10 over the dev halves of eval/retrieval
/// and of the known-item set in a grid of depth 5/10/20 and weights (sentence 0-2, title
/// 0-1, title words 0-0.4, quality 0-1), with fusion at [`crate::DEFAULT_ALPHA`].
pub const DEFAULT_RERANK: Rerank = Rerank {
    depth: 20,
    sentence: 0.5,
    title: 0.0,
    title_words: 0.2,
    quality: 0.2,
};

/// Most sentences of one passage that are embedded.
pub(crate) const MAX_SENTENCES: usize = 12;
/// Sentences shorter than this (in words) are not scored on their own.
const MIN_SENTENCE_WORDS: usize = 4;

/// What the reranker measured on one candidate (for tuning: `Index::rerank_candidates`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RerankFeatures {
    /// Document id.
    pub id: String,
    /// Fusion score, min-max normalised over the candidates (best 1).
    pub fused: f32,
    /// Highest cosine similarity of a passage sentence with the query.
    pub sentence: f32,
    /// Cosine similarity of the title (and heading path) with the query.
    pub title: f32,
    /// Share of the title's content words that the query contains.
    pub title_words: f32,
    /// [`quality_penalty`] of the passage.
    pub penalty: f32,
}

impl RerankFeatures {
    pub fn score(&self, w: &Rerank) -> f32 {
        self.fused
            + w.sentence * self.sentence
            + w.title * self.title
            + w.title_words * self.title_words
            - w.quality * self.penalty
    }
}

/// Reorder `docs` (document, row, fused score; best first) by rerank score: the first
/// `features.len()` of them (whose features these are, in order) get `features[i].score(w)`
/// and are sorted by it (ties keep the fused order); the rest follow in fused order,
/// their score that of the candidates' normalisation (`(s - lo) / (hi - lo)`, at most
/// 0) capped at the lowest reranked score, so scores never increase down the list.
pub(crate) fn reorder(docs: &mut [(u32, u32, f32)], features: &[RerankFeatures], w: &Rerank) {
    let n = features.len().min(docs.len());
    if n == 0 {
        return;
    }
    let (lo, hi) = docs[..n]
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), d| {
            (lo.min(d.2), hi.max(d.2))
        });
    let mut top: Vec<((u32, u32, f32), f32)> = docs[..n]
        .iter()
        .zip(features)
        .map(|(d, f)| (*d, f.score(w)))
        .collect();
    top.sort_by(|a, b| b.1.total_cmp(&a.1));
    let mut floor = f32::INFINITY;
    for (slot, ((d, row, _), score)) in docs.iter_mut().zip(top) {
        *slot = (d, row, score);
        floor = floor.min(score);
    }
    for d in &mut docs[n..] {
        let norm = if hi > lo { (d.2 - lo) / (hi - lo) } else { 0.0 };
        d.2 = norm.min(floor);
    }
}

/// The sentences of `text` worth scoring: unicode sentence boundaries, also cut at
/// line breaks (list items, headings), at least [`MIN_SENTENCE_WORDS`] words, the first
/// [`MAX_SENTENCES`] of them. A passage with no such sentence gives itself.
pub(crate) fn sentences(text: &str) -> Vec<&str> {
    use unicode_segmentation::UnicodeSegmentation;
    let out: Vec<&str> = text
        .lines()
        .flat_map(|l| l.unicode_sentences())
        .map(str::trim)
        .filter(|s| s.split_whitespace().count() >= MIN_SENTENCE_WORDS)
        .take(MAX_SENTENCES)
        .collect();
    if out.is_empty() && !text.trim().is_empty() {
        vec![text.trim()]
    } else {
        out
    }
}

/// Phrases by which a passage says it is not the content itself (lowercase, straight
/// apostrophes).
const META_NOTES: &[&str] = &[
    "not going to summari",
    "not summari",
    "won't summari",
    "will not summari",
    "haven't read",
    "have not read",
    "this is a preface",
    "read it if you're going to read",
    "table of contents",
    "in this newsletter",
];

/// How much `text` looks like a passage that is not content, in `[0, 1]`:
/// - a note that the text is not a summary or is a preface (1 for a short passage,
///   0.4 in a long one, where it is probably an aside),
/// - links: the share of words that are URLs or markdown links, from 10% (0) to 30% (1),
/// - lists of short lines (tables of contents, link lists): of at least 5 non-empty
///   lines, the share of lines of at most 8 words not ending a sentence, from 50% (0)
///   to 80% (1),
/// - very short passages: up to 0.5 below 25 words.
///
/// The parts add up, capped at 1.
pub fn quality_penalty(text: &str) -> f32 {
    let words: Vec<&str> = text.split_whitespace().collect();
    if words.is_empty() {
        return 1.0;
    }
    let n = words.len() as f32;
    let lower = text.to_lowercase().replace(['\u{2019}', '\u{2018}'], "'");
    let mut p = 0.0f32;
    if META_NOTES.iter().any(|m| lower.contains(m)) {
        p += if words.len() < 120 { 1.0 } else { 0.4 };
    }
    let links = words
        .iter()
        .filter(|w| w.contains("http://") || w.contains("https://") || w.contains("]("))
        .count() as f32;
    p += ((links / n - 0.1) / 0.2).clamp(0.0, 1.0);
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    if lines.len() >= 5 {
        let short = lines
            .iter()
            .filter(|l| {
                l.split_whitespace().count() <= 8 && !l.ends_with(['.', '?', '!', ':', ';'])
            })
            .count() as f32;
        p += ((short / lines.len() as f32 - 0.5) / 0.3).clamp(0.0, 1.0);
    }
    if words.len() < 25 {
        p += 0.5 * (25.0 - n) / 25.0;
    }
    p.min(1.0)
}

/// Share of the distinct content words of `title` (stemmed, stopwords removed) that
/// are among `query_words` (same analysis); 0 for a title without content words.
pub(crate) fn title_overlap(
    query_words: &rustc_hash::FxHashSet<String>,
    title_words: &rustc_hash::FxHashSet<String>,
) -> f32 {
    if title_words.is_empty() {
        return 0.0;
    }
    let hit = title_words
        .iter()
        .filter(|w| query_words.contains(*w))
        .count();
    hit as f32 / title_words.len() as f32
}

/// Cosine of two L2-normalised vectors.
pub(crate) fn cos(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Min-max normalise `scores` to `[0, 1]` (all 1 when they are equal).
pub(crate) fn min_max(scores: &[f32]) -> Vec<f32> {
    let (lo, hi) = scores
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), s| {
            (lo.min(*s), hi.max(*s))
        });
    scores
        .iter()
        .map(|s| if hi > lo { (s - lo) / (hi - lo) } else { 1.0 })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentences_split_and_skip_fragments() {
        let t = "Reward hacking is common. Short one.\n- a list item that is long enough\nOk";
        assert_eq!(
            sentences(t),
            vec![
                "Reward hacking is common.",
                "- a list item that is long enough"
            ]
        );
        assert_eq!(sentences("Too short."), vec!["Too short."]);
        assert!(sentences("  ").is_empty());
        let many = "This sentence has five words. ".repeat(30);
        assert_eq!(sentences(&many).len(), MAX_SENTENCES);
    }

    #[test]
    fn quality_penalty_demotes_non_content() {
        let content = "This paper shows that reward models trained on human comparisons can be \
                       exploited by the policy that optimises them, and proposes a KL penalty \
                       that keeps the policy close to the supervised model during training.";
        assert_eq!(quality_penalty(content), 0.0);
        let note = "Exactly what it sounds like. I\u{2019}m not going to summarize it because \
                    it's long and covers a lot of ground, but I recommend it.";
        assert_eq!(quality_penalty(note), 1.0);
        let preface = "This is a preface, read it if you're going to read the full posts, but \
                       not if you're only going to read these summaries.";
        assert_eq!(quality_penalty(preface), 1.0);
        let toc = "Contents\n1. Introduction\n2. Background\n3. Method\n4. Results\n5. Discussion";
        assert!(quality_penalty(toc) >= 0.99, "{}", quality_penalty(toc));
        let links = "See also: [one](https://a.org/1), [two](https://a.org/2), https://b.org/3, \
                     https://c.org/4, [five](https://d.org/5) and the rest of the sequence's \
                     posts listed in the index page.";
        assert!(quality_penalty(links) > 0.8, "{}", quality_penalty(links));
        // One aside in a long summary is a small penalty, not a verdict.
        let long = format!("{content} {content} {content} {content} I haven't read the appendix.");
        assert!((quality_penalty(&long) - 0.4).abs() < 1e-6);
        assert_eq!(quality_penalty(""), 1.0);
    }

    #[test]
    fn title_overlap_is_share_of_title_words() {
        let set = |w: &[&str]| w.iter().map(|s| s.to_string()).collect();
        let q = set(&["reward", "model", "hack"]);
        assert_eq!(title_overlap(&q, &set(&["reward", "hack"])), 1.0);
        assert_eq!(
            title_overlap(&q, &set(&["reward", "game", "agent", "off"])),
            0.25
        );
        assert_eq!(title_overlap(&q, &set(&[])), 0.0);
    }

    fn feat(fused: f32, sentence: f32, penalty: f32) -> RerankFeatures {
        RerankFeatures {
            id: String::new(),
            fused,
            sentence,
            title: 0.0,
            title_words: 0.0,
            penalty,
        }
    }

    #[test]
    fn reorder_rescores_the_candidates_only() {
        // Fused: docs 1..=4 with scores 4, 3, 2, 1; the top 3 are candidates.
        let mut docs = vec![(1, 10, 4.0), (2, 20, 3.0), (3, 30, 2.0), (4, 40, 1.0)];
        let w = Rerank {
            depth: 3,
            sentence: 1.0,
            title: 0.0,
            title_words: 0.0,
            quality: 2.0,
        };
        // Doc 1 is a "not summarising" note, doc 3 has the best sentence.
        let f = [
            feat(1.0, 0.3, 1.0),
            feat(0.5, 0.4, 0.0),
            feat(0.0, 0.95, 0.0),
        ];
        reorder(&mut docs, &f, &w);
        let order: Vec<u32> = docs.iter().map(|d| d.0).collect();
        assert_eq!(order, vec![3, 2, 1, 4]);
        assert_eq!(docs[0].1, 30, "rows travel with their documents");
        assert!((docs[0].2 - 0.95).abs() < 1e-6);
        assert!(docs.windows(2).all(|p| p[0].2 >= p[1].2), "{docs:?}");
        // Rerank::OFF weights keep the fused order.
        let mut docs2 = vec![(1, 10, 4.0), (2, 20, 3.0), (3, 30, 2.0), (4, 40, 1.0)];
        reorder(&mut docs2, &f, &Rerank::OFF);
        assert_eq!(
            docs2.iter().map(|d| d.0).collect::<Vec<_>>(),
            vec![1, 2, 3, 4]
        );
    }

    #[test]
    fn score_combines_weights() {
        let f = RerankFeatures {
            id: "d".into(),
            fused: 0.5,
            sentence: 0.6,
            title: 0.4,
            title_words: 1.0,
            penalty: 1.0,
        };
        let w = Rerank {
            depth: 10,
            sentence: 1.0,
            title: 0.5,
            title_words: 0.25,
            quality: 2.0,
        };
        assert!((f.score(&w) - (0.5 + 0.6 + 0.2 + 0.25 - 2.0)).abs() < 1e-6);
        assert_eq!(f.score(&Rerank::OFF), 0.5);
        assert_eq!(min_max(&[2.0, 1.0, 3.0]), vec![0.5, 0.0, 1.0]);
        assert_eq!(min_max(&[2.0, 2.0]), vec![1.0, 1.0]);
    }
}
