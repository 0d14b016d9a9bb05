//! The real back ends behind the server's traits: [`IndexLibrary`] puts the literature
//! index behind [`Literature`], [`AssistantGenerator`] puts the grounded-answer pipeline
//! and its chat backend (local GGUF model or OpenAI-compatible server) behind
//! [`Generator`], [`IndexDigester`] makes digests of the same index with the same chat
//! backend behind [`Digester`]. Errors are sorted into "your request" (400), "not possible now" (503)
//! and "internal" (500, details only in the log).

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use overseer_index::{Embedder, Filters, Index, IngestOptions, Mode, NoProgress, SearchRequest};
use overseer_rag::{
    Assistant, AssistantConfig, Backend, ChatRole, Completion, GenParams, IndexRetriever, Retriever,
};
use serde_json::Value;

use crate::backend::{
    AskEvent, AskParams, ChatMessage, ChatOutput, ChatParams, Digester, Generator, IngestInput,
    Intervention, LibraryStats, Literature, SearchParams,
};
use crate::error::BackendError;

/// How often a long-lived server looks for a newer committed index generation (an
/// `overseer ingest` run beside it).
const REFRESH_EVERY: Duration = Duration::from_secs(5);

fn index_error(e: overseer_index::Error) -> BackendError {
    use overseer_index::Error as E;
    match e {
        E::InvalidArgument(m) => BackendError::BadRequest(m),
        E::Locked { .. } => {
            BackendError::Unavailable("another ingest is running on this index; retry later".into())
        }
        e @ (E::IncompatibleVersion { .. } | E::EmbedderMismatch { .. } | E::Corrupt { .. }) => {
            tracing::error!(error = %e, "index unusable");
            BackendError::Unavailable(
                "the index must be rebuilt (re-ingest); see the server log".into(),
            )
        }
        e => BackendError::Internal(e.to_string()),
    }
}

fn rag_error(e: overseer_rag::Error) -> BackendError {
    use overseer_rag::Error as E;
    match e {
        E::InvalidArgument(m) => BackendError::BadRequest(m),
        e @ E::QuestionTooLong { .. } => BackendError::BadRequest(e.to_string()),
        E::EmptyIndex => {
            BackendError::Unavailable("the index is empty: ingest documents first".into())
        }
        E::Index(e) => index_error(e),
        e @ (E::Connect { .. } | E::Timeout { .. } | E::Status { .. } | E::BadResponse { .. }) => {
            tracing::error!(error = %e, "LLM server failed");
            BackendError::Unavailable(
                "the language-model server is not answering; see the server log".into(),
            )
        }
        e => BackendError::Internal(e.to_string()),
    }
}

/// The literature index of a data directory, shared by search and the assistant.
pub struct IndexLibrary {
    data_dir: PathBuf,
    index: Arc<Index>,
    embedder: Arc<dyn Embedder>,
    last_refresh: Mutex<Instant>,
    /// One API ingest at a time.
    ingesting: Mutex<()>,
}

impl IndexLibrary {
    /// Open (or create empty) the index in `data_dir`.
    pub fn open(data_dir: &Path, embedder: Arc<dyn Embedder>) -> Result<Self, BackendError> {
        let index = Index::open(data_dir, embedder.clone()).map_err(index_error)?;
        Ok(IndexLibrary {
            data_dir: data_dir.to_path_buf(),
            index: Arc::new(index),
            embedder,
            last_refresh: Mutex::new(Instant::now()),
            ingesting: Mutex::new(()),
        })
    }

    /// The index as the assistant's retriever (same snapshot, same refreshes).
    pub fn retriever(&self) -> Arc<dyn Retriever> {
        Arc::new(IndexRetriever::new(self.index.clone()))
    }

    pub fn embedder(&self) -> Arc<dyn Embedder> {
        self.embedder.clone()
    }

    /// Digests of this index (the same snapshot and refreshes), summarised by `backend`
    /// (`None`: digests without summaries only), filed under the research agenda's topics.
    pub fn digester(&self, backend: Option<Arc<dyn Backend>>) -> IndexDigester {
        IndexDigester {
            index: self.index.clone(),
            backend,
            taxonomy: overseer_rag::digest::Taxonomy::agenda(),
        }
    }

