//! Evidence, not documents: from the retrieved passages, the few sentences that bear
//! on the question. A small model given whole passages pastes them; given a handful of
//! relevant sentences it has less to copy, fewer tokens to read and nothing off-topic
//! to wander into.
//!
//! Each candidate sentence is scored by its embedding similarity to the question
//! (lexical overlap without an embedder), plus a little lexical overlap, minus a
//! penalty for sentences about the document rather than its subject (prefaces,
//! "I'm not summarising this", link lists). Sentences that address the assistant
//! instead of stating something (prompt injections, see [`crate::injection`]) are
//! never candidates. Sentences are then picked greedily with
//! maximal marginal relevance (a sentence close to one already picked is worth less),
//! at most a few per document and within a character budget. The result is grouped
//! by document, best document first, sentences in reading order: evidence item `i`
//! is cited as `[i + 1]`.

use overseer_index::Embedder;

use crate::Result;
use crate::injection::{is_instruction, visible};
use crate::retrieve::Source;
use crate::text::{content_words, dot, lexical_overlap, sentences};

/// How much evidence to give the model.
#[derive(Debug, Clone)]
pub struct EvidenceConfig {
    /// Documents whose passages are searched for evidence.
    pub max_documents: usize,
    /// Sentences at most, over all documents.
    pub max_sentences: usize,
    /// Sentences at most from one document.
    pub per_document: usize,
    /// Characters of evidence at most (sentences only, without numbering).
    pub max_chars: usize,
    /// Weight of the similarity to sentences already picked (0: plain ranking).
    pub diversity: f32,
    /// A sentence scoring below this share of the best sentence's score is dropped.
    pub relative_floor: f32,
}

impl Default for EvidenceConfig {
    fn default() -> Self {
        Self {
            max_documents: 5,
            max_sentences: 8,
            per_document: 5,
            max_chars: 1500,
            diversity: 0.3,
            relative_floor: 0.45,
        }
    }
}

/// Evidence from one document: the passage it came from and the sentences picked.
#[derive(Debug, Clone, PartialEq)]
pub struct Evidence {
    pub source: Source,
    /// Picked sentences of the passage, in reading order.
    pub sentences: Vec<String>,
    /// Question similarity of each picked sentence.
    pub scores: Vec<f32>,
    /// Embedding of each picked sentence (empty without an embedder): the citation
    /// step compares answer sentences with them.
    pub vectors: Vec<Vec<f32>>,
}

impl Evidence {
    /// The sentences as one text.
    pub fn text(&self) -> String {
        self.sentences.join(" ")
    }
}

/// Shortest and longest sentence worth giving as evidence (chars).
const MIN_CHARS: usize = 30;
const MAX_CHARS: usize = 600;

/// Phrases of sentences about a text rather than its subject.
const META: &[&str] = &[
    "preface",
    "table of contents",
    "not summariz",
    "not summaris",
    "won't summariz",
    "won't summaris",
    "this newsletter",
    "subscribe",
    "read more",
    "click here",
    "http://",
    "https://",
    "www.",
    "read it if",
];

/// A penalty in [0, 0.3] for sentences that talk about the text itself.
fn meta_penalty(s: &str) -> f32 {
    let l = s.to_lowercase();
    let hits = META.iter().filter(|m| l.contains(*m)).count();
    (hits as f32 * 0.1).min(0.3)
}

/// Whether a sentence is prose worth quoting: mostly letters, not a list of names.
fn is_prose(s: &str) -> bool {
    let n = s.chars().count();
    if !(MIN_CHARS..=MAX_CHARS).contains(&n) {
        return false;
    }
    let letters = s.chars().filter(|c| c.is_alphabetic()).count();
    let spaces = s.chars().filter(|c| c.is_whitespace()).count();
    letters * 10 >= n * 6 && spaces >= 4
}

struct Candidate {
    doc: usize,
    /// Position in the document's passage (bytes), for reading order.
    pos: usize,
    text: String,
    score: f32,
    vec: Option<Vec<f32>>,
    words: std::collections::HashSet<String>,
}

