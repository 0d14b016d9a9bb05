//! The router and the literature/lab/ops handlers. `router(state)` is the whole server:
//! tests drive it with `tower::ServiceExt::oneshot`, `overseer serve` puts it on a socket.

use std::convert::Infallible;
use std::path::PathBuf;
use std::time::Instant;

use axum::extract::rejection::QueryRejection;
use axum::extract::{DefaultBodyLimit, FromRequestParts, MatchedPath, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::{Stream, StreamExt, stream};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tower_http::cors::{AllowOrigin, Any, CorsLayer};

use crate::backend::{AskEvent, AskParams, ChatMessage, IngestInput, SearchParams};
use crate::error::{ApiError, BackendError};
use crate::security::{self, ApiJson, safe_document_id, safe_name};
use crate::state::AppState;
use crate::worker::{JobKind, SubmitError, Ticket, WorkerEvent};
use crate::{digest, openai, ui};

/// The whole HTTP service.
pub fn router(state: AppState) -> Router {
    let max_body = state.config.max_body_bytes;
    let max_ingest = state.config.max_ingest_bytes;
    let cors = cors_layer(&state.config.cors_origins);
    let mut app = Router::new()
        .route("/", get(ui::index))
        .route("/assets/{file}", get(ui::asset))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/api/openapi.json", get(ui::openapi))
        .route("/api/search", get(search))
        .route("/api/ask", post(ask))
        .route("/api/documents/{id}", get(document).delete(delete_document))
        .route(
            "/api/ingest",
            post(ingest).layer(DefaultBodyLimit::max(max_ingest)),
        )
        .route("/api/digests", get(digest::list).post(digest::create))
        .route("/api/digests/{id}", get(digest::get))
        .route("/api/digests/jobs/{job}", get(digest::job))
        .route("/api/lab/runs", get(lab_runs))
        .route("/api/lab/runs/{id}", get(lab_run))
        .route("/api/lab/runs/{id}/plots/{name}", get(lab_plot))
        .route("/v1/models", get(openai::models))
        .route("/v1/chat/completions", post(openai::chat_completions))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
            state.config.body_read_timeout,
        ))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            rate_limit_api,
        ))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            security::size_limits,
        ))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            record_metrics,
        ));
    if let Some(cors) = cors {
        app = app.layer(cors);
    }
    app.with_state(state)
}

fn cors_layer(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let layer = CorsLayer::new()
        .allow_methods([Method::GET, Method::POST, Method::DELETE])
        .allow_headers([header::CONTENT_TYPE, header::AUTHORIZATION]);
    if origins.iter().any(|o| o == "*") {
        return Some(layer.allow_origin(Any));
    }
    let list: Vec<HeaderValue> = origins
        .iter()
        .filter_map(|o| match HeaderValue::from_str(o) {
            Ok(v) => Some(v),
            Err(_) => {
                tracing::warn!(origin = %o, "ignoring an invalid CORS origin");
                None
            }
        })
        .collect();
    Some(layer.allow_origin(AllowOrigin::list(list)))
}

/// Counts and times every request by its route pattern (not its raw path, so ids do not
/// blow up the label set).
async fn record_metrics(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = req.method().to_string();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |m| m.as_str().to_string());
    let resp = next.run(req).await;
    state.metrics.record_request(
        &method,
        &route,
        resp.status().as_u16(),
        start.elapsed().as_secs_f64(),
    );
    resp
}

/// The rate limit covers the API, not the page, its assets, health checks or metrics.
async fn rate_limit_api(state: State<AppState>, req: Request, next: Next) -> Response {
    let p = req.uri().path();
    if p.starts_with("/api/") || p.starts_with("/v1/") {
        match security::rate_limit(state, req, next).await {
            Ok(r) => r,
            Err(e) => e.into_response(),
        }
    } else {
        next.run(req).await
    }
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such endpoint; see /api/openapi.json")
}

/// An authenticated admin request (see [`security::check_admin`] for the rules).
pub(crate) struct Admin;

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        security::check_admin(state, &parts.headers).map(|()| Admin)
    }
}

