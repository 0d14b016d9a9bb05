//! Making one digest: select the new items, file each under a topic, rank them within
//! their topic, pick the highlights, summarise. The index is streamed twice (once to
//! select and classify, once to read the vectors of the items worth ranking), so a
//! window of any size runs in memory bounded by the per-item records, never by texts.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Instant;

use chrono::NaiveDate;
use overseer_index::Index;
use serde::{Deserialize, Serialize};

use crate::digest::store::SummaryCache;
use crate::digest::summary::{self, Length, Summary};
use crate::digest::{Classifier, ClassifyConfig, OTHER, Taxonomy};
use crate::{Backend, Error, Result};

/// Which items a digest covers.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// Published on or after this date.
    pub since: Option<NaiveDate>,
    /// Published on or before this date.
    pub until: Option<NaiveDate>,
    /// Only items ingested at or after this point of the ingest sequence (the last
    /// digest's watermark).
    pub from_sequence: Option<u64>,
    /// Whether items without a publication date are taken when a date window is set
    /// (without a window every item is taken, dated or not).
    pub undated: bool,
    /// Only these document ids.
    pub ids: Option<HashSet<String>>,
    /// Only documents of this source (collection).
    pub source: Option<String>,
}

impl Selection {
    fn has_window(&self) -> bool {
        self.since.is_some() || self.until.is_some()
    }

    /// Whether a document with this metadata and ingest position is selected.
    fn takes(&self, seq: u64, meta: &overseer_index::DocMeta) -> bool {
        if self.from_sequence.is_some_and(|s| seq < s) {
            return false;
        }
        if let Some(ids) = &self.ids
            && !ids.contains(&meta.id)
        {
            return false;
        }
        if let Some(src) = &self.source
            && &meta.source != src
        {
            return false;
        }
        if !self.has_window() {
            return true;
        }
        match meta.date.as_deref().and_then(parse_date) {
            None => self.undated,
            Some(d) => self.since.is_none_or(|s| d >= s) && self.until.is_none_or(|u| d <= u),
        }
    }

    /// Words for the reader: what this digest covers.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        match (self.since, self.until) {
            (Some(s), Some(u)) => parts.push(format!("published {s} to {u}")),
            (Some(s), None) => parts.push(format!("published since {s}")),
            (None, Some(u)) => parts.push(format!("published until {u}")),
            (None, None) => {}
        }
        if self.has_window() {
            parts.push(if self.undated {
                "undated items included".into()
            } else {
                "undated items left out".into()
            });
        }
        if self.from_sequence.is_some() {
            parts.push("ingested since the last digest".into());
        }
        if let Some(ids) = &self.ids {
            parts.push(format!("{} listed items", ids.len()));
        }
        if let Some(s) = &self.source {
            parts.push(format!("source {s}"));
        }
        if parts.is_empty() {
            "every indexed item".into()
        } else {
            parts.join(", ")
        }
    }
}

/// A date as stored (`YYYY-MM-DD…`; a bare year or year-month counts from its start).
pub(crate) fn parse_date(s: &str) -> Option<NaiveDate> {
    let s = s.trim();
    let d = s
        .get(..10)
        .and_then(|p| NaiveDate::parse_from_str(p, "%Y-%m-%d").ok());
    d.or_else(|| {
        s.get(..7)
            .and_then(|p| NaiveDate::parse_from_str(&format!("{p}-01"), "%Y-%m-%d").ok())
    })
    .or_else(|| {
        s.get(..4)
            .filter(|p| p.chars().all(|c| c.is_ascii_digit()) && s.len() == 4)
            .and_then(|p| NaiveDate::parse_from_str(&format!("{p}-01-01"), "%Y-%m-%d").ok())
    })
}

/// How a digest is made.
#[derive(Debug, Clone)]
pub struct DigestOptions {
    /// Write summaries (needs a backend).
    pub summaries: bool,
    /// Most highlights across the digest.
    pub highlights: usize,
    pub classify: ClassifyConfig,
    /// Weight of novelty against relevance in the ranking within a topic.
    pub novelty_weight: f32,
    /// Title of the digest.
    pub title: String,
}

