//! How well the digest files items, measured on labelled records: the Alignment
//! Newsletter filed each summary under one of its own categories, and
//! `eval/digest/categories.tsv` says which of those correspond clearly to one topic.
//! Reported beside two baselines computed in the same run: the nearest topic by BM25
//! over the topics' titles and descriptions, and the majority class of the dev split.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use overseer_index::Index;
use serde::Serialize;

use crate::digest::{Classifier, Taxonomy, classify::topic_text};
use crate::{Error, Result};

/// Which half of the labelled records: `Dev` (tune on it) or `Test` (report on it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Dev,
    Test,
    All,
}

impl std::str::FromStr for Split {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "dev" => Ok(Split::Dev),
            "test" => Ok(Split::Test),
            "all" => Ok(Split::All),
            _ => Err(Error::InvalidArgument(format!(
                "split must be dev, test or all, not `{s}`"
            ))),
        }
    }
}

/// The split a record belongs to: by the last hex digit of its id (even: dev, odd:
/// test), so the split never depends on the order or the size of the file.
pub fn split_of(id: &str) -> Split {
    match id.chars().last().and_then(|c| c.to_digit(16)) {
        Some(d) if d % 2 == 1 => Split::Test,
        _ => Split::Dev,
    }
}

/// Newsletter category → topic id, from a TSV file (`category`, `topic` or `-` for
/// categories left out, `reason`); `#` starts a comment line.
///
/// Errors: `InvalidArgument` naming the line of a malformed row, I/O.
pub fn load_labels(path: &Path) -> Result<BTreeMap<String, String>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::InvalidArgument(format!("{}: {e}", path.display())))?;
    let mut out = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let cols: Vec<&str> = line.split('\t').collect();
        if cols.len() < 3 || cols[2].trim().is_empty() {
            return Err(Error::InvalidArgument(format!(
                "{}:{}: expected `category<TAB>topic<TAB>reason`",
                path.display(),
                i + 1
            )));
        }
        if cols[1].trim() != "-" {
            out.insert(cols[0].trim().to_string(), cols[1].trim().to_string());
        }
    }
    Ok(out)
}

/// Accuracy and macro-F1 of one classifier.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Scores {
    pub accuracy: f64,
    /// Mean over the gold topics of each topic's F1.
    pub macro_f1: f64,
    /// Per gold topic: F1.
    pub per_topic: BTreeMap<String, f64>,
}

/// One labelled record and what each method predicted.
#[derive(Debug, Clone, Serialize)]
pub struct Prediction {
    pub id: String,
    pub title: String,
    pub category: String,
    pub gold: String,
    pub ours: String,
    pub confidence: f32,
    pub bm25: String,
}

/// The result of [`evaluate`].
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub split: Split,
    pub items: usize,
    /// Labelled items per gold topic.
    pub support: BTreeMap<String, usize>,
    pub ours: Scores,
    pub bm25: Scores,
    pub majority: Scores,
    /// The majority class (of the dev split, whatever split is scored).
    pub majority_topic: String,
    /// Records of this split whose category is left out of the map (no single topic
    /// fits), and the share of them the digest files under "Other".
    pub unmapped: usize,
    pub unmapped_other: f64,
    pub predictions: Vec<Prediction>,
}

