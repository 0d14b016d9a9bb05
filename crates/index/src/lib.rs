//! `overseer-index`: literature ingestion, chunking, embeddings, BM25 + dense search and fusion.

mod embed;
mod error;

pub use embed::Embedder;
pub use error::{Error, Result};