impl Default for DigestOptions {
    fn default() -> Self {
        Self {
            summaries: true,
            highlights: 3,
            classify: ClassifyConfig::default(),
            novelty_weight: 0.25,
            title: "Alignment digest".into(),
        }
    }
}

/// One item of a digest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DigestItem {
    /// The document id as ingested.
    pub id: String,
    /// The item's number in this digest: summaries cite it as `[n]`.
    pub n: usize,
    pub title: String,
    #[serde(default)]
    pub authors: Vec<String>,
    #[serde(default)]
    pub date: Option<String>,
    #[serde(default)]
    pub url: Option<String>,
    pub source: String,
    /// Primary topic id, or `other`.
    pub topic: String,
    /// Secondary topic ids.
    pub secondary: Vec<String>,
    /// Probability of the primary topic (0..1).
    pub confidence: f32,
    /// Confidence under the classifier's floor: the filing is a guess.
    pub uncertain: bool,
    /// Cosine similarity to the primary topic.
    pub relevance: f32,
    /// One minus the similarity to the nearest document the index held outside this
    /// digest (`None` when not measured).
    pub novelty: Option<f32>,
    /// The ranking score within the topic.
    pub score: f32,
    /// The summary with its citation marks (absent without summaries).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    /// The summary is the item's own opening, quoted, because the model's failed the
    /// checks.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub summary_fallback: bool,
    /// Share of the summary's words in 12+ word runs copied from the item.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copy_ratio: Option<f64>,
    /// Why this item is a highlight (absent for the others).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub highlight: Option<String>,
}

/// One topic's part of a digest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Section {
    pub id: String,
    pub title: String,
    #[serde(default)]
    pub category: String,
    /// Numbers (`n`) of its items, best first.
    pub items: Vec<usize>,
}

/// Counts and timings of a digest run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DigestStats {
    pub items: usize,
    pub other: usize,
    pub uncertain: usize,
    pub summarized: usize,
    pub summaries_cached: usize,
    pub summary_fallbacks: usize,
    #[serde(default)]
    pub median_copy_ratio: Option<f64>,
    pub select_ms: u64,
    pub rank_ms: u64,
    pub summarize_ms: u64,
}

/// A finished digest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Digest {
    /// Its name in the data dir (`digests/<id>.json`).
    pub id: String,
    pub title: String,
    /// When it was made (RFC 3339).
    pub created: String,
    /// What it covers, in words.
    pub covers: String,
    /// Every item, numbered in reading order (topic sections in taxonomy order, then
    /// Other; best first within each).
    pub items: Vec<DigestItem>,
    /// Topics with at least one item, in taxonomy order, then Other.
    pub sections: Vec<Section>,
    /// Numbers of the highlighted items.
    pub highlights: Vec<usize>,
    pub stats: DigestStats,
    /// The model that wrote the summaries.
    #[serde(default)]
    pub summarizer: Option<String>,
}

impl Digest {
    /// The item numbered `n`.
    pub fn item(&self, n: usize) -> Option<&DigestItem> {
        n.checked_sub(1).and_then(|i| self.items.get(i))
    }
}

/// What a long run reports as it goes.
#[derive(Debug, Clone, PartialEq)]
pub enum DigestProgress {
    /// Items selected and filed so far.
    Selected(usize),
    /// Items ranked (novelty measured) of a total.
    Ranked { done: usize, total: usize },
    /// Summaries written of a total.
    Summarized { done: usize, total: usize },
}

/// The per-item record kept between the passes (no text, no vector).
struct Record {
    seq: u64,
    meta: overseer_index::DocMeta,
    hash: String,
    topic: Option<usize>,
    secondary: Vec<usize>,
    confidence: f32,
    uncertain: bool,
    relevance: f32,
}

/// Items per topic whose novelty is measured (the best by relevance); the rest are
/// ranked by relevance alone. Bounds the second pass for very large windows.
const NOVELTY_PER_TOPIC: usize = 200;