/// Score `classifier` on the records of `source` whose first tag `labels` maps to a
/// topic, restricted to `split`.
///
/// Errors: the index's; `InvalidArgument` when no record is labelled.
pub fn evaluate(
    index: &Index,
    taxonomy: &Taxonomy,
    classifier: &Classifier,
    labels: &BTreeMap<String, String>,
    source: &str,
    split: Split,
) -> Result<Report> {
    let bm25 = Bm25Topics::new(taxonomy);
    let name = |i: Option<usize>| {
        i.map_or(crate::digest::OTHER.to_string(), |i| {
            taxonomy.topics[i].id.clone()
        })
    };
    let mut preds = Vec::new();
    let mut dev_counts: HashMap<String, usize> = HashMap::new();
    let (mut unmapped, mut unmapped_other) = (0usize, 0usize);
    index.for_each_document(&mut |d| {
        if d.meta.source != source {
            return Ok(());
        }
        let Some(cat) = d.meta.tags.first() else {
            return Ok(());
        };
        let s = split_of(&d.meta.id);
        let Some(gold) = labels.get(cat) else {
            if split == Split::All || s == split {
                unmapped += 1;
                if classifier.classify(&d.vector).topic.is_none() {
                    unmapped_other += 1;
                }
            }
            return Ok(());
        };
        if s == Split::Dev {
            *dev_counts.entry(gold.clone()).or_default() += 1;
        }
        if split != Split::All && s != split {
            return Ok(());
        }
        let c = classifier.classify(&d.vector);
        let text = match index.document(&d.meta.id)? {
            Some(doc) => doc
                .chunks
                .iter()
                .map(|c| c.text.as_str())
                .collect::<Vec<_>>()
                .join(" "),
            None => String::new(),
        };
        preds.push(Prediction {
            id: d.meta.id.clone(),
            title: d.meta.title.clone(),
            category: cat.clone(),
            gold: gold.clone(),
            ours: name(c.topic),
            confidence: c.confidence,
            bm25: name(bm25.best(&format!("{} {}", d.meta.title, text))),
        });
        Ok(())
    })?;
    if preds.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "no record of source `{source}` in this split carries a mapped category"
        )));
    }
    let majority_topic = dev_counts
        .iter()
        .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))
        .map(|(t, _)| t.clone())
        .unwrap_or_default();
    let gold: Vec<&str> = preds.iter().map(|p| p.gold.as_str()).collect();
    let mut support = BTreeMap::new();
    for g in &gold {
        *support.entry(g.to_string()).or_default() += 1;
    }
    let ours: Vec<&str> = preds.iter().map(|p| p.ours.as_str()).collect();
    let b: Vec<&str> = preds.iter().map(|p| p.bm25.as_str()).collect();
    let maj: Vec<&str> = vec![majority_topic.as_str(); preds.len()];
    Ok(Report {
        split,
        items: preds.len(),
        support,
        ours: scores(&gold, &ours),
        bm25: scores(&gold, &b),
        majority: scores(&gold, &maj),
        majority_topic,
        unmapped,
        unmapped_other: unmapped_other as f64 / unmapped.max(1) as f64,
        predictions: preds,
    })
}

/// Accuracy and macro-F1 over the gold classes.
pub fn scores(gold: &[&str], pred: &[&str]) -> Scores {
    let n = gold.len().max(1) as f64;
    let correct = gold.iter().zip(pred).filter(|(g, p)| g == p).count();
    let mut classes: Vec<&str> = gold.to_vec();
    classes.sort_unstable();
    classes.dedup();
    let mut per_topic = BTreeMap::new();
    for c in &classes {
        let tp = gold
            .iter()
            .zip(pred)
            .filter(|(g, p)| *g == c && *p == c)
            .count() as f64;
        let fp = gold
            .iter()
            .zip(pred)
            .filter(|(g, p)| *g != c && *p == c)
            .count() as f64;
        let fn_ = gold
            .iter()
            .zip(pred)
            .filter(|(g, p)| *g == c && *p != c)
            .count() as f64;
        let f1 = if tp == 0.0 {
            0.0
        } else {
            2.0 * tp / (2.0 * tp + fp + fn_)
        };
        per_topic.insert(c.to_string(), f1);
    }
    let macro_f1 = per_topic.values().sum::<f64>() / per_topic.len().max(1) as f64;
    Scores {
        accuracy: correct as f64 / n,
        macro_f1,
        per_topic,
    }
}

/// The BM25 baseline: each topic's title and description is a document, the item's
/// text the query; Okapi BM25 (k1 = 1.2, b = 0.75) over lowercased word tokens.
struct Bm25Topics {
    docs: Vec<HashMap<String, f64>>,
    lens: Vec<f64>,
    avg: f64,
    df: HashMap<String, f64>,
}

fn tokens(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
}

impl Bm25Topics {
    fn new(t: &Taxonomy) -> Self {
        let mut docs = Vec::new();
        let mut lens = Vec::new();
        let mut df: HashMap<String, f64> = HashMap::new();
        for topic in &t.topics {
            let mut tf: HashMap<String, f64> = HashMap::new();
            let mut len = 0.0;
            for w in tokens(&topic_text(topic)) {
                *tf.entry(w).or_default() += 1.0;
                len += 1.0;
            }
            for w in tf.keys() {
                *df.entry(w.clone()).or_default() += 1.0;
            }
            docs.push(tf);
            lens.push(len);
        }
        let avg = lens.iter().sum::<f64>() / lens.len().max(1) as f64;
        Self {
            docs,
            lens,
            avg,
            df,
        }
    }

