//! Fuzz harnesses for overseer's parsers and endpoints, as plain functions on bytes.
//!
//! Each harness takes one input, runs it through a public entry point and checks a
//! property: no panic anywhere, plus what the part guarantees (a round trip, a limit, a
//! status code). A failed property panics. The same functions run under libFuzzer
//! (`fuzz/`, nightly, `scripts/fuzz`) and in the stable smoke test
//! (`tests/smoke.rs`: the seeds of [`SEEDS_DIR`] and deterministic mutations of them).
//!
//! | harness | entry point | property |
//! |---|---|---|
//! | [`gguf`] | `GgufInfo::from_bytes`, `Tokenizer::from_gguf`, `ChatTemplate::from_gguf`, `Model::load` | errors, never panics; tensors lie inside the file |
//! | [`tokenizer`] | SmolLM2's `Tokenizer` | `decode(encode(s)) == s`, streamed decode equals decode, `encode_ordinary` makes no control token |
//! | [`template`] | `ChatTemplate::render` (SmolLM2, Qwen2.5) | message text adds no control token |
//! | [`ingest`] | `overseer_index::parse_bytes`, `chunk_text` | documents have text; chunks are trimmed slices at their offsets, within the token budget |
//! | [`search`] | `Index::search` on a small index | at most `k` hits, finite scores, valid highlight spans |
//! | [`http`] | the server's router (`/api/search`, `/api/ask`, `/v1/chat/completions`) | no 5xx but 503 |
//!
//! The models the tokenizer and template harnesses read come from `models/` (as for the
//! `overseer-lm` tests: `scripts/fetch-models`).

mod gguf;
mod http;
mod ingest;
pub mod mutate;
mod search;
mod text;

pub use gguf::gguf;
pub use http::http;
pub use ingest::ingest;
pub use search::search;
pub use text::{template, tokenizer};

/// A harness: one input in, panics on a failed property.
pub type Harness = fn(&[u8]);

/// Every harness by name (the names of the cargo-fuzz targets and seed folders).
pub const HARNESSES: &[(&str, Harness)] = &[
    ("gguf", gguf),
    ("tokenizer", tokenizer),
    ("template", template),
    ("ingest", ingest),
    ("search", search),
    ("http", http),
];

/// The committed seed corpora, one folder per harness.
pub const SEEDS_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/seeds");

/// The folder of the default models.
pub(crate) const MODELS_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../models");