/// Make a digest of the items of `index` that `selection` takes.
///
/// `backend` writes the summaries (`None` or `opts.summaries == false`: none);
/// `cache` keeps them by content so a re-run is fast.
///
/// Errors: the index's, the embedder's and the backend's.
#[allow(clippy::too_many_lines)]
pub fn build(
    index: &Index,
    taxonomy: &Taxonomy,
    selection: &Selection,
    opts: &DigestOptions,
    backend: Option<&dyn Backend>,
    mut cache: Option<&mut SummaryCache>,
    progress: &mut dyn FnMut(DigestProgress),
) -> Result<Digest> {
    let embedder = index.embedder().clone();
    let classifier = Classifier::new(taxonomy, embedder.as_ref(), opts.classify)?;
    let created = chrono::Utc::now();
    let mut stats = DigestStats::default();

    // Pass 1: select and classify, keeping only small records.
    let t = Instant::now();
    let mut records: Vec<Record> = Vec::new();
    index.for_each_document(&mut |d| {
        if !selection.takes(d.seq, &d.meta) {
            return Ok(());
        }
        let c = classifier.classify(&d.vector);
        records.push(Record {
            seq: d.seq,
            meta: d.meta,
            hash: d.hash,
            topic: c.topic,
            secondary: c.secondary,
            confidence: c.confidence,
            uncertain: c.uncertain,
            relevance: c.similarity,
        });
        if records.len().is_multiple_of(1000) {
            progress(DigestProgress::Selected(records.len()));
        }
        Ok(())
    })?;
    progress(DigestProgress::Selected(records.len()));
    stats.select_ms = t.elapsed().as_millis() as u64;

    // Pass 2: novelty of the items worth ranking, against documents outside the digest.
    let t = Instant::now();
    let ntopics = taxonomy.topics.len();
    let section_of = |r: &Record| r.topic.unwrap_or(ntopics);
    let mut by_topic: Vec<Vec<usize>> = vec![Vec::new(); ntopics + 1];
    for (i, r) in records.iter().enumerate() {
        by_topic[section_of(r)].push(i);
    }
    for list in &mut by_topic {
        list.sort_by(|&a, &b| records[b].relevance.total_cmp(&records[a].relevance));
    }
    let measured: HashSet<u64> = by_topic
        .iter()
        .flat_map(|l| l.iter().take(NOVELTY_PER_TOPIC).map(|&i| records[i].seq))
        .collect();
    let selected: HashSet<String> = records.iter().map(|r| r.meta.id.clone()).collect();
    let mut novelty: HashMap<u64, (f32, Option<String>)> = HashMap::new();
    let mut vectors: HashMap<u64, Vec<f32>> = HashMap::new();
    let total = measured.len();
    index.for_each_document(&mut |d| {
        if !measured.contains(&d.seq) {
            return Ok(());
        }
        let near = index.nearest_documents(&d.vector, 12)?;
        let prior = near.into_iter().find(|(id, _)| !selected.contains(id));
        let (nov, id) = match prior {
            Some((id, sim)) => ((1.0 - sim).clamp(0.0, 1.0), Some(id)),
            None => (1.0, None),
        };
        novelty.insert(d.seq, (nov, id));
        if opts.summaries && backend.is_some() {
            vectors.insert(d.seq, d.vector);
        }
        if novelty.len().is_multiple_of(50) {
            progress(DigestProgress::Ranked {
                done: novelty.len(),
                total,
            });
        }
        Ok(())
    })?;
    progress(DigestProgress::Ranked {
        done: novelty.len(),
        total,
    });

    // Rank within each topic; number the items in reading order.
    let score = |r: &Record| -> f32 {
        let nov = novelty.get(&r.seq).map_or(0.0, |n| n.0);
        r.relevance + opts.novelty_weight * nov + citation_bonus(&r.meta)
    };
    for list in &mut by_topic {
        list.sort_by(|&a, &b| {
            score(&records[b])
                .total_cmp(&score(&records[a]))
                .then_with(|| records[a].meta.title.cmp(&records[b].meta.title))
        });
    }
    let topic_id =
        |t: Option<usize>| t.map_or(OTHER.to_string(), |i| taxonomy.topics[i].id.clone());
    let mut items: Vec<DigestItem> = Vec::with_capacity(records.len());
    let mut sections = Vec::new();
    let mut item_seq: Vec<u64> = Vec::with_capacity(records.len());
    let mut item_hash: Vec<String> = Vec::with_capacity(records.len());
    for (s, list) in by_topic.iter().enumerate() {
        if list.is_empty() {
            continue;
        }
        let (id, title, category) = match taxonomy.topics.get(s) {
            Some(t) => (t.id.clone(), t.title.clone(), t.category.clone()),
            None => (OTHER.to_string(), "Other".to_string(), String::new()),
        };
        let mut nums = Vec::new();
        for &i in list {
            let r = &records[i];
            let n = items.len() + 1;
            nums.push(n);
            item_seq.push(r.seq);
            item_hash.push(r.hash.clone());
            items.push(DigestItem {
                id: r.meta.id.clone(),
                n,
                title: r.meta.title.clone(),
                authors: r.meta.authors.clone(),
                date: r.meta.date.clone(),
                url: r.meta.url.clone(),
                source: r.meta.source.clone(),
                topic: topic_id(r.topic),
                secondary: r.secondary.iter().map(|&t| topic_id(Some(t))).collect(),
                confidence: r.confidence,
                uncertain: r.uncertain,
                relevance: r.relevance,
                novelty: novelty.get(&r.seq).map(|n| n.0),
                score: score(r),
                summary: None,
                summary_fallback: false,
                copy_ratio: None,
                highlight: None,
            });
        }
        sections.push(Section {
            id,
            title,
            category,
            items: nums,
        });
    }
    stats.items = items.len();
    stats.other = items.iter().filter(|i| i.topic == OTHER).count();
    stats.uncertain = items.iter().filter(|i| i.uncertain).count();

    // Highlights: the best-scoring items that are confidently and clearly on their
    // topic (relevance well above the "Other" floor), one per topic, never from Other.
    let floor = opts.classify.min_similarity + 0.1;
    let mut hl: Vec<usize> = sections
        .iter()
        .filter(|s| s.id != OTHER)
        .filter_map(|s| {
            s.items
                .iter()
                .copied()
                .find(|&n| !items[n - 1].uncertain && items[n - 1].relevance >= floor)
        })
        .collect();
    hl.sort_by(|&a, &b| items[b - 1].score.total_cmp(&items[a - 1].score));
    hl.truncate(opts.highlights);
    hl.sort_unstable();
    for &n in &hl {
        let seq = item_seq[n - 1];
        let nearest = match novelty.get(&seq).and_then(|(_, id)| id.clone()) {
            Some(id) => index.document(&id)?.map(|d| d.meta.title),
            None => None,
        };
        let it = &items[n - 1];
        let topic = taxonomy
            .get(&it.topic)
            .map_or(it.topic.clone(), |t| t.title.clone());
        let mut why = format!(
            "Highest-ranked item under “{topic}” (relevance {:.2}, confidence {:.2})",
            it.relevance, it.confidence
        );
        if let Some(nv) = it.novelty {
            match nearest {
                Some(t) => why.push_str(&format!(
                    "; novelty {nv:.2}: the closest earlier item in the index is “{t}”"
                )),
                None => why.push_str(&format!("; novelty {nv:.2}")),
            }
        }
        why.push('.');
        items[n - 1].highlight = Some(why);
    }
    stats.rank_ms = t.elapsed().as_millis() as u64;

    // Summaries.
    let t = Instant::now();
    let mut summarizer = None;
    if let (true, Some(b)) = (opts.summaries, backend) {
        summarizer = Some(b.describe());
        let total = items.len();
        let mut copies = Vec::new();
        for i in 0..items.len() {
            let length = if items[i].highlight.is_some() {
                Length::Long
            } else {
                Length::Short
            };
            let seq = item_seq[i];
            let key = SummaryCache::key(&item_hash[i], length, &b.describe());
            let s: Summary = match cache.as_deref().and_then(|c| c.get(&key)) {
                Some(s) => {
                    stats.summaries_cached += 1;
                    s.clone()
                }
                None => {
                    let doc = index.document(&items[i].id)?.ok_or_else(|| {
                        Error::InvalidArgument(format!(
                            "document {} left the index during the digest",
                            items[i].id
                        ))
                    })?;
                    let text = document_text(&doc);
                    let s = summary::summarize(
                        b,
                        Some(embedder.as_ref()),
                        &items[i].title,
                        &text,
                        vectors.get(&seq).map(Vec::as_slice),
                        length,
                    )?;
                    if let Some(c) = cache.as_deref_mut() {
                        c.put(key, s.clone())?;
                    }
                    s
                }
            };
            stats.summarized += 1;
            if s.fallback {
                stats.summary_fallbacks += 1;
            }
            copies.push(s.copy_ratio);
            let it = &mut items[i];
            it.summary = Some(s.cited(it.n));
            it.summary_fallback = s.fallback;
            it.copy_ratio = Some(s.copy_ratio);
            progress(DigestProgress::Summarized { done: i + 1, total });
        }
        stats.median_copy_ratio = crate::eval::median(copies);
    }
    stats.summarize_ms = t.elapsed().as_millis() as u64;

    Ok(Digest {
        id: created.format("%Y%m%dT%H%M%SZ").to_string(),
        title: opts.title.clone(),
        created: created.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        covers: selection.describe(),
        items,
        sections,
        highlights: hl,
        stats,
        summarizer,
    })
}

