//! Answer evaluation: is each answer an answer? Scores one answer against its question
//! (copy ratio, key-point recall, citations, supported share, junk, abstention, words,
//! timings) and summarises a set, for `overseer eval answers` and anything else that
//! evaluates the assistant; `eval/answers/README.md` describes the question file.
//! Beside it: retrieval evaluation in `overseer_index::eval`, digest classification in
//! [`crate::digest::eval`].

use serde::{Deserialize, Serialize};

use crate::quality;

/// One question of the set (`eval/answers/README.md`).
#[derive(Debug, Clone, Deserialize)]
pub struct Question {
    pub id: String,
    #[serde(default)]
    pub split: Option<String>,
    #[serde(default)]
    pub kind: Option<String>,
    pub question: String,
    #[serde(default = "yes")]
    pub answerable: bool,
    #[serde(default)]
    pub relevant: Vec<String>,
    #[serde(default)]
    pub key_points: Vec<Vec<String>>,
}

fn yes() -> bool {
    true
}

/// What is scored of an answer: the `overseer ask --json` fields.
#[derive(Debug, Deserialize, Serialize, Clone)]
pub struct Stored {
    #[serde(default)]
    pub id: String,
    pub answer: String,
    #[serde(default)]
    pub abstained: bool,
    #[serde(default)]
    pub fallback: bool,
    #[serde(default)]
    pub citations: Vec<StoredCitation>,
    #[serde(default)]
    pub timings: StoredTimings,
    /// Generated sentences the pipeline dropped as unsupported (absent in answers of
    /// other pipelines).
    #[serde(default)]
    pub dropped_sentences: usize,
    #[serde(default)]
    pub kept_sentences: Option<usize>,
    /// Whether a relevant document was among the sources.
    #[serde(default)]
    pub retrieval_hit: Option<bool>,
    /// Best cosine similarity of a source to the question (the abstention signal).
    #[serde(default)]
    pub relevance: Option<f32>,
    /// Key-point recall of the evidence the model saw (what a faithful answer could
    /// reach at most).
    #[serde(default)]
    pub evidence_key_point_recall: Option<f64>,
}

/// A citation of a stored answer.
#[derive(Debug, Deserialize, Serialize, Clone)]
pub struct StoredCitation {
    pub n: u32,
    #[serde(default)]
    pub title: String,
    #[serde(default)]
    pub passage: String,
    #[serde(default)]
    pub quotes: Vec<String>,
}

/// Timings of a stored answer.
#[derive(Debug, Deserialize, Serialize, Clone, Default)]
pub struct StoredTimings {
    #[serde(default)]
    pub first_token_ms: f64,
    #[serde(default)]
    pub total_ms: f64,
}

/// What a reader would judge of one answer.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub id: String,
    pub kind: String,
    pub answerable: bool,
    pub abstained: bool,
    pub fallback: bool,
    pub copy_ratio: Option<f64>,
    pub key_point_recall: Option<f64>,
    pub cites: bool,
    /// Citation numbers that name a listed citation / all citation numbers.
    pub citation_validity: Option<f64>,
    /// Generated sentences kept (supported) / generated sentences.
    pub supported_share: Option<f64>,
    pub junk: Option<quality::Junk>,
    pub words: usize,
    pub retrieval_hit: Option<bool>,
    pub relevance: Option<f32>,
    pub evidence_key_point_recall: Option<f64>,
    pub first_token_ms: f64,
    pub total_ms: f64,
    pub answer: String,
    pub error: Option<String>,
}

/// The set's figures (what `docs/BENCHMARKS.md`, "Grounded answers", reports).
#[derive(Debug, Clone, Serialize, Default)]
pub struct Summary {
    pub questions: usize,
    pub errors: usize,
    /// Over answered (not abstained) answerable questions unless said otherwise.
    pub answered: usize,
    pub median_copy_ratio: Option<f64>,
    pub median_copy_ratio_generated: Option<f64>,
    pub mean_key_point_recall: Option<f64>,
    /// Key-point recall over all answerable questions (an abstention scores 0).
    pub mean_key_point_recall_all: Option<f64>,
    /// Key-point recall of the evidence shown, over answered answerable questions.
    pub mean_evidence_key_point_recall: Option<f64>,
    pub share_citing: Option<f64>,
    pub share_all_citations_valid: Option<f64>,
    pub supported_share: Option<f64>,
    pub junk: usize,
    pub fallback: usize,
    pub abstention_unanswerable: Option<f64>,
    pub abstention_near_field: Option<f64>,
    pub false_abstention: Option<f64>,
    pub median_words: Option<f64>,
    pub retrieval_hit: Option<f64>,
    pub median_first_token_ms: Option<f64>,
    pub median_total_ms: Option<f64>,
}

