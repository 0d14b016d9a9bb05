//! Constructors tying the pipeline to the real index and runtime: the literature
//! index as a [`Retriever`] (hybrid search, one best passage per document).

use std::path::Path;
use std::sync::Arc;

use overseer_index::{Embedder, Index, SearchRequest};

use crate::retrieve::{Query, Retriever, Source};
use crate::{Backend, Result};

/// The literature index as a retriever. Takes an owned index or one shared with
/// other users (the server shares one `Arc<Index>` between search and answers).
pub struct IndexRetriever {
    index: Arc<Index>,
}

impl IndexRetriever {
    pub fn new(index: impl Into<Arc<Index>>) -> Self {
        Self {
            index: index.into(),
        }
    }
}

impl Retriever for IndexRetriever {
    fn retrieve(&self, q: &Query<'_>) -> Result<Vec<Source>> {
        let mut req = SearchRequest::new(q.text, q.k);
        if let Some(s) = q.source {
            req.filters.source = vec![s.to_string()];
        }
        // The index refreshes to the latest committed generation on its own terms;
        // a concurrent ingest shows up on the next question.
        let hits = self.index.search(&req)?;
        Ok(hits
            .into_iter()
            .map(|h| Source {
                id: h.id,
                title: h.title,
                authors: h.authors,
                date: h.date,
                url: h.url.unwrap_or_default(),
                source: h.source,
                score: h.score,
                passage: h.passage.text,
                passage_start: h.passage.start,
                passage_end: h.passage.end,
            })
            .collect())
    }

    fn document_count(&self) -> Result<usize> {
        Ok(self.index.stats()?.docs as usize)
    }
}

/// Open the index in `data_dir` with the MiniLM embedder in `embedder_dir`.
pub fn open_index(
    data_dir: &Path,
    embedder_dir: &Path,
    threads: usize,
) -> Result<(Arc<dyn Retriever>, Arc<dyn Embedder>)> {
    let embedder: Arc<dyn Embedder> =
        Arc::new(overseer_index::MiniLm::load(embedder_dir, threads)?);
    let index = Index::open(data_dir, embedder.clone())?;
    Ok((Arc::new(IndexRetriever::new(index)), embedder))
}

/// Load a local GGUF chat model as a backend.
pub fn load_local(model: &Path, threads: usize) -> Result<Arc<dyn Backend>> {
    Ok(Arc::new(crate::LocalBackend::load(model, threads)?))
}