/// A document's text from its chunks, each chunk's text once, in order.
pub(crate) fn document_text(doc: &overseer_index::Document) -> String {
    let mut out = String::new();
    let mut seen = HashSet::new();
    for c in &doc.chunks {
        for s in crate::text::sentences(&c.text) {
            let t = s.text.trim();
            if seen.insert(t.to_string()) {
                if !out.is_empty() {
                    out.push(' ');
                }
                out.push_str(t);
            }
        }
    }
    out
}

/// A small bonus for items whose record carries a citation count
/// (`citation_count`, `citations` or `n_citations`): `0.02 * ln(1 + count)`.
fn citation_bonus(meta: &overseer_index::DocMeta) -> f32 {
    ["citation_count", "citations", "n_citations"]
        .iter()
        .find_map(|k| meta.extra.get(*k).and_then(serde_json::Value::as_f64))
        .map_or(0.0, |c| 0.02 * (1.0 + c.max(0.0) as f32).ln())
}

/// Items per topic, for comparing a digest's grouping with another (e.g. the
/// newsletter's own): topic id -> item ids.
pub fn grouping(d: &Digest) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for it in &d.items {
        out.entry(it.topic.clone()).or_default().push(it.id.clone());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_parse_from_their_stored_forms() {
        let d = |s| parse_date(s).map(|d| d.to_string());
        assert_eq!(d("2019-01-07T00:00:00Z").as_deref(), Some("2019-01-07"));
        assert_eq!(d("2019-03").as_deref(), Some("2019-03-01"));
        assert_eq!(d("2019").as_deref(), Some("2019-01-01"));
        assert_eq!(d(""), None);
        assert_eq!(d("soon"), None);
    }

    #[test]
    fn a_window_leaves_undated_items_to_the_flag() {
        let meta = |date: Option<&str>| overseer_index::DocMeta {
            id: "x".into(),
            title: "t".into(),
            authors: vec![],
            date: date.map(str::to_string),
            url: None,
            source: "s".into(),
            source_type: None,
            tags: vec![],
            extra: Default::default(),
        };
        let mut s = Selection {
            since: NaiveDate::from_ymd_opt(2020, 1, 1),
            until: NaiveDate::from_ymd_opt(2020, 1, 7),
            ..Selection::default()
        };
        assert!(s.takes(0, &meta(Some("2020-01-03"))));
        assert!(!s.takes(0, &meta(Some("2020-01-08"))));
        assert!(!s.takes(0, &meta(None)));
        s.undated = true;
        assert!(s.takes(0, &meta(None)));
        s.from_sequence = Some(5);
        assert!(!s.takes(4, &meta(None)));
        assert!(s.takes(5, &meta(None)));
        // Without a window, every item is taken, dated or not.
        let all = Selection::default();
        assert!(all.takes(0, &meta(None)));
    }
}
