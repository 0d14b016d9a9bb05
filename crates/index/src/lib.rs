//! `overseer-index`: Literature ingestion, chunking, embeddings, BM25 + dense search and fusion.

mod error;

pub use error::{Error, Result};
