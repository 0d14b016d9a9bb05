//! The tantivy side: schema (one tantivy document per chunk), BM25 queries over
//! title + text with English stemming, and filter queries on source, author, tag and
//! date. The `row` fast field links each tantivy document to its vector row.

use std::ops::Bound;

use tantivy::query::{BooleanQuery, BoostQuery, Occur, Query, RangeQuery, TermQuery};
use tantivy::schema::{
    DateOptions, Field, IndexRecordOption, NumericOptions, STORED, STRING, Schema,
    TextFieldIndexing, TextOptions,
};
use tantivy::{DateTime, TantivyDocument, Term};

use crate::{Error, Result};

pub(crate) const STEM: &str = "en_stem";
/// Weight of a title match against a body match in BM25. The title is its own short
/// field, so one title word already scores like a word repeated in a short body (BM25
/// normalises by field length, and its IDF is over titles); at 1.5 a single title word
/// outweighed several body words and title-word lookalikes crowded out the document
/// described ("switched off" ranked "The Off-Switch Game" above the gridworlds paper).
/// 0.4 was chosen on the dev halves of eval/retrieval and of the known-item set (sweep
/// in eval/retrieval/README.md).
const TITLE_BOOST: f32 = 0.4;

#[derive(Debug, Clone, Copy)]
pub(crate) struct Fields {
    pub doc_id: Field,
    pub title: Field,
    pub text: Field,
    pub source: Field,
    pub author: Field,
    pub tag: Field,
    pub date: Field,
    pub row: Field,
}

pub(crate) fn schema() -> (Schema, Fields) {
    let mut b = Schema::builder();
    let stemmed = TextOptions::default().set_indexing_options(
        TextFieldIndexing::default()
            .set_tokenizer(STEM)
            .set_index_option(IndexRecordOption::WithFreqsAndPositions),
    );
    let fields = Fields {
        doc_id: b.add_text_field("doc_id", STRING | STORED),
        title: b.add_text_field("title", stemmed.clone()),
        text: b.add_text_field("text", stemmed),
        source: b.add_text_field("source", STRING),
        author: b.add_text_field("author", STRING),
        tag: b.add_text_field("tag", STRING),
        date: b.add_date_field("date", DateOptions::default().set_indexed().set_fast()),
        row: b.add_u64_field("row", NumericOptions::default().set_fast().set_stored()),
    };
    (b.build(), fields)
}

impl Fields {
    pub fn from_schema(s: &Schema) -> Result<Self> {
        let get = |n: &str| {
            s.get_field(n).map_err(|_| Error::IncompatibleVersion {
                dir: std::path::PathBuf::from("tantivy"),
                found: format!("schema without field {n}"),
                expected: "the current schema".into(),
            })
        };
        Ok(Self {
            doc_id: get("doc_id")?,
            title: get("title")?,
            text: get("text")?,
            source: get("source")?,
            author: get("author")?,
            tag: get("tag")?,
            date: get("date")?,
            row: get("row")?,
        })
    }
}

/// Normalise a filter value (source, author, tag) the same way at index and query time.
pub(crate) fn norm_key(s: &str) -> String {
    s.trim().trim_end_matches('*').trim().to_lowercase()
}