/// Pick evidence for `question` from `hits` (ranked passages, several per document
/// possible). `question_vec` is the question's embedding when `embedder` is given.
pub(crate) fn select(
    question: &str,
    hits: &[Source],
    embedder: Option<&dyn Embedder>,
    question_vec: Option<&[f32]>,
    cfg: &EvidenceConfig,
) -> Result<Vec<Evidence>> {
    // Documents in rank order, each with its passages (best first, at most two).
    let mut docs: Vec<(Source, Vec<&Source>)> = Vec::new();
    for h in hits {
        if h.passage.trim().is_empty() {
            continue;
        }
        // The corpus holds some documents twice under two ids (a post and its
        // newsletter entry keep their own ids; exact copies share the title).
        let same = |s: &Source| s.id == h.id || s.title.trim().eq_ignore_ascii_case(h.title.trim());
        match docs.iter().position(|(s, _)| same(s)) {
            Some(d) if docs[d].1.len() < 2 => docs[d].1.push(h),
            Some(_) => {}
            None if docs.len() < cfg.max_documents => docs.push((h.clone(), vec![h])),
            None => {}
        }
    }
    let qwords = content_words(question);
    let mut cands: Vec<Candidate> = Vec::new();
    for (d, (_, passages)) in docs.iter().enumerate() {
        for (pi, p) in passages.iter().enumerate() {
            for s in sentences(&p.passage) {
                let text = evidence_text(s.text);
                if !is_prose(&text)
                    || is_instruction(&text)
                    || cands.iter().any(|c| c.doc == d && c.text == text)
                {
                    continue;
                }
                cands.push(Candidate {
                    doc: d,
                    pos: pi * 1_000_000 + s.start,
                    words: content_words(&text),
                    text,
                    score: 0.0,
                    vec: None,
                });
            }
        }
    }
    if cands.is_empty() {
        return Ok(Vec::new());
    }
    if let (Some(e), Some(q)) = (embedder, question_vec) {
        let texts: Vec<&str> = cands.iter().map(|c| c.text.as_str()).collect();
        let vecs = e.embed(&texts)?;
        for (c, v) in cands.iter_mut().zip(vecs) {
            c.score = dot(q, &v);
            c.vec = Some(v);
        }
    } else {
        for c in &mut cands {
            c.score = lexical_overlap(&qwords, &c.words);
        }
    }
    for c in &mut cands {
        c.score += 0.15 * lexical_overlap(&qwords, &c.words) - meta_penalty(&c.text);
    }
    let best = cands.iter().map(|c| c.score).fold(f32::MIN, f32::max);
    let floor = best * cfg.relative_floor;

    // Greedy maximal marginal relevance.
    let mut picked: Vec<usize> = Vec::new();
    let mut per_doc = vec![0usize; docs.len()];
    let mut chars = 0;
    while picked.len() < cfg.max_sentences {
        let mut choice: Option<(usize, f32)> = None;
        for (i, c) in cands.iter().enumerate() {
            if picked.contains(&i)
                || per_doc[c.doc] >= cfg.per_document
                || c.score < floor
                || chars + c.text.len() > cfg.max_chars
            {
                continue;
            }
            let redundancy = picked
                .iter()
                .map(|&j| similarity(c, &cands[j]))
                .fold(0.0, f32::max);
            let value = c.score - cfg.diversity * redundancy;
            if choice.is_none_or(|(_, v)| value > v) {
                choice = Some((i, value));
            }
        }
        let Some((i, _)) = choice else { break };
        chars += cands[i].text.len();
        per_doc[cands[i].doc] += 1;
        picked.push(i);
    }

    // Group by document, documents by their best picked sentence, reading order inside.
    let mut groups: Vec<(usize, f32, Vec<usize>)> = Vec::new();
    for &i in &picked {
        let c = &cands[i];
        match groups.iter_mut().find(|g| g.0 == c.doc) {
            Some(g) => {
                g.1 = g.1.max(c.score);
                g.2.push(i);
            }
            None => groups.push((c.doc, c.score, vec![i])),
        }
    }
    groups.sort_by(|a, b| b.1.total_cmp(&a.1));
    Ok(groups
        .into_iter()
        .map(|(d, _, mut idx)| {
            idx.sort_by_key(|&i| cands[i].pos);
            Evidence {
                source: docs[d].0.clone(),
                sentences: idx.iter().map(|&i| cands[i].text.clone()).collect(),
                scores: idx.iter().map(|&i| cands[i].score).collect(),
                vectors: idx.iter().filter_map(|&i| cands[i].vec.clone()).collect(),
            }
        })
        .collect())
}

