//! What the assistant needs from retrieval, behind a trait so the pipeline is testable
//! without a built index: [`Retriever`] is implemented for `overseer_index::Index`
//! and, in tests, for small in-memory corpora.

use serde::Serialize;

use crate::Result;

/// One retrieved passage with its document's metadata.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Source {
    /// Document id in the index.
    pub id: String,
    pub title: String,
    pub authors: Vec<String>,
    /// Publication date as stored (ISO 8601 or a prefix of it), if known.
    pub date: Option<String>,
    pub url: String,
    /// Corpus/source name (e.g. `alignment_newsletter`).
    pub source: String,
    /// The retriever's score (scale depends on the retrieval mode).
    pub score: f32,
    /// The passage text.
    pub passage: String,
    /// Char offsets of the passage in the document text.
    pub passage_start: usize,
    pub passage_end: usize,
}

/// A retrieval query.
#[derive(Debug, Clone)]
pub struct Query<'a> {
    pub text: &'a str,
    /// How many passages to return at most.
    pub k: usize,
    /// Restrict to one source (corpus) name.
    pub source: Option<&'a str>,
}

/// Hybrid retrieval over the literature.
pub trait Retriever: Send + Sync {
    /// Best passages first. Implementations may return fewer than `k`.
    fn retrieve(&self, q: &Query<'_>) -> Result<Vec<Source>>;
    /// Number of documents indexed (0 means "ingest first").
    fn document_count(&self) -> Result<usize>;
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn src(id: &str, title: &str, passage: &str) -> Source {
        Source {
            id: id.into(),
            title: title.into(),
            authors: vec!["Ada".into(), "Bob".into()],
            date: Some("2020-03-30T00:00:00Z".into()),
            url: format!("https://example.org/{id}"),
            source: "test".into(),
            score: 1.0,
            passage: passage.into(),
            passage_start: 100,
            passage_end: 100 + passage.chars().count(),
        }
    }
}