/// Parse a date: `YYYY`, `YYYY-MM`, `YYYY-MM-DD` or RFC 3339. `end` picks the last
/// instant of a partial date (for `--until`).
///
/// Dates tantivy cannot store (it keeps nanoseconds in an i64: before 1677-09-21 or after
/// 2262-04-11) are not dates: `None`, not an overflow.
pub(crate) fn parse_date(s: &str, end: bool) -> Option<DateTime> {
    use chrono::{NaiveDate, NaiveDateTime};
    let s = s.trim();
    if let Ok(dt) = chrono::DateTime::parse_from_rfc3339(s) {
        return from_secs(dt.timestamp());
    }
    if let Ok(dt) = NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S") {
        return from_secs(dt.and_utc().timestamp());
    }
    let parts: Vec<&str> = s.split('-').collect();
    let num = |i: usize| parts.get(i).and_then(|p| p.parse::<u32>().ok());
    let (y, m, d) = match parts.len() {
        1 => (num(0)?, None, None),
        2 => (num(0)?, Some(num(1)?), None),
        3 => (num(0)?, Some(num(1)?), Some(num(2)?)),
        _ => return None,
    };
    let y = i32::try_from(y).ok()?;
    let date = match (m, d, end) {
        (None, _, false) => NaiveDate::from_ymd_opt(y, 1, 1)?,
        (None, _, true) => NaiveDate::from_ymd_opt(y, 12, 31)?,
        (Some(m), None, false) => NaiveDate::from_ymd_opt(y, m, 1)?,
        (Some(m), None, true) => {
            let next = if m == 12 {
                NaiveDate::from_ymd_opt(y + 1, 1, 1)?
            } else {
                NaiveDate::from_ymd_opt(y, m + 1, 1)?
            };
            next.pred_opt()?
        }
        (Some(m), Some(d), _) => NaiveDate::from_ymd_opt(y, m, d)?,
    };
    let t = if end {
        date.and_hms_opt(23, 59, 59)?
    } else {
        date.and_hms_opt(0, 0, 0)?
    };
    from_secs(t.and_utc().timestamp())
}

/// A tantivy date `secs` after the Unix epoch, if its nanoseconds fit an i64.
fn from_secs(secs: i64) -> Option<DateTime> {
    const MAX_SECS: i64 = i64::MAX / 1_000_000_000;
    (-MAX_SECS..=MAX_SECS)
        .contains(&secs)
        .then(|| DateTime::from_timestamp_secs(secs))
}

/// The tantivy document of one chunk.
pub(crate) fn chunk_doc(
    f: &Fields,
    meta: &crate::DocMeta,
    text: &str,
    heading_path: &[String],
    row: u64,
) -> TantivyDocument {
    let mut d = TantivyDocument::default();
    d.add_text(f.doc_id, &meta.id);
    d.add_text(f.title, &meta.title);
    if heading_path.is_empty() {
        d.add_text(f.text, text);
    } else {
        d.add_text(f.text, format!("{}\n{text}", heading_path.join(" / ")));
    }
    d.add_text(f.source, norm_key(&meta.source));
    for a in &meta.authors {
        d.add_text(f.author, norm_key(a));
    }
    for t in &meta.tags {
        d.add_text(f.tag, norm_key(t));
    }
    if let Some(date) = meta.date.as_deref().and_then(|s| parse_date(s, false)) {
        d.add_date(f.date, date);
    }
    d.add_u64(f.row, row);
    d
}

/// Filter clauses; `None` when there is no filter.
pub(crate) fn filter_query(f: &Fields, filters: &crate::Filters) -> Result<Option<Box<dyn Query>>> {
    let mut clauses: Vec<(Occur, Box<dyn Query>)> = Vec::new();
    let term = |field: Field, v: &str| -> Box<dyn Query> {
        Box::new(TermQuery::new(
            Term::from_field_text(field, &norm_key(v)),
            IndexRecordOption::Basic,
        ))
    };
    // Several values of one filter OR together; different filters AND.
    for (field, values) in [
        (f.source, &filters.source),
        (f.author, &filters.author),
        (f.tag, &filters.tag),
    ] {
        let values: Vec<&String> = values.iter().filter(|v| !v.trim().is_empty()).collect();
        match values.len() {
            0 => {}
            1 => clauses.push((Occur::Must, term(field, values[0]))),
            _ => clauses.push((
                Occur::Must,
                Box::new(BooleanQuery::new(
                    values
                        .iter()
                        .map(|v| (Occur::Should, term(field, v)))
                        .collect(),
                )),
            )),
        }
    }
    let bound = |s: &Option<String>, end: bool| -> Result<Bound<Term>> {
        match s {
            None => Ok(Bound::Unbounded),
            Some(s) => {
                let d = parse_date(s, end).ok_or_else(|| {
                    Error::InvalidArgument(format!(
                        "bad date {s:?}: use YYYY, YYYY-MM, YYYY-MM-DD or RFC 3339"
                    ))
                })?;
                Ok(Bound::Included(Term::from_field_date_for_search(f.date, d)))
            }
        }
    };
    if filters.since.is_some() || filters.until.is_some() {
        let lo = bound(&filters.since, false)?;
        let hi = bound(&filters.until, true)?;
        clauses.push((Occur::Must, Box::new(RangeQuery::new(lo, hi))));
    }
    Ok(match clauses.len() {
        0 => None,
        _ => Some(Box::new(BooleanQuery::new(clauses))),
    })
}