/// `axum::Query` with a JSON 400 that names the bad parameter.
pub(crate) struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(v)| ApiQuery(v))
            .map_err(|e: QueryRejection| {
                ApiError::bad_request(format!("invalid query parameters: {}", e.body_text()))
            })
    }
}

/// Run blocking back-end work off the async threads (the digest endpoints too).
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, BackendError> + Send + 'static,
) -> Result<T, ApiError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(ApiError::from),
        Err(e) => {
            tracing::error!(error = %e, "blocking task failed");
            Err(ApiError::internal())
        }
    }
}

async fn healthz(State(state): State<AppState>) -> Response {
    let lit = state.literature.clone();
    let stats = blocking(move || lit.stats()).await.ok();
    let ready = state.is_ready();
    let body = json!({
        "status": if ready { "ok" } else { "starting" },
        "documents": stats.map(|s| s.documents),
        "chunks": stats.map(|s| s.chunks),
        "model": state.worker.as_ref().map(|w| w.model_name().to_string()),
        "admin": state.config.admin_token.is_some(),
        "version": env!("CARGO_PKG_VERSION"),
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SearchQuery {
    q: Option<String>,
    k: Option<usize>,
    mode: Option<String>,
    source: Option<String>,
    author: Option<String>,
    tag: Option<String>,
    since: Option<String>,
    until: Option<String>,
    chunks: Option<bool>,
}

/// `k` (results wanted) must be within 1..=max: out of range is a 400, not a silent clamp.
fn check_k(k: usize, max: usize) -> Result<usize, ApiError> {
    if (1..=max).contains(&k) {
        Ok(k)
    } else {
        Err(ApiError::bad_request(format!(
            "k must be between 1 and {max}, not {k}"
        )))
    }
}

fn nonempty(s: Option<String>) -> Option<String> {
    s.map(|v| v.trim().to_string()).filter(|v| !v.is_empty())
}

async fn search(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<SearchQuery>,
) -> Result<Json<Value>, ApiError> {
    let cfg = &state.config;
    let query = q.q.unwrap_or_default();
    if query.trim().is_empty() {
        return Err(ApiError::bad_request("missing query: pass ?q=..."));
    }
    if query.chars().count() > cfg.max_text_chars {
        return Err(ApiError::too_large(format!(
            "query is over {} characters",
            cfg.max_text_chars
        )));
    }
    if let Some(m) = &q.mode
        && !matches!(m.as_str(), "bm25" | "dense" | "hybrid")
    {
        return Err(ApiError::bad_request(
            "mode must be one of bm25, dense, hybrid",
        ));
    }
    let k = check_k(q.k.unwrap_or(10), cfg.max_k)?;
    let params = SearchParams {
        query,
        k,
        mode: q.mode,
        source: nonempty(q.source),
        author: nonempty(q.author),
        tag: nonempty(q.tag),
        since: nonempty(q.since),
        until: nonempty(q.until),
        chunk_level: q.chunks.unwrap_or(false),
    };
    let lit = state.literature.clone();
    let results = blocking(move || lit.search(&params)).await?;
    Ok(Json(json!({ "results": results })))
}

async fn document(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    if !safe_document_id(&id) {
        return Err(ApiError::not_found("no such document"));
    }
    let lit = state.literature.clone();
    match blocking(move || lit.document(&id)).await? {
        Some(doc) => Ok(Json(doc)),
        None => Err(ApiError::not_found("no such document")),
    }
}

async fn delete_document(
    _admin: Admin,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    if !safe_document_id(&id) {
        return Err(ApiError::not_found("no such document"));
    }
    let lit = state.literature.clone();
    let id2 = id.clone();
    match blocking(move || lit.remove(&id2)).await? {
        Some(summary) => {
            tracing::info!(id = %id, "document removed");
            Ok(Json(summary))
        }
        None => Err(ApiError::not_found("no such document")),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct IngestRequest {
    /// Files or folders on the server.
    #[serde(default)]
    paths: Vec<PathBuf>,
    /// Records in the Alignment Research Dataset schema.
    #[serde(default)]
    documents: Vec<Value>,
}

async fn ingest(
    _admin: Admin,
    State(state): State<AppState>,
    ApiJson(req): ApiJson<IngestRequest>,
) -> Result<Json<Value>, ApiError> {
    let input = match (req.paths.is_empty(), req.documents.is_empty()) {
        (false, true) => {
            if let Some(p) = req.paths.iter().find(|p| !p.exists()) {
                return Err(ApiError::bad_request(format!(
                    "path {} does not exist on the server",
                    p.display()
                )));
            }
            IngestInput::Paths(req.paths)
        }
        (true, false) => {
            if let Some(i) = req.documents.iter().position(|d| !d.is_object()) {
                return Err(ApiError::bad_request(format!(
                    "documents[{i}] is not a JSON object"
                )));
            }
            IngestInput::Records(req.documents)
        }
        _ => {
            return Err(ApiError::bad_request(
                "send exactly one of \"paths\" (files on the server) or \"documents\" (ARD records)",
            ));
        }
    };
    let lit = state.literature.clone();
    let summary = blocking(move || lit.ingest(input)).await?;
    Ok(Json(summary))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AskRequest {
    question: String,
    mode: Option<String>,
    #[serde(default)]
    history: Vec<ChatMessage>,
    k: Option<usize>,
    source: Option<String>,
}

/// Submit a job or turn a refusal into 503 (+ Retry-After when the queue is full).
pub(crate) fn submit(state: &AppState, kind: JobKind) -> Result<Ticket, ApiError> {
    let Some(worker) = &state.worker else {
        return Err(ApiError::unavailable(
            "no model is loaded on this server, so it cannot generate",
        ));
    };
    worker.submit(kind).map_err(|e| match e {
        SubmitError::QueueFull => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "busy",
            "the model is busy and its queue is full; retry shortly",
        )
        .with_retry_after(5),
        SubmitError::Stopped => {
            tracing::error!("generation worker has stopped");
            ApiError::internal()
        }
    })
}

fn sse_json(name: &str, v: &Value) -> Event {
    Event::default().event(name).data(v.to_string())
}

/// The error event of a stream: the client sees the code and a safe message.
pub(crate) fn error_payload(e: BackendError) -> Value {
    ApiError::from(e).body()
}

fn ask_events(ev: WorkerEvent) -> Vec<Event> {
    match ev {
        WorkerEvent::Ask(AskEvent::Retrieved { sources, millis }) => vec![
            sse_json("retrieval", &json!({"ms": millis, "count": sources.len()})),
            sse_json("sources", &json!({ "sources": sources })),
        ],
        WorkerEvent::Ask(AskEvent::Token(t)) => vec![sse_json("token", &json!({ "text": t }))],
        WorkerEvent::Ask(AskEvent::Replace(t)) => {
            vec![sse_json("replace", &json!({ "text": t }))]
        }
        WorkerEvent::Ask(AskEvent::Citations(c)) => {
            vec![sse_json("citations", &json!({ "citations": c }))]
        }
        WorkerEvent::Ask(AskEvent::Followups(f)) => {
            vec![sse_json("followups", &json!({ "followups": f }))]
        }
        WorkerEvent::Ask(AskEvent::Done(answer)) => vec![sse_json("done", &answer)],
        WorkerEvent::Failed(e) => vec![sse_json("error", &error_payload(e))],
        WorkerEvent::Text(_) | WorkerEvent::ChatDone(_) => Vec::new(),
    }
}

/// The SSE stream of a ticket. It owns the ticket's cancel guard: when the client
/// disconnects, hyper drops the stream and the job is cancelled.
pub(crate) fn ticket_stream<F>(
    ticket: Ticket,
    mut map: F,
) -> impl Stream<Item = Result<Event, Infallible>>
where
    F: FnMut(WorkerEvent) -> Vec<Event> + Send + 'static,
{
    let Ticket { events, cancel } = ticket;
    UnboundedReceiverStream::new(events).flat_map(move |ev| {
        let _held = &cancel;
        stream::iter(map(ev).into_iter().map(Ok))
    })
}

async fn ask(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<AskRequest>,
) -> Result<Response, ApiError> {
    let cfg = &state.config;
    let question = req.question.trim().to_string();
    if question.is_empty() {
        return Err(ApiError::bad_request("\"question\" is empty"));
    }
    if question.chars().count() > cfg.max_text_chars {
        return Err(ApiError::too_large(format!(
            "question is over {} characters",
            cfg.max_text_chars
        )));
    }
    let mode = req.mode.unwrap_or_else(|| "default".into());
    if !matches!(mode.as_str(), "default" | "concise" | "rookie") {
        return Err(ApiError::bad_request(
            "mode must be one of default, concise, rookie",
        ));
    }
    if let Some(m) = req
        .history
        .iter()
        .find(|m| !matches!(m.role.as_str(), "user" | "assistant"))
    {
        return Err(ApiError::bad_request(format!(
            "history roles must be user or assistant, not {:?}",
            m.role
        )));
    }
    let history_chars: usize = req.history.iter().map(|m| m.content.chars().count()).sum();
    if history_chars > cfg.max_chat_chars {
        return Err(ApiError::too_large(format!(
            "history is over {} characters",
            cfg.max_chat_chars
        )));
    }
    // The CLI's default too: the same question gets the same answer.
    let k = check_k(req.k.unwrap_or(5), cfg.max_k)?;
    let params = AskParams {
        question,
        mode,
        history: req.history,
        k,
        source: nonempty(req.source),
    };
    let ticket = submit(&state, JobKind::Ask(params))?;
    let stream = ticket_stream(ticket, ask_events);
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}

async fn lab_runs(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let lab = state.lab.clone();
    let runs =
        blocking(move || Ok(lab.list().iter().map(|r| r.summary()).collect::<Vec<_>>())).await?;
    Ok(Json(json!({ "runs": runs })))
}

async fn lab_run(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let lab = state.lab.clone();
    match blocking(move || Ok(lab.find(&id).map(|r| r.detail()))).await? {
        Some(v) => Ok(Json(v)),
        None => Err(ApiError::not_found("no such lab run")),
    }
}

async fn lab_plot(
    State(state): State<AppState>,
    Path((id, name)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    if !safe_name(&id) || !safe_name(&name) {
        return Err(ApiError::not_found("no such plot"));
    }
    let lab = state.lab.clone();
    let svg = blocking(move || {
        Ok(lab
            .find(&id)
            .and_then(|r| r.plot(&name))
            .and_then(|p| std::fs::read(p).ok()))
    })
    .await?;
    match svg {
        Some(bytes) => Ok((
            [
                (header::CONTENT_TYPE, "image/svg+xml"),
                // An SVG may carry script; never let it run in our origin.
                (
                    header::CONTENT_SECURITY_POLICY,
                    "default-src 'none'; style-src 'unsafe-inline'; sandbox",
                ),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            ],
            bytes,
        )
            .into_response()),
        None => Err(ApiError::not_found("no such plot")),
    }
}

/// Serve the router on a bound listener until Ctrl-C, with each client's address
/// available to the rate limiter.
///
/// HTTP/1 connections are served by hyper with a timer, so
/// [`ServerConfig::header_read_timeout`](crate::ServerConfig) closes connections that
/// send no complete request head in time, idle kept-alive ones included (`axum::serve`
/// sets no timer, so a stalled connection stayed open for good). On Ctrl-C the server
/// stops accepting and waits for the requests in flight.
pub async fn serve(state: AppState, listener: tokio::net::TcpListener) -> std::io::Result<()> {
    serve_until(state, listener, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await
}

/// [`serve`] until `shutdown` completes.
pub async fn serve_until(
    state: AppState,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    use axum::extract::ConnectInfo;
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::service::TowerToHyperService;
    use tower::ServiceExt as _;

    let header_timeout = state.config.header_read_timeout;
    let app = router(state);
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .keep_alive(true);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait, do not spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let svc =
            app.clone()
                .map_request(move |mut req: axum::http::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(ConnectInfo(peer));
                    req.map(axum::body::Body::new)
                });
        let conn = builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(svc));
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, %peer, "connection ended with an error");
            }
        });
    }
    graceful.shutdown().await;
    Ok(())
}
