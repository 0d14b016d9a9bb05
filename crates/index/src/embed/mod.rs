//! Embeddings behind one trait, so other models plug in. The default is
//! all-MiniLM-L6-v2 (sentence-transformers), run by a packed, padding-free BERT
//! forward on the `gemm` crate (`bert.rs`, `ops.rs`; see there for why not candle).

mod bert;
mod minilm;
mod ops;
mod small;
mod team;

pub use minilm::MiniLm;
pub(crate) use team::Team;

use crate::Result;

/// A text embedding model. Implementations return L2-normalised vectors.
pub trait Embedder: Send + Sync {
    /// Stable name stored in the index; a different name means "re-ingest".
    fn name(&self) -> &str;
    /// Vector dimension.
    fn dim(&self) -> usize;
    /// Most tokens the model reads; longer texts are truncated by `embed`.
    fn max_tokens(&self) -> usize;
    /// Tokens the model's tokenizer makes of `text` (chunk budgets use this).
    fn count_tokens(&self, text: &str) -> usize;
    /// Embed a batch of texts (L2-normalised, one vector per text, in order).
    fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>>;
}