/// BM25 query over title and text: one `title:w^TITLE_BOOST OR text:w` pair of term
/// clauses per word of `query`, all in one flat union (every word optional).
///
/// The words are the query's tokens under the fields' own analyzer (English stemming),
/// so the text is never parsed as query syntax: natural-language questions and pasted
/// passages are full of characters the query grammar would act on (`-` before a word
/// excludes it, `a:b` names a field, quotes and hyphenated words make phrases, brackets
/// group), and a lenient parse dropped or restricted words there. A repeated word stays
/// repeated (its weight grows, as in plain BM25). No token: an empty union, which matches
/// nothing. The flat term union also lets tantivy run block-max WAND (skipping postings
/// blocks that cannot reach the top `n`).
pub(crate) fn text_query(index: &tantivy::Index, f: &Fields, query: &str) -> Box<dyn Query> {
    let mut analyzer = index
        .tokenizer_for_field(f.text)
        .unwrap_or_else(|_| stem_analyzer());
    let mut words = Vec::new();
    let mut stream = analyzer.token_stream(query);
    while stream.advance() {
        words.push(stream.token().text.clone());
    }
    let boost = TITLE_BOOST;
    let mut clauses: Vec<(Occur, Box<dyn Query>)> = Vec::with_capacity(2 * words.len());
    for word in &words {
        clauses.push((
            Occur::Should,
            Box::new(BoostQuery::new(
                Box::new(TermQuery::new(
                    Term::from_field_text(f.title, word),
                    IndexRecordOption::WithFreqs,
                )),
                boost,
            )),
        ));
        clauses.push((
            Occur::Should,
            Box::new(TermQuery::new(
                Term::from_field_text(f.text, word),
                IndexRecordOption::WithFreqs,
            )),
        ));
    }
    Box::new(BooleanQuery::new(clauses))
}

/// The analyzer tantivy registers as `en_stem` (used if the index lacks it, which an
/// index made by [`schema`] never does).
pub(crate) fn stem_analyzer() -> tantivy::tokenizer::TextAnalyzer {
    use tantivy::tokenizer::{
        Language, LowerCaser, RemoveLongFilter, SimpleTokenizer, Stemmer, TextAnalyzer,
    };
    TextAnalyzer::builder(SimpleTokenizer::default())
        .filter(RemoveLongFilter::limit(40))
        .filter(LowerCaser)
        .filter(Stemmer::new(Language::English))
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        let ts = |s: &str, e: bool| parse_date(s, e).map(|d| d.into_timestamp_secs());
        assert_eq!(ts("2020-03-30T00:00:00Z", false), Some(1_585_526_400));
        assert_eq!(ts("2020-03-30", false), Some(1_585_526_400));
        assert_eq!(ts("2020", false), ts("2020-01-01", false));
        assert_eq!(ts("2020-02", true), ts("2020-02-29T23:59:59Z", false));
        assert_eq!(ts("2020", true), ts("2020-12-31T23:59:59Z", false));
        assert_eq!(ts("yesterday", false), None);
        assert_eq!(ts("2020-13-01", false), None);
    }

    #[test]
    fn dates_tantivy_cannot_store_are_not_dates() {
        // Year 2 (found by fuzzing the search filters) overflowed tantivy's nanoseconds.
        for s in [
            "2",
            "0002-01-01",
            "1600",
            "2263",
            "9999-12-31T23:59:59Z",
            "262143",
        ] {
            assert_eq!(parse_date(s, false), None, "{s}");
            assert_eq!(parse_date(s, true), None, "{s}");
        }
        assert!(parse_date("1678", false).is_some());
        assert!(parse_date("2262", false).is_some());
    }

    #[test]
    fn norm() {
        assert_eq!(norm_key(" Andrew Ilyas* "), "andrew ilyas");
    }
}

