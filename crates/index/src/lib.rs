//! `overseer-index`: literature ingestion, chunking, embeddings, BM25 + dense search
//! and fusion, in one crash-safe data directory.
//!
//! Ingest with [`ingest`], remove documents with [`remove_documents`], search with
//! [`Index`]; [`eval`] scores retrieval on BEIR files. Embedding models plug in through the [`Embedder`] trait.

#![cfg_attr(test, allow(clippy::unwrap_used))]

mod bm25;
mod chunk;
mod embed;
mod error;
pub mod eval;
mod fusion;
mod hnsw;
mod ingest;
mod rerank;
mod search;
mod source;
mod store;
pub mod testing;
mod vectors;

pub use chunk::{Chunk, ChunkOptions, chunk_text};
pub use embed::{Embedder, MiniLm};
pub use error::{Error, Result};
pub use fusion::{DEFAULT_ALPHA, DEFAULT_RRF_K, Fusion};
pub use hnsw::{Hnsw, HnswParams};
pub use ingest::{
    DEFAULT_MAX_RECORD_BYTES, INGEST_STAGES, IngestOptions, IngestSummary, NoProgress, Progress,
    RemoveSummary, RemovedDoc, ingest, remove_documents,
};
pub use rerank::{DEFAULT_RERANK, Rerank, RerankFeatures, quality_penalty};
pub use search::{
    DEFAULT_DEPTH, Document, Filters, Index, IndexStats, ListedDoc, MAX_K, MAX_QUERY_CHARS, Mode,
    Passage, SearchHit, SearchRequest, StageTimes, highlight_spans, truncate_query,
};
pub use source::{DocMeta, Failure, parse_bytes};
pub use vectors::Scored;