fn similarity(a: &Candidate, b: &Candidate) -> f32 {
    match (&a.vec, &b.vec) {
        (Some(x), Some(y)) => dot(x, y),
        _ => lexical_overlap(&a.words, &b.words),
    }
}

/// A sentence as the model and the reader see it: invisible characters removed, the
/// source's own citation marks (`[7]`, `[3, 4]`: numbers of its bibliography, which
/// would read as ours) dropped, whitespace collapsed.
fn evidence_text(sentence: &str) -> String {
    let text = crate::quality::strip_citations(&visible(sentence));
    let mut out = text.split_whitespace().collect::<Vec<_>>().join(" ");
    for p in [" .", " ,", " ;", " :", " !", " ?"] {
        out = out.replace(p, &p[1..]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grounding::tests::BowEmbedder;
    use crate::retrieve::tests::src;

    fn hits() -> Vec<Source> {
        vec![
            src(
                "gh",
                "Gradient hacking",
                "This is a preface, read it if you're going to read the full posts. Gradient \
                 hacking is when a deceptive model deliberately shapes its own training \
                 gradients. The weather in the office was pleasant all week long. Gradient \
                 hacking could let a model protect its objective from being changed by training.",
            ),
            src(
                "gh",
                "Gradient hacking",
                "A second passage notes that gradient hacking needs a model that models its \
                 own training process in detail.",
            ),
            src(
                "x",
                "Other",
                "Reward models are trained on human comparisons of pairs of outputs in RLHF.",
            ),
        ]
    }

    #[test]
    fn picks_relevant_sentences_grouped_by_document() {
        let q = "What is gradient hacking and why is it dangerous?";
        for emb in [None, Some(&BowEmbedder as &dyn Embedder)] {
            let qv = emb.map(|e| e.embed(&[q]).unwrap_or_default().remove(0));
            let ev = select(q, &hits(), emb, qv.as_deref(), &EvidenceConfig::default())
                .unwrap_or_default();
            assert!(!ev.is_empty());
            assert_eq!(ev[0].source.id, "gh", "one item per document, best first");
            assert!(ev.iter().filter(|e| e.source.id == "gh").count() == 1);
            let text = ev[0].text();
            assert!(text.contains("shapes its own training"), "{text}");
            assert!(
                !text.contains("weather"),
                "off-topic sentence dropped: {text}"
            );
            assert!(!text.contains("preface"), "meta sentence dropped: {text}");
            // Reading order inside a document.
            let a = text.find("shapes its own").unwrap_or(usize::MAX);
            let b = text.find("protect its objective").unwrap_or(0);
            assert!(a < b || b == 0, "{text}");
        }
    }

    #[test]
    fn a_sources_own_citation_marks_are_not_evidence() {
        let hits = vec![src(
            "ls",
            "Lindqvist score",
            "The Lindqvist alignment score rates answers by agreement with a panel [7]. \
             Critics note the panel agrees with itself only moderately [12, 31].",
        )];
        let q = "What is the Lindqvist alignment score?";
        let ev = select(q, &hits, None, None, &EvidenceConfig::default()).unwrap_or_default();
        let text = ev.iter().map(Evidence::text).collect::<String>();
        assert!(text.contains("agreement with a panel."), "{text}");
        assert!(!text.contains('['), "{text}");
    }

    #[test]
    fn budget_and_caps_hold() {
        let cfg = EvidenceConfig {
            max_sentences: 2,
            per_document: 1,
            ..EvidenceConfig::default()
        };
        let q = "gradient hacking training model";
        let ev = select(q, &hits(), None, None, &cfg).unwrap_or_default();
        let n: usize = ev.iter().map(|e| e.sentences.len()).sum();
        assert!(n <= 2);
        assert!(ev.iter().all(|e| e.sentences.len() <= 1));
        assert!(
            select(q, &[], None, None, &cfg)
                .unwrap_or_default()
                .is_empty()
        );
    }
}