#[cfg(test)]
mod query_tests {
    use super::*;

    fn shown(q: &str) -> String {
        let (schema, f) = schema();
        let index = tantivy::Index::create_in_ram(schema);
        format!("{:?}", text_query(&index, &f, q))
    }

    #[test]
    fn plain_words_become_one_flat_union_of_terms() {
        let q = shown("what is reward hacking");
        assert!(
            !q.contains("BooleanQuery { subqueries: [(Should, BooleanQuery"),
            "{q}"
        );
        // Two term queries per word (title boosted, text), nothing else.
        assert_eq!(q.matches("TermQuery").count(), 8, "{q}");
        assert_eq!(q.matches("boost=0.4").count(), 4, "{q}");
        assert!(q.contains("\"hack\""), "stemmed: {q}");
    }

    #[test]
    fn query_syntax_characters_are_plain_text() {
        // The grammar would make phrases of `AI's` and `non-robust`, a MustNot of
        // `-hacking`, a field lookup of `Specifically:`; here every word is one optional term.
        let q = shown("the AI's goals: +reward -hacking (non-robust) \"learning to learn\"");
        assert!(!q.contains("PhraseQuery"), "{q}");
        assert!(!q.contains("Must"), "{q}");
        assert_eq!(q.matches("TermQuery").count(), 2 * 11, "{q}");
        for w in ["\"goal\"", "\"hack\"", "\"non\"", "\"robust\"", "\"learn\""] {
            assert!(q.contains(w), "{w} in {q}");
        }
        assert_eq!(shown("?! -- :").matches("TermQuery").count(), 0);
    }

    /// Chunk texts under `title`, searched for `query`: titles best first.
    fn ranked(docs: &[(&str, &str)], query: &str) -> Vec<String> {
        let (schema, f) = schema();
        let index = tantivy::Index::create_in_ram(schema);
        let mut w = index.writer(15_000_000).expect("writer");
        for (row, (title, text)) in docs.iter().enumerate() {
            let meta = crate::DocMeta {
                id: format!("d{row}"),
                title: (*title).to_string(),
                ..crate::DocMeta::default()
            };
            w.add_document(chunk_doc(&f, &meta, text, &[], row as u64))
                .expect("add");
        }
        w.commit().expect("commit");
        let searcher = index.reader().expect("reader").searcher();
        let top = searcher
            .search(
                &text_query(&index, &f, query),
                &tantivy::collector::TopDocs::with_limit(10),
            )
            .expect("search");
        top.iter()
            .map(|(_, a)| docs[a.doc_id as usize].0.to_string())
            .collect()
    }

    #[test]
    fn title_words_do_not_outweigh_the_described_body() {
        // A query naming three words of one title and four words of another document's
        // body: the body describes what is asked. With the old title boost (1.5) the
        // title's three short-field matches won (16.7 against 13.0 by the BM25 formula).
        let filler = "notes about learning systems and how their evaluation methods were \
                      designed, with results reported over several benchmark tasks and seeds";
        let mut docs = vec![
            (
                "The Off-Switch Game",
                "A decision problem between a human and a robot about deference, \
                 with results reported over several benchmark tasks and seeds.",
            ),
            (
                "AI Safety Gridworlds",
                "Simple environments that test whether an agent can be interrupted, \
                 avoids tampering with its reward, and behaves the same when its \
                 supervisor is absent.",
            ),
        ];
        docs.extend((0..30).map(|_| ("Notes on learning systems and their evaluation", filler)));
        let top = ranked(&docs, "switch off game interrupted tampering reward absent");
        assert_eq!(top[0], "AI Safety Gridworlds", "{top:?}");
        // A query that is the title still finds it first.
        assert_eq!(
            ranked(&docs, "the off switch game")[0],
            "The Off-Switch Game"
        );
    }
}
