//! `overseer-server`: the HTTP API and embedded web UI behind `overseer serve`.
//!
//! [`router`] builds the whole service from an [`AppState`]; the state holds the back ends
//! behind traits ([`Literature`] for search/documents/ingest, [`Generator`] for the
//! model, optionally [`Digester`] for digests), so the HTTP rules are tested without a
//! model and `overseer serve` plugs in the real index, assistant and model through
//! [`IndexLibrary`], [`AssistantGenerator`] and [`IndexDigester`]. Generation runs on one
//! worker thread fed by a bounded queue; see the `worker` module; a digest builds on its
//! own thread, one at a time; see the `digest` module.

mod adapters;
mod api;
mod backend;
mod config;
mod digest;
mod error;
mod lab;
mod metrics;
mod openai;
mod security;
mod state;
mod ui;
mod worker;

pub use adapters::{AssistantGenerator, IndexDigester, IndexLibrary};
pub use api::{router, serve, serve_until};
pub use backend::{
    AskEvent, AskParams, ChatMessage, ChatOutput, ChatParams, Digester, Generator, IngestInput,
    Intervention, LibraryStats, Literature, SearchParams,
};
pub use config::ServerConfig;
pub use error::{ApiError, BackendError, Error, Result};
pub use metrics::Metrics;
pub use state::AppState;