pub fn ratio(num: usize, den: usize) -> Option<f64> {
    (den > 0).then(|| num as f64 / den as f64)
}

pub fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

pub fn mean(v: &[f64]) -> Option<f64> {
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

/// Score one answer against its question.
pub fn score(q: &Question, a: &Stored) -> Row {
    let passages: Vec<String> = a
        .citations
        .iter()
        .map(|c| format!("{}\n{}", c.passage, c.quotes.join("\n")))
        .collect();
    let refs: Vec<&str> = passages.iter().map(String::as_str).collect();
    let listed: Vec<u32> = a.citations.iter().map(|c| c.n).collect();
    let marks: Vec<u32> = crate::parse_citations(&a.answer)
        .into_iter()
        .flat_map(|m| m.numbers)
        .collect();
    let valid = marks.iter().filter(|n| listed.contains(n)).count();
    let answered = !a.abstained;
    let kept = a.kept_sentences;
    Row {
        id: q.id.clone(),
        kind: q.kind.clone().unwrap_or_else(|| {
            if q.answerable {
                "answerable"
            } else {
                "unanswerable"
            }
            .to_string()
        }),
        answerable: q.answerable,
        abstained: a.abstained,
        fallback: a.fallback,
        copy_ratio: answered.then(|| quality::copy_ratio(&a.answer, &refs)),
        key_point_recall: if q.answerable {
            if a.abstained {
                (!q.key_points.is_empty()).then_some(0.0)
            } else {
                quality::key_point_recall(&a.answer, &q.key_points)
            }
        } else {
            None
        },
        cites: valid > 0,
        citation_validity: ratio(valid, marks.len()),
        supported_share: kept.and_then(|k| ratio(k, k + a.dropped_sentences)),
        junk: if answered {
            quality::junk(&a.answer)
        } else {
            None
        },
        words: quality::words(&a.answer).len(),
        retrieval_hit: if q.relevant.is_empty() {
            None
        } else {
            a.retrieval_hit
        },
        relevance: a.relevance,
        evidence_key_point_recall: a.evidence_key_point_recall,
        first_token_ms: a.timings.first_token_ms,
        total_ms: a.timings.total_ms,
        answer: a.answer.clone(),
        error: None,
    }
}

pub fn error_row(q: &Question, e: String) -> Row {
    Row {
        id: q.id.clone(),
        kind: q.kind.clone().unwrap_or_default(),
        answerable: q.answerable,
        abstained: false,
        fallback: false,
        copy_ratio: None,
        key_point_recall: None,
        cites: false,
        citation_validity: None,
        supported_share: None,
        junk: None,
        words: 0,
        retrieval_hit: None,
        relevance: None,
        evidence_key_point_recall: None,
        first_token_ms: 0.0,
        total_ms: 0.0,
        answer: String::new(),
        error: Some(e),
    }
}

pub fn summarize(rows: &[Row]) -> Summary {
    let ok: Vec<&Row> = rows.iter().filter(|r| r.error.is_none()).collect();
    let ans: Vec<&&Row> = ok.iter().filter(|r| r.answerable).collect();
    let answered: Vec<&&Row> = ans.iter().copied().filter(|r| !r.abstained).collect();
    let unans: Vec<&&Row> = ok.iter().filter(|r| !r.answerable).collect();
    let near: Vec<&&Row> = unans
        .iter()
        .copied()
        .filter(|r| r.kind == "near-field")
        .collect();
    let not_abstained: Vec<&&Row> = ok.iter().filter(|r| !r.abstained).collect();
    let kept: Vec<f64> = answered.iter().filter_map(|r| r.supported_share).collect();
    Summary {
        questions: rows.len(),
        errors: rows.len() - ok.len(),
        answered: answered.len(),
        median_copy_ratio: median(answered.iter().filter_map(|r| r.copy_ratio).collect()),
        median_copy_ratio_generated: median(
            answered
                .iter()
                .filter(|r| !r.fallback)
                .filter_map(|r| r.copy_ratio)
                .collect(),
        ),
        mean_key_point_recall: mean(
            &answered
                .iter()
                .filter_map(|r| r.key_point_recall)
                .collect::<Vec<_>>(),
        ),
        mean_key_point_recall_all: mean(
            &ans.iter()
                .filter_map(|r| r.key_point_recall)
                .collect::<Vec<_>>(),
        ),
        mean_evidence_key_point_recall: mean(
            &answered
                .iter()
                .filter_map(|r| r.evidence_key_point_recall)
                .collect::<Vec<_>>(),
        ),
        share_citing: ratio(answered.iter().filter(|r| r.cites).count(), answered.len()),
        share_all_citations_valid: ratio(
            answered
                .iter()
                .filter(|r| r.cites && r.citation_validity == Some(1.0))
                .count(),
            answered.len(),
        ),
        supported_share: mean(&kept),
        junk: not_abstained.iter().filter(|r| r.junk.is_some()).count(),
        fallback: not_abstained.iter().filter(|r| r.fallback).count(),
        abstention_unanswerable: ratio(unans.iter().filter(|r| r.abstained).count(), unans.len()),
        abstention_near_field: ratio(near.iter().filter(|r| r.abstained).count(), near.len()),
        false_abstention: ratio(ans.iter().filter(|r| r.abstained).count(), ans.len()),
        median_words: median(answered.iter().map(|r| r.words as f64).collect()),
        retrieval_hit: {
            let named: Vec<bool> = ok.iter().filter_map(|r| r.retrieval_hit).collect();
            ratio(named.iter().filter(|h| **h).count(), named.len())
        },
        median_first_token_ms: median(ok.iter().map(|r| r.first_token_ms).collect()),
        median_total_ms: median(ok.iter().map(|r| r.total_ms).collect()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn question(answerable: bool, kind: &str) -> Question {
        Question {
            id: "q".into(),
            split: None,
            kind: Some(kind.into()),
            question: "What is reward hacking?".into(),
            answerable,
            relevant: vec![],
            key_points: vec![vec!["proxy reward".into()], vec!["true objective".into()]],
        }
    }

    fn stored(answer: &str, abstained: bool, passage: &str) -> Stored {
        Stored {
            id: "q".into(),
            answer: answer.into(),
            abstained,
            fallback: false,
            citations: vec![StoredCitation {
                n: 1,
                title: "t".into(),
                passage: passage.into(),
                quotes: vec![],
            }],
            timings: StoredTimings::default(),
            dropped_sentences: 1,
            kept_sentences: Some(3),
            retrieval_hit: None,
            relevance: None,
            evidence_key_point_recall: None,
        }
    }

    #[test]
    fn scores_copies_key_points_citations_and_abstentions() {
        let passage = "Agents that optimise a proxy reward harder drift away from the true \
                       objective in every environment the authors measured in this study.";
        let own = stored(
            "Optimising a proxy reward too hard pulls an agent away from what was meant. [1] \
             That is reward hacking. [2]",
            false,
            passage,
        );
        let r = score(&question(true, "answerable"), &own);
        assert_eq!(r.key_point_recall, Some(0.5));
        assert_eq!(r.citation_validity, Some(0.5));
        assert!(r.cites && r.copy_ratio == Some(0.0));
        assert_eq!(r.supported_share, Some(0.75));
        let pasted = stored(&format!("{passage} [1]"), false, passage);
        let r = score(&question(true, "answerable"), &pasted);
        assert!(r.copy_ratio.is_some_and(|c| c > 0.9), "{r:?}");
        let abstained = stored("My sources don't answer this question.", true, passage);
        let rows = vec![
            score(&question(false, "near-field"), &abstained),
            score(&question(true, "answerable"), &abstained),
            error_row(&question(true, "answerable"), "boom".into()),
        ];
        let s = summarize(&rows);
        assert_eq!((s.questions, s.errors, s.answered), (3, 1, 0));
        assert_eq!(s.abstention_near_field, Some(1.0));
        assert_eq!(s.false_abstention, Some(1.0));
        assert_eq!(s.mean_key_point_recall_all, Some(0.0));
    }
}
