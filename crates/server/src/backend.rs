//! The seams between the HTTP layer and the engines behind it. The router only knows
//! these traits; `adapters` implements them on the real index, assistant and model, and
//! the tests implement them with small in-memory doubles so every HTTP rule can be
//! checked without loading a model.

use std::ops::ControlFlow;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::BackendError;

/// A search as the API accepts it (`GET /api/search?q=...&k=...`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SearchParams {
    pub query: String,
    pub k: usize,
    /// `bm25`, `dense` or `hybrid` (the back end's default when `None`).
    pub mode: Option<String>,
    pub source: Option<String>,
    pub author: Option<String>,
    pub tag: Option<String>,
    /// Inclusive date bounds, `YYYY` or `YYYY-MM-DD`.
    pub since: Option<String>,
    pub until: Option<String>,
    /// One hit per chunk instead of the best chunk per document.
    pub chunk_level: bool,
}

/// Size of the literature index.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct LibraryStats {
    pub documents: u64,
    pub chunks: u64,
}

/// Documents to add through `POST /api/ingest`.
#[derive(Debug, Clone)]
pub enum IngestInput {
    /// Files or folders on the server's disk.
    Paths(Vec<PathBuf>),
    /// Records in the Alignment Research Dataset schema sent in the request.
    Records(Vec<serde_json::Value>),
}

/// The literature half: search, documents, ingestion. Called from blocking threads.
pub trait Literature: Send + Sync + 'static {
    /// Hits as `overseer search --json` result objects.
    fn search(&self, p: &SearchParams) -> Result<Vec<serde_json::Value>, BackendError>;
    /// Metadata and passages of one document; `None` when the id is unknown.
    fn document(&self, id: &str) -> Result<Option<serde_json::Value>, BackendError>;
    fn stats(&self) -> Result<LibraryStats, BackendError>;
    /// Ingest and return a summary (counts added/updated/skipped/failed).
    fn ingest(&self, input: IngestInput) -> Result<serde_json::Value, BackendError>;
    /// Remove one document from search and document lookup. `None` when no document has
    /// this id; otherwise what was removed, as `DELETE /api/documents/{id}` answers it:
    /// `{"removed": id, "chunks_removed": n, "documents": left, "chunks": left}`.
    fn remove(&self, id: &str) -> Result<Option<serde_json::Value>, BackendError>;
}

/// One message of a conversation (OpenAI roles: system, user, assistant).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

/// A question for the literature assistant (`POST /api/ask`).
#[derive(Debug, Clone, PartialEq)]
pub struct AskParams {
    pub question: String,
    /// `default`, `concise` or `rookie`.
    pub mode: String,
    /// Earlier turns, oldest first, so follow-ups can be rewritten into standalone questions.
    pub history: Vec<ChatMessage>,
    pub k: usize,
    pub source: Option<String>,
}

/// What the assistant reports while it answers, in this order: `Retrieved`, `Token`*,
/// `Replace`?, `Citations`, `Followups`, `Done`.
#[derive(Debug, Clone, PartialEq)]
pub enum AskEvent {
    /// Retrieval finished: the passages the answer may cite, numbered from 1 in order.
    Retrieved {
        sources: Vec<serde_json::Value>,
        millis: u64,
    },
    Token(String),
    /// The text streamed so far is replaced by this (the labelled extractive fallback,
    /// or an abstention decided after generation).
    Replace(String),
    Citations(serde_json::Value),
    Followups(Vec<String>),
    /// The whole answer as `overseer ask --json` prints it.
    Done(serde_json::Value),
}

/// A steering or ablation intervention from a lab run, for `/v1/chat/completions`.
#[derive(Debug, Clone, PartialEq)]
pub enum Intervention {
    /// Add the run's direction times `coef` at its layer (positive induces refusal).
    Steer { run_dir: PathBuf, coef: f32 },
    /// Project the run's direction out of the residual stream everywhere.
    Ablate { run_dir: PathBuf },
}

/// A chat completion request after validation.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatParams {
    pub messages: Vec<ChatMessage>,
    pub max_tokens: usize,
    pub temperature: f32,
    pub top_p: f32,
    pub seed: Option<u64>,
    pub stop: Vec<String>,
    pub intervention: Option<Intervention>,
}

/// The result of a chat completion.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChatOutput {
    pub text: String,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    /// `stop` or `length` (OpenAI's `finish_reason`).
    pub finish_reason: String,
}

/// The model half. One instance lives on the generation worker thread and runs one job
/// at a time; every job gets a fresh KV-cache session. The callbacks return `Break` when
/// the client has gone: the implementation must stop generating soon after.
pub trait Generator: Send + 'static {
    /// A name for `model` fields and `/healthz`.
    fn model_name(&self) -> String;
    fn ask(
        &mut self,
        p: &AskParams,
        events: &mut dyn FnMut(AskEvent) -> ControlFlow<()>,
    ) -> Result<(), BackendError>;
    fn chat(
        &mut self,
        p: &ChatParams,
        on_text: &mut dyn FnMut(&str) -> ControlFlow<()>,
    ) -> Result<ChatOutput, BackendError>;
}

/// The digest half (optional: without it `POST /api/digests` answers 503): makes a
/// digest of the literature index with the server's chat backend writing the summaries.
/// Saving, the watermark and the summary cache stay with the caller (they live in the
/// server's data dir). Called from a blocking thread, beside chat: implementations must
/// not hold anything the generation worker needs for long.
pub trait Digester: Send + Sync + 'static {
    /// Whether summaries can be written (a chat backend is present).
    fn summarizes(&self) -> bool;
    /// Pick up the newest committed index generation and return its ingest sequence:
    /// the watermark a digest made from now on records.
    fn sequence(&self) -> Result<u64, BackendError>;
    /// Make a digest (not saved) of what `selection` takes. With `opts.summaries` and
    /// a backend the summaries are written, through `cache` when given.
    fn build(
        &self,
        selection: &overseer_rag::digest::Selection,
        opts: &overseer_rag::digest::DigestOptions,
        cache: Option<&mut overseer_rag::digest::SummaryCache>,
        progress: &mut dyn FnMut(overseer_rag::digest::DigestProgress),
    ) -> Result<overseer_rag::digest::Digest, BackendError>;
}