    /// The best-scoring topic, `None` when no query word occurs in any topic.
    fn best(&self, query: &str) -> Option<usize> {
        let n = self.docs.len() as f64;
        let mut q: HashMap<String, f64> = HashMap::new();
        for w in tokens(query) {
            *q.entry(w).or_default() += 1.0;
        }
        let (k1, b) = (1.2, 0.75);
        let mut best: Option<(usize, f64)> = None;
        for (i, d) in self.docs.iter().enumerate() {
            let mut s = 0.0;
            for (w, qf) in &q {
                let Some(tf) = d.get(w) else { continue };
                let df = self.df[w];
                let idf = ((n - df + 0.5) / (df + 0.5) + 1.0).ln();
                s += qf * idf * tf * (k1 + 1.0)
                    / (tf + k1 * (1.0 - b + b * self.lens[i] / self.avg));
            }
            if s > 0.0 && best.is_none_or(|(_, bs)| s > bs) {
                best = Some((i, s));
            }
        }
        best.map(|(i, _)| i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macro_f1_counts_wrong_predictions_against_both_classes() {
        let s = scores(&["a", "a", "b", "b"], &["a", "b", "b", "x"]);
        assert!((s.accuracy - 0.5).abs() < 1e-9);
        // a: tp 1, fn 1 -> 2/3; b: tp 1, fp 1, fn 1 -> 1/2.
        assert!((s.per_topic["a"] - 2.0 / 3.0).abs() < 1e-9);
        assert!((s.per_topic["b"] - 0.5).abs() < 1e-9);
        assert!((s.macro_f1 - (2.0 / 3.0 + 0.5) / 2.0).abs() < 1e-9);
    }

    #[test]
    fn splits_are_by_the_last_hex_digit() {
        assert_eq!(split_of("05ce911e142f22b1760300f22cade6f9"), Split::Test);
        assert_eq!(split_of("abc0"), Split::Dev);
    }
}

/// Agreement of two groupings of the same items, each given as one label per item.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Agreement {
    /// Adjusted Rand index (1: same partition; about 0: chance).
    pub ari: f64,
    /// Pairwise precision, recall and F1 of "grouped together" (`pred` against `gold`).
    pub pair_precision: f64,
    pub pair_recall: f64,
    pub pair_f1: f64,
}

/// Compare the partition `pred` with `gold` (same length, one label per item).
pub fn agreement(pred: &[&str], gold: &[&str]) -> Agreement {
    let n = pred.len().min(gold.len());
    let c2 = |x: f64| x * (x - 1.0) / 2.0;
    let mut cells: HashMap<(&str, &str), f64> = HashMap::new();
    let mut rows: HashMap<&str, f64> = HashMap::new();
    let mut cols: HashMap<&str, f64> = HashMap::new();
    for i in 0..n {
        *cells.entry((pred[i], gold[i])).or_default() += 1.0;
        *rows.entry(pred[i]).or_default() += 1.0;
        *cols.entry(gold[i]).or_default() += 1.0;
    }
    let together_both: f64 = cells.values().map(|&v| c2(v)).sum();
    let together_pred: f64 = rows.values().map(|&v| c2(v)).sum();
    let together_gold: f64 = cols.values().map(|&v| c2(v)).sum();
    let total = c2(n as f64);
    let expected = if total > 0.0 {
        together_pred * together_gold / total
    } else {
        0.0
    };
    let max = (together_pred + together_gold) / 2.0;
    let ari = if (max - expected).abs() < 1e-12 {
        // Both partitions trivial (all singletons or one group): agreement is perfect
        // exactly when they are the same partition.
        if (together_both - max).abs() < 1e-12 {
            1.0
        } else {
            0.0
        }
    } else {
        (together_both - expected) / (max - expected)
    };
    let p = if together_pred > 0.0 {
        together_both / together_pred
    } else {
        0.0
    };
    let r = if together_gold > 0.0 {
        together_both / together_gold
    } else {
        0.0
    };
    let f = if p + r > 0.0 {
        2.0 * p * r / (p + r)
    } else {
        0.0
    };
    Agreement {
        ari,
        pair_precision: p,
        pair_recall: r,
        pair_f1: f,
    }
}

#[cfg(test)]
mod agreement_tests {
    use super::*;

    #[test]
    fn adjusted_rand_index_matches_known_values() {
        // Values from scikit-learn's adjusted_rand_score documentation.
        let a = agreement(&["0", "0", "1", "1"], &["0", "0", "1", "1"]);
        assert!((a.ari - 1.0).abs() < 1e-12);
        let a = agreement(&["1", "1", "0", "0"], &["0", "0", "1", "1"]);
        assert!((a.ari - 1.0).abs() < 1e-12);
        let a = agreement(&["0", "0", "1", "2"], &["0", "0", "1", "1"]);
        assert!((a.ari - 0.571_428_571_428_571_5).abs() < 1e-12, "{a:?}");
        let a = agreement(&["0", "1", "2", "3"], &["0", "0", "0", "0"]);
        assert!(a.ari.abs() < 1e-12, "{a:?}");
        // Pairs: pred groups {0,1} and {2,3}, gold {0,1,2}: 1 shared pair of 2 and 3.
        let a = agreement(&["a", "a", "b", "b"], &["x", "x", "x", "y"]);
        assert!((a.pair_precision - 0.5).abs() < 1e-12);
        assert!((a.pair_recall - 1.0 / 3.0).abs() < 1e-12);
    }
}