    fn maybe_refresh(&self) {
        let mut last = self.last_refresh.lock().unwrap_or_else(|p| p.into_inner());
        if last.elapsed() >= REFRESH_EVERY {
            *last = Instant::now();
            if let Err(e) = self.index.refresh() {
                tracing::warn!(error = %e, "index refresh failed");
            }
        }
    }
}

fn split(v: &Option<String>) -> Vec<String> {
    v.as_deref()
        .map(|s| {
            s.split(',')
                .map(str::trim)
                .filter(|x| !x.is_empty())
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
}

impl Literature for IndexLibrary {
    fn search(&self, p: &SearchParams) -> Result<Vec<Value>, BackendError> {
        self.maybe_refresh();
        let mut req = SearchRequest::new(p.query.clone(), p.k);
        if let Some(m) = &p.mode {
            req.mode = m.parse::<Mode>().map_err(index_error)?;
        }
        req.filters = Filters {
            source: split(&p.source),
            author: split(&p.author),
            tag: split(&p.tag),
            since: p.since.clone(),
            until: p.until.clone(),
        };
        req.chunk_level = p.chunk_level;
        let hits = self.index.search(&req).map_err(index_error)?;
        hits.iter()
            .map(|h| serde_json::to_value(h).map_err(|e| BackendError::Internal(e.to_string())))
            .collect()
    }

    fn document(&self, id: &str) -> Result<Option<Value>, BackendError> {
        self.maybe_refresh();
        match self.index.document(id).map_err(index_error)? {
            Some(d) => serde_json::to_value(&d)
                .map(Some)
                .map_err(|e| BackendError::Internal(e.to_string())),
            None => Ok(None),
        }
    }

    fn stats(&self) -> Result<LibraryStats, BackendError> {
        self.maybe_refresh();
        let s = self.index.stats().map_err(index_error)?;
        Ok(LibraryStats {
            documents: s.docs,
            chunks: s.chunks,
        })
    }

    fn ingest(&self, input: IngestInput) -> Result<Value, BackendError> {
        let _one = self.ingesting.lock().unwrap_or_else(|p| p.into_inner());
        let mut cleanup = None;
        let paths = match input {
            IngestInput::Paths(p) => p,
            IngestInput::Records(recs) => {
                // The index ingests files: write the records as one JSONL upload.
                let dir = self.data_dir.join("uploads");
                std::fs::create_dir_all(&dir).map_err(|e| {
                    BackendError::Internal(format!("create {}: {e}", dir.display()))
                })?;
                let stamp = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos());
                let file = dir.join(format!("upload-{stamp}.jsonl"));
                let mut text = String::new();
                for r in &recs {
                    text.push_str(&r.to_string());
                    text.push('\n');
                }
                std::fs::write(&file, text).map_err(|e| {
                    BackendError::Internal(format!("write {}: {e}", file.display()))
                })?;
                cleanup = Some(file.clone());
                vec![file]
            }
        };
        let result = overseer_index::ingest(
            &self.data_dir,
            &paths,
            self.embedder.clone(),
            &IngestOptions::default(),
            &NoProgress,
        );
        if let Some(f) = cleanup {
            let _ = std::fs::remove_file(f);
        }
        let summary = result.map_err(index_error)?;
        if let Err(e) = self.index.refresh() {
            tracing::warn!(error = %e, "index refresh after ingest failed");
        }
        // Each failure as {location, id, reason}.
        let failed = serde_json::to_value(&summary.failed)
            .map_err(|e| BackendError::Internal(format!("ingest summary: {e}")))?;
        Ok(serde_json::json!({
            "added": summary.added,
            "updated": summary.updated,
            "skipped": summary.skipped,
            "removed": summary.removed,
            "failed": failed,
            "documents": summary.docs,
            "chunks": summary.chunks,
            "seconds": summary.seconds,
        }))
    }

    fn remove(&self, id: &str) -> Result<Option<Value>, BackendError> {
        // Serialised with API ingests; an `overseer ingest` beside the server makes the
        // index answer `Locked` (503, retry).
        let _one = self.ingesting.lock().unwrap_or_else(|p| p.into_inner());
        let summary =
            overseer_index::remove_documents(&self.data_dir, &[id]).map_err(index_error)?;
        let Some(removed) = summary.removed.first() else {
            return Ok(None);
        };
        if let Err(e) = self.index.refresh() {
            tracing::warn!(error = %e, "index refresh after removal failed");
        }
        Ok(Some(serde_json::json!({
            "removed": removed.id,
            "chunks_removed": removed.chunks,
            "documents": summary.docs,
            "chunks": summary.chunks,
        })))
    }
}

/// Digests of the literature index, summarised by the server's chat backend (the one
/// the assistant uses: calls from both may interleave on the model, each with its own
/// session).
pub struct IndexDigester {
    index: Arc<Index>,
    backend: Option<Arc<dyn Backend>>,
    taxonomy: overseer_rag::digest::Taxonomy,
}

impl IndexDigester {
    /// File items under these topics instead of the research agenda's.
    pub fn with_taxonomy(mut self, taxonomy: overseer_rag::digest::Taxonomy) -> Self {
        self.taxonomy = taxonomy;
        self
    }
}

impl Digester for IndexDigester {
    fn summarizes(&self) -> bool {
        self.backend.is_some()
    }

    fn sequence(&self) -> Result<u64, BackendError> {
        self.index.refresh().map_err(index_error)?;
        Ok(self.index.sequence())
    }

    fn build(
        &self,
        selection: &overseer_rag::digest::Selection,
        opts: &overseer_rag::digest::DigestOptions,
        cache: Option<&mut overseer_rag::digest::SummaryCache>,
        progress: &mut dyn FnMut(overseer_rag::digest::DigestProgress),
    ) -> Result<overseer_rag::digest::Digest, BackendError> {
        overseer_rag::digest::build(
            &self.index,
            &self.taxonomy,
            selection,
            opts,
            self.backend.as_deref(),
            cache,
            progress,
        )
        .map_err(rag_error)
    }
}

/// A backend that stops generating once its flag is set (the client went away).
struct Cancellable {
    inner: Arc<dyn Backend>,
    cancel: Arc<AtomicBool>,
}

impl Backend for Cancellable {
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn context_window(&self) -> usize {
        self.inner.context_window()
    }
    fn count_tokens(&self, text: &str) -> usize {
        self.inner.count_tokens(text)
    }
    fn chat(
        &self,
        messages: &[overseer_rag::ChatMessage],
        params: &GenParams,
        on_text: &mut dyn FnMut(&str) -> ControlFlow<()>,
    ) -> overseer_rag::Result<Completion> {
        if self.cancel.load(Ordering::SeqCst) {
            return Ok(Completion {
                cancelled: true,
                ..Completion::default()
            });
        }
        let cancel = &self.cancel;
        self.inner.chat(messages, params, &mut |t| {
            if cancel.load(Ordering::SeqCst) {
                return ControlFlow::Break(());
            }
            on_text(t)
        })
    }
}

/// The grounded-answer pipeline and its chat backend on the generation worker.
pub struct AssistantGenerator {
    retriever: Arc<dyn Retriever>,
    backend: Arc<dyn Backend>,
    embedder: Option<Arc<dyn Embedder>>,
    config: AssistantConfig,
    name: String,
    /// The local model itself, for chat completions with steering or ablation hooks.
    local: Option<Arc<overseer_lm::Model>>,
}

impl AssistantGenerator {
    pub fn new(
        retriever: Arc<dyn Retriever>,
        backend: Arc<dyn Backend>,
        embedder: Option<Arc<dyn Embedder>>,
        config: AssistantConfig,
        name: impl Into<String>,
    ) -> Self {
        AssistantGenerator {
            retriever,
            backend,
            embedder,
            config,
            name: name.into(),
            local: None,
        }
    }

    /// Serve `/v1/chat/completions` from this local model (with lab interventions)
    /// instead of through the backend.
    pub fn with_local_model(mut self, model: Arc<overseer_lm::Model>) -> Self {
        self.local = Some(model);
        self
    }
}

fn lm_error(e: overseer_lm::Error) -> BackendError {
    match e {
        e @ overseer_lm::Error::ContextOverflow { .. } => {
            BackendError::BadRequest(format!("the conversation does not fit the model: {e}"))
        }
        e => BackendError::Internal(e.to_string()),
    }
}

fn lm_messages(p: &ChatParams) -> Vec<overseer_lm::Message> {
    use overseer_lm::{Message, Role};
    p.messages
        .iter()
        .map(|m| {
            let role = match m.role.as_str() {
                "system" => Role::System,
                "assistant" => Role::Assistant,
                _ => Role::User,
            };
            Message::new(role, m.content.clone())
        })
        .collect()
}

/// Generate on the local model with an optional hook.
fn run_local(
    model: &overseer_lm::Model,
    p: &ChatParams,
    hook: Option<&mut dyn overseer_lm::Hook>,
    on_text: &mut dyn FnMut(&str) -> ControlFlow<()>,
) -> overseer_lm::Result<ChatOutput> {
    use overseer_lm::{GenerateOptions, SamplingParams, StopReason};
    let prompt = model.encode_chat(&lm_messages(p), true)?;
    let opts = GenerateOptions {
        max_tokens: p.max_tokens,
        sampling: SamplingParams {
            temperature: p.temperature,
            top_k: 0,
            top_p: p.top_p,
            seed: p.seed.unwrap_or(42),
        },
        stop: p.stop.clone(),
        ..GenerateOptions::default()
    };
    let mut session = model.session(1);
    let g = overseer_lm::generate(model, &mut session, &prompt, &opts, hook, on_text)?;
    Ok(ChatOutput {
        text: g.text,
        prompt_tokens: g.prompt_tokens,
        completion_tokens: g.tokens.len(),
        finish_reason: match g.stop_reason {
            StopReason::MaxTokens | StopReason::ContextFull => "length".into(),
            _ => "stop".into(),
        },
    })
}

/// A chat completion on the local model, under a lab intervention if one is asked for.
fn chat_local(
    model: &overseer_lm::Model,
    p: &ChatParams,
    on_text: &mut dyn FnMut(&str) -> ControlFlow<()>,
) -> Result<ChatOutput, BackendError> {
    let mut hook: Option<Box<dyn overseer_lm::Hook>> = match &p.intervention {
        None => None,
        Some(iv) => {
            let (dir, kind) = match iv {
                Intervention::Steer { run_dir, coef } => {
                    (run_dir, overseer_lab::Intervention::Add(f64::from(*coef)))
                }
                Intervention::Ablate { run_dir } => (run_dir, overseer_lab::Intervention::Ablate),
            };
            let direction = overseer_lab::load_direction(dir).map_err(|e| {
                tracing::warn!(error = %e, "lab run has no usable direction");
                BackendError::Unavailable("this lab run has no usable direction.safetensors".into())
            })?;
            direction.hook(model, kind).map_err(|e| match e {
                overseer_lab::Error::DirectionMismatch { .. } => {
                    BackendError::BadRequest(format!("this lab run's {e}"))
                }
                e => BackendError::Internal(e.to_string()),
            })?
        }
    };
    let hook = hook
        .as_mut()
        .map(|h| &mut **h as &mut dyn overseer_lm::Hook);
    run_local(model, p, hook, on_text).map_err(lm_error)
}

/// Pair a flat history into (question, answer) turns; unpaired messages are dropped.
fn history_pairs(history: &[ChatMessage]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut pending: Option<&str> = None;
    for m in history {
        match m.role.as_str() {
            "user" => pending = Some(&m.content),
            "assistant" => {
                if let Some(q) = pending.take() {
                    out.push((q.to_string(), m.content.clone()));
                }
            }
            _ => {}
        }
    }
    out
}

impl Generator for AssistantGenerator {
    fn model_name(&self) -> String {
        self.name.clone()
    }

    fn ask(
        &mut self,
        p: &AskParams,
        events: &mut dyn FnMut(AskEvent) -> ControlFlow<()>,
    ) -> Result<(), BackendError> {
        let cancel = Arc::new(AtomicBool::new(false));
        let backend: Arc<dyn Backend> = Arc::new(Cancellable {
            inner: self.backend.clone(),
            cancel: cancel.clone(),
        });
        let assistant = Assistant::new(
            self.retriever.clone(),
            backend,
            self.embedder.clone(),
            self.config.clone(),
        );
        let req = overseer_rag::AskRequest {
            question: p.question.clone(),
            history: history_pairs(&p.history),
            mode: p.mode.parse().map_err(rag_error)?,
            k: p.k,
            source: p.source.clone(),
            followups: true,
        };
        let t0 = Instant::now();
        let mut send = |ev: AskEvent| {
            if !cancel.load(Ordering::SeqCst) && events(ev).is_break() {
                cancel.store(true, Ordering::SeqCst);
            }
        };
        let answer = assistant
            .ask(&req, &mut |ev| match ev {
                overseer_rag::AskEvent::Retrieved { hits } => send(AskEvent::Retrieved {
                    sources: hits
                        .iter()
                        .filter_map(|h| serde_json::to_value(h).ok())
                        .collect(),
                    millis: t0.elapsed().as_millis() as u64,
                }),
                overseer_rag::AskEvent::Token(t) => send(AskEvent::Token(t)),
                overseer_rag::AskEvent::Replace(t) => send(AskEvent::Replace(t)),
                overseer_rag::AskEvent::Citations(c) => send(AskEvent::Citations(
                    serde_json::to_value(&c).unwrap_or(Value::Null),
                )),
                overseer_rag::AskEvent::Followups(f) => send(AskEvent::Followups(f)),
                overseer_rag::AskEvent::Rewritten(_) | overseer_rag::AskEvent::Done => {}
            })
            .map_err(rag_error)?;
        let done =
            serde_json::to_value(&answer).map_err(|e| BackendError::Internal(e.to_string()))?;
        send(AskEvent::Done(done));
        Ok(())
    }

    fn chat(
        &mut self,
        p: &ChatParams,
        on_text: &mut dyn FnMut(&str) -> ControlFlow<()>,
    ) -> Result<ChatOutput, BackendError> {
        if let Some(model) = &self.local {
            return chat_local(model, p, on_text);
        }
        if p.intervention.is_some() {
            return Err(BackendError::Unavailable(
                "steering and ablation need the local model; this server generates with a remote \
                 LLM server"
                    .into(),
            ));
        }
        let messages: Vec<overseer_rag::ChatMessage> = p
            .messages
            .iter()
            .map(|m| overseer_rag::ChatMessage {
                role: match m.role.as_str() {
                    "system" => ChatRole::System,
                    "assistant" => ChatRole::Assistant,
                    _ => ChatRole::User,
                },
                content: m.content.clone(),
            })
            .collect();
        let params = GenParams {
            max_tokens: p.max_tokens,
            temperature: p.temperature,
            seed: p.seed.unwrap_or(42),
            stop: p.stop.clone(),
            ..GenParams::default()
        };
        let c = self
            .backend
            .chat(&messages, &params, on_text)
            .map_err(rag_error)?;
        Ok(ChatOutput {
            text: c.text,
            prompt_tokens: c.prompt_tokens.unwrap_or(0),
            completion_tokens: c.completion_tokens,
            finish_reason: if c.completion_tokens >= p.max_tokens {
                "length".into()
            } else {
                "stop".into()
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_is_paired_into_turns() {
        let m = |r: &str, c: &str| ChatMessage {
            role: r.into(),
            content: c.into(),
        };
        let h = [
            m("user", "q1"),
            m("assistant", "a1"),
            m("assistant", "stray"),
            m("user", "q2"),
        ];
        assert_eq!(history_pairs(&h), [("q1".to_string(), "a1".to_string())]);
    }
}
