//! The HTTP rules and every endpoint, driven through `tower::ServiceExt::oneshot` on the
//! real router. The back ends are small in-memory doubles that record what they were
//! asked, so the tests check what the HTTP layer does (status codes, limits, auth, event
//! order, cancellation, queueing), not canned answers.

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use overseer_server::{
    AppState, AskEvent, AskParams, BackendError, ChatOutput, ChatParams, Generator, IndexLibrary,
    IngestInput, Intervention, LibraryStats, Literature, SearchParams, ServerConfig, router,
};
use serde_json::{Value, json};
use tower::ServiceExt;

// ---------- test doubles ----------

#[derive(Default)]
struct Library {
    docs: Mutex<Vec<(String, String, String)>>, // id, title, text
    searches: Mutex<Vec<SearchParams>>,
    ingested: Mutex<Vec<String>>,
    fail_with_internal: AtomicBool,
}

impl Library {
    fn with_docs() -> Arc<Library> {
        let lib = Library::default();
        {
            let mut d = lib.docs.lock().expect("lock");
            d.push((
                "doc1".into(),
                "Gradient hacking".into(),
                "A model could influence its own gradient updates.".into(),
            ));
            d.push((
                "doc2".into(),
                "Reward hacking".into(),
                "Agents exploit flaws in the reward.".into(),
            ));
            d.push((
                "doc3".into(),
                "Deceptive alignment".into(),
                "A mesa-optimizer may hide its goals to avoid gradient changes.".into(),
            ));
        }
        Arc::new(lib)
    }
}

impl Literature for Library {
    fn search(&self, p: &SearchParams) -> Result<Vec<Value>, BackendError> {
        if self.fail_with_internal.load(Ordering::SeqCst) {
            return Err(BackendError::Internal(
                "tantivy failed at /secret/path/index".into(),
            ));
        }
        self.searches.lock().expect("lock").push(p.clone());
        let q = p.query.to_lowercase();
        let hits: Vec<Value> = self
            .docs
            .lock()
            .expect("lock")
            .iter()
            .filter(|(_, t, x)| q.split_whitespace().any(|w| t.to_lowercase().contains(w) || x.to_lowercase().contains(w)))
            .take(p.k)
            .map(|(id, t, x)| json!({"id": id, "title": t, "url": format!("https://example.org/{id}"), "score": 1.0, "passage": x}))
            .collect();
        Ok(hits)
    }
    fn document(&self, id: &str) -> Result<Option<Value>, BackendError> {
        Ok(self.docs.lock().expect("lock").iter().find(|(d, _, _)| d == id).map(
            |(id, t, x)| json!({"id": id, "title": t, "chunks": [{"text": x, "heading_path": []}]}),
        ))
    }
    fn stats(&self) -> Result<LibraryStats, BackendError> {
        let n = self.docs.lock().expect("lock").len() as u64;
        Ok(LibraryStats {
            documents: n,
            chunks: n,
        })
    }
    fn ingest(&self, input: IngestInput) -> Result<Value, BackendError> {
        let mut added = 0;
        match input {
            IngestInput::Records(recs) => {
                for r in recs {
                    let id = r["id"].as_str().unwrap_or("x").to_string();
                    self.ingested.lock().expect("lock").push(id.clone());
                    self.docs.lock().expect("lock").push((
                        id,
                        r["title"].as_str().unwrap_or("").into(),
                        r["text"].as_str().unwrap_or("").into(),
                    ));
                    added += 1;
                }
            }
            IngestInput::Paths(p) => {
                for p in p {
                    self.ingested
                        .lock()
                        .expect("lock")
                        .push(p.display().to_string());
                    added += 1;
                }
            }
        }
        Ok(json!({"added": added, "updated": 0, "skipped": 0, "failed": 0}))
    }
    fn remove(&self, id: &str) -> Result<Option<Value>, BackendError> {
        let mut d = self.docs.lock().expect("lock");
        let before = d.len();
        d.retain(|(x, _, _)| x != id);
        Ok((d.len() != before).then(
            || json!({"removed": id, "chunks_removed": 1, "documents": d.len(), "chunks": d.len()}),
        ))
    }
}

/// What the fake model saw and did.
#[derive(Default)]
struct ModelLog {
    asks: Mutex<Vec<AskParams>>,
    chats: Mutex<Vec<ChatParams>>,
    tokens_emitted: AtomicUsize,
    stopped_by_client: AtomicBool,
    finished: AtomicBool,
}

struct FakeModel {
    log: Arc<ModelLog>,
    /// Tokens per answer and the pause between them.
    tokens: usize,
    pause: Duration,
    /// When set, each job waits until this flag is cleared (to fill the queue).
    hold: Arc<AtomicBool>,
}

impl FakeModel {
    fn new(tokens: usize, pause: Duration) -> (Box<FakeModel>, Arc<ModelLog>, Arc<AtomicBool>) {
        let log = Arc::new(ModelLog::default());
        let hold = Arc::new(AtomicBool::new(false));
        (
            Box::new(FakeModel {
                log: log.clone(),
                tokens,
                pause,
                hold: hold.clone(),
            }),
            log,
            hold,
        )
    }
    fn wait_hold(&self) {
        while self.hold.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    fn emit(&self, i: usize) -> String {
        match i {
            0 => "Gradient hacking ".into(),
            1 => "is when a model shapes its training [1]. ".into(),
            _ => "more ".into(),
        }
    }
}

impl Generator for FakeModel {
    fn model_name(&self) -> String {
        "fake-model".into()
    }
    fn ask(
        &mut self,
        p: &AskParams,
        events: &mut dyn FnMut(AskEvent) -> ControlFlow<()>,
    ) -> Result<(), BackendError> {
        self.log.asks.lock().expect("lock").push(p.clone());
        self.wait_hold();
        if p.question.contains("explode") {
            return Err(BackendError::Internal(
                "model file /secret/model.gguf truncated".into(),
            ));
        }
        let src = json!({"id": "doc1", "title": "Gradient hacking", "url": "https://example.org/doc1", "passage": "A model could influence its own gradient updates.", "score": 1.0});
        if events(AskEvent::Retrieved {
            sources: vec![src],
            millis: 3,
        })
        .is_break()
        {
            return Ok(());
        }
        let mut answer = String::new();
        for i in 0..self.tokens {
            let t = self.emit(i);
            answer.push_str(&t);
            self.log.tokens_emitted.fetch_add(1, Ordering::SeqCst);
            if events(AskEvent::Token(t)).is_break() {
                self.log.stopped_by_client.store(true, Ordering::SeqCst);
                return Ok(());
            }
            std::thread::sleep(self.pause);
        }
        let cites = json!([{"n": 1, "id": "doc1", "title": "Gradient hacking", "url": "https://example.org/doc1", "passage": "A model could influence its own gradient updates.", "supported": true}]);
        let _ = events(AskEvent::Citations(cites.clone()));
        let _ = events(AskEvent::Followups(vec!["How could we detect it?".into()]));
        let _ = events(AskEvent::Done(
            json!({"answer": answer, "abstained": false, "citations": cites, "followups": ["How could we detect it?"], "timings": {}}),
        ));
        self.log.finished.store(true, Ordering::SeqCst);
        Ok(())
    }
    fn chat(
        &mut self,
        p: &ChatParams,
        on_text: &mut dyn FnMut(&str) -> ControlFlow<()>,
    ) -> Result<ChatOutput, BackendError> {
        self.log.chats.lock().expect("lock").push(p.clone());
        self.wait_hold();
        let mut text = String::new();
        let n = self.tokens.min(p.max_tokens);
        for i in 0..n {
            let t = format!("w{i} ");
            text.push_str(&t);
            self.log.tokens_emitted.fetch_add(1, Ordering::SeqCst);
            if on_text(&t).is_break() {
                self.log.stopped_by_client.store(true, Ordering::SeqCst);
                break;
            }
            std::thread::sleep(self.pause);
        }
        Ok(ChatOutput {
            text,
            prompt_tokens: 7,
            completion_tokens: n,
            finish_reason: if n == p.max_tokens {
                "length".into()
            } else {
                "stop".into()
            },
        })
    }
}

// ---------- helpers ----------

struct Fixture {
    state: AppState,
    lib: Arc<Library>,
    log: Arc<ModelLog>,
    hold: Arc<AtomicBool>,
    _tmp: tempfile::TempDir,
}

fn fixture_with(tokens: usize, pause: Duration, tweak: impl FnOnce(&mut ServerConfig)) -> Fixture {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut cfg = ServerConfig::new(tmp.path());
    cfg.rate_per_sec = 0;
    tweak(&mut cfg);
    let lib = Library::with_docs();
    let (model, log, hold) = FakeModel::new(tokens, pause);
    let state = AppState::new(cfg, lib.clone(), Some(model)).expect("state");
    Fixture {
        state,
        lib,
        log,
        hold,
        _tmp: tmp,
    }
}

fn fixture() -> Fixture {
    fixture_with(3, Duration::ZERO, |_| {})
}

impl Fixture {
    async fn send(&self, req: Request<Body>) -> Response<Body> {
        router(self.state.clone())
            .oneshot(req)
            .await
            .expect("infallible")
    }
    async fn get(&self, uri: &str) -> Response<Body> {
        self.send(Request::get(uri).body(Body::empty()).expect("request"))
            .await
    }
    async fn post_json(&self, uri: &str, body: &str) -> Response<Body> {
        self.send(
            Request::post(uri)
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(body.to_string()))
                .expect("request"),
        )
        .await
    }
    fn lab_dir(&self) -> PathBuf {
        self.state_dir().join("lab")
    }
    fn state_dir(&self) -> PathBuf {
        self._tmp.path().to_path_buf()
    }
}

async fn body_text(resp: Response<Body>) -> String {
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    String::from_utf8(bytes.to_vec()).expect("utf-8 body")
}

async fn body_json(resp: Response<Body>) -> Value {
    let text = body_text(resp).await;
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// Check an error response: status, JSON shape and code.
async fn expect_error(resp: Response<Body>, status: StatusCode, code: &str) -> String {
    assert_eq!(resp.status(), status);
    let v = body_json(resp).await;
    assert_eq!(v["error"], code, "{v}");
    let msg = v["message"]
        .as_str()
        .expect("message is a string")
        .to_string();
    assert!(!msg.is_empty());
    msg
}

/// Parse an SSE body into (event, data) pairs.
fn sse(text: &str) -> Vec<(String, String)> {
    text.split("\n\n")
        .filter_map(|block| {
            let mut ev = "message".to_string();
            let mut data = Vec::new();
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    ev = v.trim().to_string();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push(v.strip_prefix(' ').unwrap_or(v).to_string());
                }
            }
            (!data.is_empty()).then(|| (ev, data.join("\n")))
        })
        .collect()
}

fn write_lab_run(dir: &std::path::Path) {
    std::fs::create_dir_all(dir).expect("mkdir");
    std::fs::write(
        dir.join("report.json"),
        r#"{"model":"tiny","selected":{"layer":3,"position":-1},"kl":0.02,
            "baseline":{"harmful_refusal_rate":0.5,"harmless_refusal_rate":0.1},
            "ablation":{"harmful_refusal_rate":0.0,"harmless_refusal_rate":0.0},
            "addition":{"harmless_refusal_rate":0.8},
            "examples":[{"instruction":"hi","baseline":"I cannot","ablation":"Sure"}]}"#,
    )
    .expect("write");
    std::fs::write(dir.join("report.md"), "# Report\n").expect("write");
    std::fs::write(
        dir.join("layers.svg"),
        "<svg xmlns='http://www.w3.org/2000/svg'/>",
    )
    .expect("write");
}

// ---------- health, metrics, UI, OpenAPI ----------

#[tokio::test]
async fn healthz_reports_ready_with_counts() {
    let f = fixture();
    let r = f.get("/healthz").await;
    assert_eq!(r.status(), StatusCode::OK);
    let v = body_json(r).await;
    assert_eq!(v["status"], "ok");
    assert_eq!(v["documents"], 3);
    assert_eq!(v["model"], "fake-model");
    f.state.set_ready(false);
    assert_eq!(
        f.get("/healthz").await.status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
}

#[tokio::test]
async fn metrics_count_requests_by_route() {
    let f = fixture();
    f.get("/api/search?q=gradient").await;
    f.get("/api/documents/doc1").await;
    f.get("/api/documents/doc2").await;
    let r = f.get("/metrics").await;
    assert_eq!(r.status(), StatusCode::OK);
    let text = body_text(r).await;
    assert!(text.contains("overseer_http_requests_total{method=\"GET\",route=\"/api/documents/{id}\",status=\"200\"} 2"), "{text}");
    assert!(
        text.contains("overseer_http_request_duration_seconds_bucket"),
        "{text}"
    );
    assert!(text.contains("overseer_generation_queue_depth 0"), "{text}");
    assert!(
        text.contains("overseer_generation_tokens_per_second"),
        "{text}"
    );
}

#[tokio::test]
async fn ui_is_served_from_the_binary_with_a_strict_csp() {
    let f = fixture();
    let r = f.get("/").await;
    assert_eq!(r.status(), StatusCode::OK);
    let csp = r.headers()[header::CONTENT_SECURITY_POLICY]
        .to_str()
        .expect("ascii")
        .to_string();
    assert!(csp.contains("script-src 'self'"));
    let html = body_text(r).await;
    assert!(html.contains("/assets/app.js") && html.contains("id=\"ask-form\""));
    for (path, ct) in [
        ("/assets/app.js", "javascript"),
        ("/assets/app.css", "text/css"),
        ("/assets/favicon.svg", "svg"),
    ] {
        let r = f.get(path).await;
        assert_eq!(r.status(), StatusCode::OK, "{path}");
        assert!(
            r.headers()[header::CONTENT_TYPE]
                .to_str()
                .expect("ascii")
                .contains(ct)
        );
    }
    expect_error(
        f.get("/assets/../Cargo.toml").await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    expect_error(
        f.get("/assets/secret.txt").await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    expect_error(f.get("/nope").await, StatusCode::NOT_FOUND, "not_found").await;
}

#[tokio::test]
async fn openapi_document_lists_every_route() {
    let f = fixture();
    let v = body_json(f.get("/api/openapi.json").await).await;
    assert!(v["openapi"].as_str().expect("version").starts_with("3."));
    let paths = v["paths"].as_object().expect("paths");
    let routes = [
        ("get", "/healthz"),
        ("get", "/metrics"),
        ("get", "/api/openapi.json"),
        ("get", "/api/search"),
        ("post", "/api/ask"),
        ("get", "/api/documents/{id}"),
        ("delete", "/api/documents/{id}"),
        ("post", "/api/ingest"),
        ("get", "/api/digests"),
        ("post", "/api/digests"),
        ("get", "/api/digests/{id}"),
        ("get", "/api/digests/jobs/{job}"),
        ("get", "/api/lab/runs"),
        ("get", "/api/lab/runs/{id}"),
        ("get", "/api/lab/runs/{id}/plots/{name}"),
        ("get", "/v1/models"),
        ("post", "/v1/chat/completions"),
    ];
    for (m, p) in routes {
        assert!(
            paths.get(p).and_then(|x| x.get(m)).is_some(),
            "{m} {p} missing from openapi.json"
        );
    }
    // And nothing documented that the router does not serve.
    assert_eq!(
        paths
            .values()
            .map(|p| p
                .as_object()
                .expect("obj")
                .keys()
                .filter(|k| *k != "parameters")
                .count())
            .sum::<usize>(),
        routes.len()
    );
}

// ---------- search and documents ----------

#[tokio::test]
async fn search_returns_results_and_passes_filters() {
    let f = fixture();
    let r = f
        .get("/api/search?q=gradient&k=1&mode=bm25&source=arxiv&since=2020&chunks=true")
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let v = body_json(r).await;
    let results = v["results"].as_array().expect("results array");
    assert_eq!(results.len(), 1);
    assert_eq!(results[0]["id"], "doc1");
    let seen = f
        .lib
        .searches
        .lock()
        .expect("lock")
        .last()
        .cloned()
        .expect("a search");
    assert_eq!(seen.query, "gradient");
    assert_eq!(seen.k, 1);
    assert_eq!(seen.mode.as_deref(), Some("bm25"));
    assert_eq!(seen.source.as_deref(), Some("arxiv"));
    assert_eq!(seen.since.as_deref(), Some("2020"));
    assert!(seen.chunk_level);
    // k out of 1..=50 is refused, as the CLI refuses it (it was clamped silently).
    let before = f.lib.searches.lock().expect("lock").len();
    for k in ["100000", "51", "0"] {
        let m = expect_error(
            f.get(&format!("/api/search?q=gradient&k={k}")).await,
            StatusCode::BAD_REQUEST,
            "bad_request",
        )
        .await;
        assert!(m.contains("k must be between 1 and 50"), "{m}");
    }
    let m = expect_error(
        f.post_json("/api/ask", r#"{"question":"what is x?","k":0}"#)
            .await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    )
    .await;
    assert!(m.contains("k must be between 1 and 50"), "{m}");
    assert_eq!(f.lib.searches.lock().expect("lock").len(), before);
    f.get("/api/search?q=gradient&k=50").await;
    assert_eq!(
        f.lib
            .searches
            .lock()
            .expect("lock")
            .last()
            .expect("search")
            .k,
        50
    );
}

#[tokio::test]
async fn search_rejects_bad_queries_clearly() {
    let f = fixture();
    let m = expect_error(
        f.get("/api/search").await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    )
    .await;
    assert!(m.contains("q="), "{m}");
    let m = expect_error(
        f.get("/api/search?q=x&mode=magic").await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    )
    .await;
    assert!(m.contains("bm25"), "{m}");
    let m = expect_error(
        f.get("/api/search?q=x&k=many").await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    )
    .await;
    assert!(m.contains('k'), "{m}");
    // A long query never reaches the index (URIs past 64 KB are refused by hyper itself).
    let long = format!("/api/search?q={}", "a".repeat(60_000));
    expect_error(
        f.get(&long).await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
    )
    .await;
    assert!(f.lib.searches.lock().expect("lock").is_empty());
}

#[tokio::test]
async fn internal_errors_do_not_leak_details() {
    let f = fixture();
    f.lib.fail_with_internal.store(true, Ordering::SeqCst);
    let r = f.get("/api/search?q=gradient").await;
    let m = expect_error(r, StatusCode::INTERNAL_SERVER_ERROR, "internal").await;
    assert!(!m.contains("secret") && !m.contains("tantivy"), "{m}");
}

#[tokio::test]
async fn documents_by_id_and_traversal_is_404() {
    let f = fixture();
    let r = f.get("/api/documents/doc1").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(body_json(r).await["title"], "Gradient hacking");
    expect_error(
        f.get("/api/documents/nope").await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    for evil in [
        "..%2F..%2Fetc%2Fpasswd",
        "%2e%2e",
        "..",
        "a%5C..%5Cb",
        "..%2Fdoc1",
        "doc1%00",
    ] {
        let r = f.get(&format!("/api/documents/{evil}")).await;
        expect_error(r, StatusCode::NOT_FOUND, "not_found").await;
    }
    expect_error(
        f.get("/api/documents/../../etc/passwd").await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
}

// ---------- admin ----------

fn admin_req(method: &str, uri: &str, token: Option<&str>, body: &str) -> Request<Body> {
    let mut b = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::CONTENT_TYPE, "application/json");
    if let Some(t) = token {
        b = b.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    b.body(Body::from(body.to_string())).expect("request")
}

#[tokio::test]
async fn admin_endpoints_are_disabled_without_a_configured_token() {
    let f = fixture();
    let body = r#"{"documents":[{"id":"n1","title":"New","text":"t"}]}"#;
    let m = expect_error(
        f.send(admin_req("POST", "/api/ingest", Some("guess"), body))
            .await,
        StatusCode::FORBIDDEN,
        "admin_disabled",
    )
    .await;
    assert!(m.contains("OVERSEER_ADMIN_TOKEN"), "{m}");
    expect_error(
        f.send(admin_req("DELETE", "/api/documents/doc1", None, ""))
            .await,
        StatusCode::FORBIDDEN,
        "admin_disabled",
    )
    .await;
    assert!(f.lib.ingested.lock().expect("lock").is_empty());
    assert_eq!(f.lib.docs.lock().expect("lock").len(), 3);
}

#[tokio::test]
async fn admin_token_rules() {
    let f = fixture_with(3, Duration::ZERO, |c| c.admin_token = Some("s3cret".into()));
    let body = r#"{"documents":[{"id":"n1","title":"New","text":"t"}]}"#;
    // No token: 401 with a WWW-Authenticate challenge.
    let r = f.send(admin_req("POST", "/api/ingest", None, body)).await;
    assert!(r.headers().contains_key(header::WWW_AUTHENTICATE));
    expect_error(r, StatusCode::UNAUTHORIZED, "unauthorized").await;
    // Wrong token: 403.
    expect_error(
        f.send(admin_req("POST", "/api/ingest", Some("s3cre"), body))
            .await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    expect_error(
        f.send(admin_req("DELETE", "/api/documents/doc1", Some("nope"), ""))
            .await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    expect_error(
        f.send(admin_req("DELETE", "/api/documents/doc1", None, ""))
            .await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    )
    .await;
    assert!(f.lib.ingested.lock().expect("lock").is_empty());
    // Right token.
    let r = f
        .send(admin_req("POST", "/api/ingest", Some("s3cret"), body))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(body_json(r).await["added"], 1);
    assert_eq!(*f.lib.ingested.lock().expect("lock"), ["n1"]);
    let r = f
        .send(admin_req(
            "DELETE",
            "/api/documents/doc1",
            Some("s3cret"),
            "",
        ))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(body_json(r).await["removed"], "doc1");
    assert!(
        f.lib
            .docs
            .lock()
            .expect("lock")
            .iter()
            .all(|(id, _, _)| id != "doc1")
    );
    expect_error(
        f.send(admin_req(
            "DELETE",
            "/api/documents/doc1",
            Some("s3cret"),
            "",
        ))
        .await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    expect_error(
        f.send(admin_req(
            "DELETE",
            "/api/documents/..%2Fx",
            Some("s3cret"),
            "",
        ))
        .await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    // Ingest needs exactly one input kind, and server paths must exist.
    expect_error(
        f.send(admin_req("POST", "/api/ingest", Some("s3cret"), "{}"))
            .await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    )
    .await;
    let m = expect_error(
        f.send(admin_req(
            "POST",
            "/api/ingest",
            Some("s3cret"),
            r#"{"paths":["/no/such/dir"]}"#,
        ))
        .await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    )
    .await;
    assert!(m.contains("does not exist"), "{m}");
}

// ---------- limits and malformed input ----------

#[tokio::test]
async fn oversized_bodies_get_413() {
    let f = fixture_with(3, Duration::ZERO, |c| c.max_body_bytes = 1024);
    let big = format!(r#"{{"question":"{}"}}"#, "x".repeat(4096));
    expect_error(
        f.post_json("/api/ask", &big).await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
    )
    .await;
    // Without a Content-Length (chunked), the extractor's limit catches it.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = vec![Ok(big.clone().into_bytes())];
    let req = Request::post("/api/ask")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(futures::stream::iter(chunks)))
        .expect("request");
    expect_error(
        f.send(req).await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
    )
    .await;
    expect_error(
        f.post_json("/v1/chat/completions", &big).await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
    )
    .await;
    assert!(f.log.asks.lock().expect("lock").is_empty());
    // A long question inside the body limit is still bounded.
    let f = fixture();
    let long = format!(r#"{{"question":"{}"}}"#, "x".repeat(5000));
    expect_error(
        f.post_json("/api/ask", &long).await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
    )
    .await;
}

#[tokio::test]
async fn malformed_json_is_400_with_a_useful_message() {
    let f = fixture();
    let m = expect_error(
        f.post_json("/api/ask", r#"{"question": "x""#).await,
        StatusCode::BAD_REQUEST,
        "invalid_json",
    )
    .await;
    assert!(m.contains("line 1"), "{m}");
    let m = expect_error(
        f.post_json("/api/ask", r#"{"mode":"concise"}"#).await,
        StatusCode::BAD_REQUEST,
        "invalid_json",
    )
    .await;
    assert!(m.contains("question"), "{m}");
    let m = expect_error(
        f.post_json("/api/ask", r#"{"question": 5}"#).await,
        StatusCode::BAD_REQUEST,
        "invalid_json",
    )
    .await;
    assert!(m.contains("invalid type"), "{m}");
    let m = expect_error(
        f.post_json("/v1/chat/completions", r#"{"messages": "hi"}"#)
            .await,
        StatusCode::BAD_REQUEST,
        "invalid_json",
    )
    .await;
    assert!(m.contains("messages"), "{m}");
    let m = expect_error(
        f.post_json("/api/ask", r#"{"question":"q","mode":"pirate"}"#)
            .await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    )
    .await;
    assert!(m.contains("rookie"), "{m}");
    let req = Request::post("/api/ask")
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Body::from("{}"))
        .expect("request");
    expect_error(
        f.send(req).await,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    )
    .await;
    assert!(f.log.asks.lock().expect("lock").is_empty());
}

#[tokio::test]
async fn rate_limit_answers_429_with_retry_after() {
    let f = fixture_with(3, Duration::ZERO, |c| {
        c.rate_per_sec = 1;
        c.rate_burst = 3;
    });
    for _ in 0..3 {
        assert_eq!(
            f.get("/api/search?q=gradient").await.status(),
            StatusCode::OK
        );
    }
    let r = f.get("/api/search?q=gradient").await;
    assert!(r.headers().contains_key(header::RETRY_AFTER));
    expect_error(r, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
    // Health checks are not rate limited.
    assert_eq!(f.get("/healthz").await.status(), StatusCode::OK);
}

#[tokio::test]
async fn cors_is_off_by_default_and_on_when_asked() {
    let f = fixture();
    let req = Request::get("/api/search?q=gradient")
        .header(header::ORIGIN, "https://evil.example")
        .body(Body::empty())
        .expect("request");
    let r = f.send(req).await;
    assert!(
        !r.headers()
            .contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN)
    );
    let f = fixture_with(3, Duration::ZERO, |c| {
        c.cors_origins = vec!["https://team.example".into()]
    });
    let req = Request::get("/api/search?q=gradient")
        .header(header::ORIGIN, "https://team.example")
        .body(Body::empty())
        .expect("request");
    let r = f.send(req).await;
    assert_eq!(
        r.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN],
        "https://team.example"
    );
    let req = Request::get("/api/search?q=gradient")
        .header(header::ORIGIN, "https://evil.example")
        .body(Body::empty())
        .expect("request");
    assert!(
        !f.send(req)
            .await
            .headers()
            .contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN)
    );
}

// ---------- ask (SSE) ----------

#[tokio::test]
async fn ask_streams_events_in_order() {
    let f = fixture();
    let r = f.post_json("/api/ask", r#"{"question":"What is gradient hacking?","mode":"rookie","history":[{"role":"user","content":"hi"},{"role":"assistant","content":"hello"}]}"#).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(
        r.headers()[header::CONTENT_TYPE]
            .to_str()
            .expect("ascii")
            .starts_with("text/event-stream")
    );
    let events = sse(&body_text(r).await);
    let names: Vec<&str> = events.iter().map(|(e, _)| e.as_str()).collect();
    assert_eq!(
        names,
        [
            "retrieval",
            "sources",
            "token",
            "token",
            "token",
            "citations",
            "followups",
            "done"
        ]
    );
    let tokens: String = events
        .iter()
        .filter(|(e, _)| e == "token")
        .map(|(_, d)| {
            serde_json::from_str::<Value>(d).expect("json")["text"]
                .as_str()
                .expect("text")
                .to_string()
        })
        .collect();
    let done: Value = serde_json::from_str(&events[7].1).expect("json");
    assert_eq!(done["answer"], tokens);
    let sources: Value = serde_json::from_str(&events[1].1).expect("json");
    assert_eq!(sources["sources"][0]["id"], "doc1");
    let asked = f.log.asks.lock().expect("lock")[0].clone();
    assert_eq!(asked.mode, "rookie");
    assert_eq!(asked.history.len(), 2);
    let m = expect_error(
        f.post_json(
            "/api/ask",
            r#"{"question":"q","history":[{"role":"system","content":"x"}]}"#,
        )
        .await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    )
    .await;
    assert!(m.contains("history"), "{m}");
}

#[tokio::test]
async fn ask_failure_is_an_error_event_without_internals() {
    let f = fixture();
    let r = f
        .post_json("/api/ask", r#"{"question":"please explode"}"#)
        .await;
    let events = sse(&body_text(r).await);
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].0, "error");
    let v: Value = serde_json::from_str(&events[0].1).expect("json");
    assert_eq!(v["error"], "internal");
    assert!(!events[0].1.contains("secret"));
}

#[tokio::test]
async fn a_disconnected_client_cancels_its_generation() {
    let f = fixture_with(100_000, Duration::from_millis(1), |_| {});
    let r = f
        .post_json("/api/ask", r#"{"question":"What is gradient hacking?"}"#)
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let mut body = r.into_body();
    // Read until a token arrives, then hang up.
    let mut seen = String::new();
    while !seen.contains("event: token") {
        let frame = body.frame().await.expect("stream open").expect("frame");
        if let Ok(d) = frame.into_data() {
            seen.push_str(&String::from_utf8_lossy(&d));
        }
    }
    drop(body);
    let t0 = Instant::now();
    while !f.log.stopped_by_client.load(Ordering::SeqCst) {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "generation was not cancelled"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(f.log.tokens_emitted.load(Ordering::SeqCst) < 100_000);
    assert!(!f.log.finished.load(Ordering::SeqCst));
    // The worker is free again for the next client.
    let r = f
        .post_json(
            "/v1/chat/completions",
            r#"{"messages":[{"role":"user","content":"hi"}],"max_tokens":2}"#,
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let text = body_text(f.get("/metrics").await).await;
    assert!(
        text.contains("overseer_generation_jobs_total{kind=\"ask\",outcome=\"cancelled\"} 1"),
        "{text}"
    );
}

#[tokio::test]
async fn a_full_queue_answers_503_with_retry_after() {
    let f = fixture_with(3, Duration::ZERO, |c| c.queue_capacity = 1);
    f.hold.store(true, Ordering::SeqCst);
    let ask = r#"{"question":"What is gradient hacking?"}"#;
    // Job 1 occupies the worker (it waits on `hold`), job 2 waits in the queue.
    let r1 = f.post_json("/api/ask", ask).await;
    assert_eq!(r1.status(), StatusCode::OK);
    let t0 = Instant::now();
    while f.log.asks.lock().expect("lock").is_empty() {
        assert!(t0.elapsed() < Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let r2 = f.post_json("/api/ask", ask).await;
    assert_eq!(r2.status(), StatusCode::OK);
    let r3 = f.post_json("/api/ask", ask).await;
    assert_eq!(r3.headers()[header::RETRY_AFTER], "5");
    expect_error(r3, StatusCode::SERVICE_UNAVAILABLE, "busy").await;
    let text = body_text(f.get("/metrics").await).await;
    assert!(text.contains("overseer_generation_queue_depth 1"), "{text}");
    assert!(
        text.contains("overseer_generation_rejected_total 1"),
        "{text}"
    );
    // Release: both accepted requests complete.
    f.hold.store(false, Ordering::SeqCst);
    for r in [r1, r2] {
        let events = sse(&body_text(r).await);
        assert_eq!(events.last().expect("events").0, "done");
    }
}

#[tokio::test]
async fn without_a_model_generation_is_503() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let state =
        AppState::new(ServerConfig::new(tmp.path()), Library::with_docs(), None).expect("state");
    let r = router(state.clone())
        .oneshot(
            Request::post("/api/ask")
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(r#"{"question":"q"}"#))
                .expect("req"),
        )
        .await
        .expect("infallible");
    expect_error(r, StatusCode::SERVICE_UNAVAILABLE, "unavailable").await;
    // Search still works.
    let r = router(state)
        .oneshot(
            Request::get("/api/search?q=gradient")
                .body(Body::empty())
                .expect("req"),
        )
        .await
        .expect("infallible");
    assert_eq!(r.status(), StatusCode::OK);
}

// ---------- OpenAI-compatible chat ----------

#[tokio::test]
async fn chat_completions_non_streaming() {
    let f = fixture();
    let r = f.post_json("/v1/chat/completions", r#"{"model":"whatever","messages":[{"role":"system","content":"be brief"},{"role":"user","content":[{"type":"text","text":"hi"}]}],"max_tokens":2,"temperature":0,"stop":"\n"}"#).await;
    assert_eq!(r.status(), StatusCode::OK);
    let v = body_json(r).await;
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "fake-model");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert_eq!(v["choices"][0]["message"]["content"], "w0 w1 ");
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(v["usage"]["total_tokens"], 9);
    let p = f.log.chats.lock().expect("lock")[0].clone();
    assert_eq!(p.messages[1].content, "hi");
    assert_eq!(p.stop, ["\n"]);
    assert_eq!(p.temperature, 0.0);
    assert!(p.intervention.is_none());
    // max_tokens is capped.
    f.post_json(
        "/v1/chat/completions",
        r#"{"messages":[{"role":"user","content":"hi"}],"max_tokens":99999999}"#,
    )
    .await;
    assert_eq!(f.log.chats.lock().expect("lock")[1].max_tokens, 1024);
    let m = expect_error(
        f.post_json(
            "/v1/chat/completions",
            r#"{"messages":[{"role":"tool","content":"x"}]}"#,
        )
        .await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    )
    .await;
    assert!(m.contains("role"), "{m}");
    expect_error(
        f.post_json("/v1/chat/completions", r#"{"messages":[]}"#)
            .await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    )
    .await;
}

#[tokio::test]
async fn chat_completions_streaming_ends_with_done() {
    let f = fixture();
    let r = f
        .post_json(
            "/v1/chat/completions",
            r#"{"messages":[{"role":"user","content":"hi"}],"stream":true,"max_tokens":3}"#,
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let events = sse(&body_text(r).await);
    assert_eq!(events.last().expect("events").1, "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|(_, d)| serde_json::from_str(d).expect("json chunk"))
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "w0 w1 w2 ");
    let last = chunks.last().expect("final chunk");
    assert_eq!(last["choices"][0]["finish_reason"], "length");
    assert!(
        chunks
            .iter()
            .all(|c| c["object"] == "chat.completion.chunk")
    );
}

#[tokio::test]
async fn chat_completions_steer_with_a_lab_run() {
    let f = fixture();
    write_lab_run(&f.lab_dir().join("run-a"));
    let r = f.post_json("/v1/chat/completions", r#"{"messages":[{"role":"user","content":"hi"}],"overseer":{"steer":"run-a","coef":-2.5}}"#).await;
    assert_eq!(r.status(), StatusCode::OK);
    let p = f.log.chats.lock().expect("lock")[0].clone();
    assert_eq!(
        p.intervention,
        Some(Intervention::Steer {
            run_dir: f.lab_dir().join("run-a"),
            coef: -2.5
        })
    );
    let r = f
        .post_json(
            "/v1/chat/completions",
            r#"{"messages":[{"role":"user","content":"hi"}],"overseer":{"ablate":"run-a"}}"#,
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        f.log.chats.lock().expect("lock")[1].intervention,
        Some(Intervention::Ablate {
            run_dir: f.lab_dir().join("run-a")
        })
    );
    for bad in ["../lab/run-a", "nope", "run-a/../run-a"] {
        let body = json!({"messages":[{"role":"user","content":"hi"}],"overseer":{"ablate": bad}})
            .to_string();
        expect_error(
            f.post_json("/v1/chat/completions", &body).await,
            StatusCode::NOT_FOUND,
            "not_found",
        )
        .await;
    }
    let body = r#"{"messages":[{"role":"user","content":"hi"}],"overseer":{"ablate":"run-a","steer":"run-a"}}"#;
    expect_error(
        f.post_json("/v1/chat/completions", body).await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    )
    .await;
    assert_eq!(f.log.chats.lock().expect("lock").len(), 2);
}

// ---------- lab ----------

#[tokio::test]
async fn lab_runs_list_detail_and_plots() {
    let f = fixture();
    assert_eq!(
        body_json(f.get("/api/lab/runs").await).await["runs"],
        json!([])
    );
    write_lab_run(&f.lab_dir().join("run-a"));
    std::fs::write(f.state_dir().join("secret.svg"), "<svg/>").expect("write");
    let v = body_json(f.get("/api/lab/runs").await).await;
    assert_eq!(v["runs"][0]["id"], "run-a");
    assert_eq!(v["runs"][0]["selected"]["layer"], 3);
    assert_eq!(
        v["runs"][0]["plots"][0]["url"],
        "/api/lab/runs/run-a/plots/layers.svg"
    );
    let d = body_json(f.get("/api/lab/runs/run-a").await).await;
    assert_eq!(d["report_md"], "# Report\n");
    assert_eq!(d["examples"][0]["ablation"], "Sure");
    let r = f.get("/api/lab/runs/run-a/plots/layers.svg").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()[header::CONTENT_TYPE], "image/svg+xml");
    assert!(
        r.headers()[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .expect("ascii")
            .contains("sandbox")
    );
    for evil in [
        "/api/lab/runs/..%2F..",
        "/api/lab/runs/..",
        "/api/lab/runs/nope",
        "/api/lab/runs/run-a/plots/..%2F..%2Fsecret.svg",
        "/api/lab/runs/run-a/plots/report.json",
        "/api/lab/runs/..%2Flab%2Frun-a/plots/layers.svg",
        "/api/lab/runs/run-a/plots/%2e%2e%2fsecret.svg",
    ] {
        expect_error(f.get(evil).await, StatusCode::NOT_FOUND, "not_found").await;
    }
}

// ---------- the real index behind the API ----------

/// A state over a real `IndexLibrary` (hashed bag-of-words embedder, no model files).
fn real_index_state(dir: &std::path::Path) -> AppState {
    let embedder: Arc<dyn overseer_index::Embedder> =
        Arc::new(overseer_index::testing::HashEmbedder::new(64));
    let lib = IndexLibrary::open(&dir.join("data"), embedder).expect("open index");
    let mut cfg = ServerConfig::new(dir.join("data"));
    cfg.rate_per_sec = 0;
    cfg.admin_token = Some("s3cret".into());
    AppState::new(cfg, Arc::new(lib), None).expect("state")
}

async fn call(state: &AppState, req: Request<Body>) -> Response<Body> {
    router(state.clone())
        .oneshot(req)
        .await
        .expect("infallible")
}

async fn search_ids(state: &AppState, q: &str, mode: &str) -> Vec<String> {
    let r = call(
        state,
        Request::get(format!("/api/search?q={q}&k=10&mode={mode}"))
            .body(Body::empty())
            .expect("request"),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    body_json(r).await["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|h| h["id"].as_str().expect("id").to_string())
        .collect()
}

#[tokio::test]
async fn delete_document_removes_it_from_the_real_index() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let state = real_index_state(tmp.path());
    let docs = r#"{"documents":[
        {"id":"arxiv-1","source":"arxiv","title":"Corrigibility","text":"An agent that accepts shutdown and correction.","authors":["A"]},
        {"id":"arxiv-2","source":"arxiv","title":"Reward hacking","text":"Agents exploit misspecified reward functions in games.","authors":["B"]}
    ]}"#;
    let r = call(
        &state,
        admin_req("POST", "/api/ingest", Some("s3cret"), docs),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(body_json(r).await["added"], 2);
    for mode in ["bm25", "dense", "hybrid"] {
        assert_eq!(
            search_ids(&state, "shutdown+correction", mode).await[0],
            "arxiv-1"
        );
    }

    // Auth rules hold before anything is touched.
    let r = call(
        &state,
        admin_req("DELETE", "/api/documents/arxiv-1", None, ""),
    )
    .await;
    expect_error(r, StatusCode::UNAUTHORIZED, "unauthorized").await;
    let r = call(
        &state,
        admin_req("DELETE", "/api/documents/arxiv-1", Some("x"), ""),
    )
    .await;
    expect_error(r, StatusCode::FORBIDDEN, "forbidden").await;
    let get = |uri: &str| Request::get(uri).body(Body::empty()).expect("request");
    assert_eq!(
        call(&state, get("/api/documents/arxiv-1")).await.status(),
        StatusCode::OK
    );

    let r = call(
        &state,
        admin_req("DELETE", "/api/documents/arxiv-1", Some("s3cret"), ""),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    let v = body_json(r).await;
    assert_eq!(v["removed"], "arxiv-1", "{v}");
    assert_eq!(v["chunks_removed"], 1, "{v}");
    assert_eq!(
        (v["documents"].as_u64(), v["chunks"].as_u64()),
        (Some(1), Some(1)),
        "{v}"
    );

    // Gone from lookup and from every retriever, at once (no refresh delay); the
    // other document is untouched.
    expect_error(
        call(&state, get("/api/documents/arxiv-1")).await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    assert_eq!(
        call(&state, get("/api/documents/arxiv-2")).await.status(),
        StatusCode::OK
    );
    for mode in ["bm25", "dense", "hybrid"] {
        let ids = search_ids(&state, "shutdown+correction+agent", mode).await;
        assert!(!ids.contains(&"arxiv-1".to_string()), "{mode}: {ids:?}");
        assert_eq!(
            search_ids(&state, "misspecified+reward", mode).await[0],
            "arxiv-2"
        );
    }
    let r = call(&state, get("/healthz")).await;
    assert_eq!(body_json(r).await["documents"], 1);

    // Unknown, already removed and traversal ids: 404 in the error shape.
    for id in [
        "arxiv-1",
        "nope",
        "..%2F..%2Fetc%2Fpasswd",
        "%2e%2e",
        "a%5C..%5Cb",
    ] {
        let r = call(
            &state,
            admin_req(
                "DELETE",
                &format!("/api/documents/{id}"),
                Some("s3cret"),
                "",
            ),
        )
        .await;
        expect_error(r, StatusCode::NOT_FOUND, "not_found").await;
    }

    // Another writer holds the index: a clean, retryable 503.
    let lock = std::fs::File::open(tmp.path().join("data/index/ingest.lock")).expect("lock file");
    lock.lock().expect("take lock");
    let r = call(
        &state,
        admin_req("DELETE", "/api/documents/arxiv-2", Some("s3cret"), ""),
    )
    .await;
    expect_error(r, StatusCode::SERVICE_UNAVAILABLE, "unavailable").await;
    lock.unlock().expect("unlock");
    assert_eq!(
        call(&state, get("/api/documents/arxiv-2")).await.status(),
        StatusCode::OK
    );

    // Ingesting it again brings it back.
    let r = call(
        &state,
        admin_req("POST", "/api/ingest", Some("s3cret"), docs),
    )
    .await;
    let v = body_json(r).await;
    assert_eq!(
        (v["added"].as_u64(), v["skipped"].as_u64()),
        (Some(1), Some(1)),
        "{v}"
    );
    assert_eq!(
        search_ids(&state, "shutdown+correction", "hybrid").await[0],
        "arxiv-1"
    );
}

#[tokio::test]
async fn ingest_failures_are_objects_and_hostile_files_do_not_stop_the_server() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let state = real_index_state(tmp.path());
    let src = tmp.path().join("in");
    std::fs::create_dir_all(&src).expect("mkdir");
    // 40,000 nested elements overflowed the stack and killed the whole server.
    let deep = format!("{}x{}", "<div>".repeat(40_000), "</div>".repeat(40_000));
    std::fs::write(src.join("deep.html"), deep).expect("w");
    std::fs::write(src.join("good.txt"), "Corrigibility\n\nAccepts correction.").expect("w");
    let body = json!({ "paths": [src] }).to_string();
    let r = call(
        &state,
        admin_req("POST", "/api/ingest", Some("s3cret"), &body),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    let v = body_json(r).await;
    assert_eq!(v["added"], 1, "{v}");
    // Each failure is {location, id, reason}, not a Rust Debug string.
    let f = &v["failed"][0];
    assert!(
        f["location"]
            .as_str()
            .is_some_and(|l| l.ends_with("deep.html")),
        "{v}"
    );
    assert!(
        f["reason"]
            .as_str()
            .is_some_and(|r| r.contains("nested more than")),
        "{v}"
    );
    assert!(!v.to_string().contains("Failure {"), "{v}");
    assert_eq!(search_ids(&state, "corrigibility", "bm25").await[0], {
        let p = src.join("good.txt").canonicalize().expect("canon");
        p.to_string_lossy().into_owned()
    });
}

/// Read from `stream` until the server closes it; `Err` when it stays open past `limit`.
async fn closed_within(stream: &mut tokio::net::TcpStream, limit: Duration) -> Result<(), String> {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 1024];
    let t = Instant::now();
    loop {
        match tokio::time::timeout(limit.saturating_sub(t.elapsed()), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Ok(()),
            Ok(Ok(_)) => {}
            Err(_) => return Err(format!("still open after {:?}", t.elapsed())),
        }
    }
}

#[tokio::test]
async fn stalled_and_idle_connections_are_closed() {
    use tokio::io::AsyncWriteExt;
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut cfg = ServerConfig::new(tmp.path());
    cfg.header_read_timeout = Duration::from_millis(500);
    cfg.body_read_timeout = Duration::from_millis(500);
    let state = AppState::new(cfg, Library::with_docs(), None).expect("state");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(overseer_server::serve(state, listener));
    let limit = Duration::from_secs(5);

    // Nothing sent, half a request head, and an idle kept-alive connection: each stayed
    // open for good (80 stalled connections were still open after 60 s).
    let mut silent = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut partial = tokio::net::TcpStream::connect(addr).await.expect("connect");
    partial
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("write");
    let mut idle = tokio::net::TcpStream::connect(addr).await.expect("connect");
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    // A body that never arrives: the request fails instead of waiting.
    let mut body = tokio::net::TcpStream::connect(addr).await.expect("connect");
    body.write_all(
        b"POST /api/ask HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"q",
    )
    .await
    .expect("write");
    let (a, b, c, d) = tokio::join!(
        closed_within(&mut silent, limit),
        closed_within(&mut partial, limit),
        closed_within(&mut idle, limit),
        async {
            use tokio::io::AsyncReadExt;
            let mut text = Vec::new();
            let r = tokio::time::timeout(limit, body.read_to_end(&mut text)).await;
            (r.is_ok(), String::from_utf8_lossy(&text).into_owned())
        },
    );
    for (what, r) in [("silent", a), ("partial head", b), ("idle keep-alive", c)] {
        assert!(r.is_ok(), "{what}: {r:?}");
    }
    let (done, text) = d;
    assert!(done, "a stalled body kept the connection open: {text}");
    assert!(text.starts_with("HTTP/1.1 4"), "{text}");

    // The server still answers.
    let mut ok = tokio::net::TcpStream::connect(addr).await.expect("connect");
    ok.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut text = Vec::new();
    {
        use tokio::io::AsyncReadExt;
        tokio::time::timeout(limit, ok.read_to_end(&mut text))
            .await
            .expect("answered")
            .expect("read");
    }
    assert!(
        String::from_utf8_lossy(&text).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&text)
    );
    server.abort();
}

// ---------- digests ----------

/// A state over a real `IndexLibrary` that can also make digests (no model: no summaries).
fn digest_state(dir: &std::path::Path) -> AppState {
    let embedder: Arc<dyn overseer_index::Embedder> =
        Arc::new(overseer_index::testing::HashEmbedder::new(64));
    let lib = Arc::new(IndexLibrary::open(&dir.join("data"), embedder).expect("open index"));
    let digester = Arc::new(lib.digester(None));
    let mut cfg = ServerConfig::new(dir.join("data"));
    cfg.rate_per_sec = 0;
    cfg.admin_token = Some("s3cret".into());
    AppState::new(cfg, lib, None)
        .expect("state")
        .with_digester(digester)
}

fn get_req(uri: &str) -> Request<Body> {
    Request::get(uri).body(Body::empty()).expect("request")
}

/// Start a digest and poll its job until it ends; the job's last status.
async fn make_digest(state: &AppState, body: &str) -> Value {
    let r = call(
        state,
        admin_req("POST", "/api/digests", Some("s3cret"), body),
    )
    .await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let job = body_json(r).await["job"]
        .as_str()
        .expect("job id")
        .to_string();
    let t0 = Instant::now();
    loop {
        let r = call(state, get_req(&format!("/api/digests/jobs/{job}"))).await;
        assert_eq!(r.status(), StatusCode::OK);
        let v = body_json(r).await;
        if v["state"] != "running" {
            return v;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "digest job hangs: {v}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn digest_list(state: &AppState) -> Vec<Value> {
    let r = call(state, get_req("/api/digests")).await;
    assert_eq!(r.status(), StatusCode::OK);
    body_json(r).await["digests"]
        .as_array()
        .expect("digests")
        .clone()
}

#[tokio::test]
async fn digests_are_made_listed_and_rendered() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let state = digest_state(tmp.path());
    assert!(digest_list(&state).await.is_empty());

    let docs = r#"{"documents":[
        {"id":"d1","source":"arxiv","title":"Reward hacking in games <script>window.__pwned=1</script>","text":"Agents exploit misspecified reward functions and specification gaming.","authors":["A"],"date_published":"2024-03-05T00:00:00Z","url":"javascript:alert(1)"},
        {"id":"d2","source":"arxiv","title":"Interpretability of circuits","text":"Mechanistic interpretability finds circuits and features in neural networks.","authors":["B"],"date_published":"2024-03-06T00:00:00Z","url":"https://example.org/d2"},
        {"id":"d3","source":"blog","title":"Undated note","text":"Scalable oversight with debate between models."}
    ]}"#;
    let r = call(
        &state,
        admin_req("POST", "/api/ingest", Some("s3cret"), docs),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);

    // Auth first: no token 401, wrong token 403, and nothing is started.
    let body = r#"{"all": true, "summaries": false}"#;
    let r = call(&state, admin_req("POST", "/api/digests", None, body)).await;
    expect_error(r, StatusCode::UNAUTHORIZED, "unauthorized").await;
    let r = call(
        &state,
        admin_req("POST", "/api/digests", Some("nope"), body),
    )
    .await;
    expect_error(r, StatusCode::FORBIDDEN, "forbidden").await;
    // Bad windows are 400s that say what is wrong.
    for (bad, needle) in [
        (r#"{"week": "2024-10", "summaries": false}"#, "YYYY-Www"),
        (r#"{"week": "2024-W60", "summaries": false}"#, "YYYY-Www"),
        (
            r#"{"since": "05/03/2024", "summaries": false}"#,
            "YYYY-MM-DD",
        ),
        (
            r#"{"since": "2024-03-07", "until": "2024-03-01", "summaries": false}"#,
            "empty",
        ),
        (
            r#"{"all": true, "week": "2024-W10", "summaries": false}"#,
            "all",
        ),
        (r#"{"all": true, "colour": "red"}"#, "colour"),
    ] {
        let r = call(
            &state,
            admin_req("POST", "/api/digests", Some("s3cret"), bad),
        )
        .await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{bad}");
        let m = body_json(r).await["message"]
            .as_str()
            .expect("message")
            .to_string();
        assert!(m.contains(needle), "{bad}: {m}");
    }
    // Summaries need a model; this server has none.
    let r = call(
        &state,
        admin_req("POST", "/api/digests", Some("s3cret"), r#"{"all": true}"#),
    )
    .await;
    let m = expect_error(r, StatusCode::SERVICE_UNAVAILABLE, "unavailable").await;
    assert!(m.contains("summaries"), "{m}");
    assert!(digest_list(&state).await.is_empty());

    // Everything, without summaries.
    let v = make_digest(&state, body).await;
    assert_eq!(v["state"], "done", "{v}");
    assert!(v.get("error").is_none(), "{v}");
    let id = v["digest"].as_str().expect("digest id").to_string();
    let list = digest_list(&state).await;
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["id"], id.as_str());
    assert_eq!(list[0]["items"], 3);
    assert_eq!(list[0]["covers"], "every indexed item");
    for k in ["title", "created"] {
        assert!(list[0][k].is_string(), "{k}: {}", list[0]);
    }

    // JSON: items numbered, sections with their item numbers, Other last if present.
    let r = call(&state, get_req(&format!("/api/digests/{id}"))).await;
    assert_eq!(r.status(), StatusCode::OK);
    let d = body_json(r).await;
    assert_eq!(d["items"].as_array().expect("items").len(), 3);
    assert!(!d["sections"].as_array().expect("sections").is_empty());
    assert!(d["items"][0].get("summary").is_none());

    // HTML: the document's markup is text; no script, no javascript: link.
    let r = call(&state, get_req(&format!("/api/digests/{id}?format=html"))).await;
    assert_eq!(r.status(), StatusCode::OK);
    let ct = r.headers()[header::CONTENT_TYPE]
        .to_str()
        .expect("ascii")
        .to_string();
    assert!(ct.starts_with("text/html"), "{ct}");
    let csp = r.headers()[header::CONTENT_SECURITY_POLICY]
        .to_str()
        .expect("ascii")
        .to_string();
    assert!(
        csp.contains("sandbox") && csp.contains("default-src 'none'"),
        "{csp}"
    );
    let html = body_text(r).await;
    assert!(!html.to_lowercase().contains("<script"), "{html}");
    assert!(!html.contains("javascript:"), "{html}");
    assert!(html.contains("&lt;script&gt;") && html.contains("Interpretability of circuits"));
    for (fmt, want, text) in [
        ("md", "text/markdown", "# Alignment digest"),
        ("atom", "application/atom+xml", "<feed"),
    ] {
        let r = call(&state, get_req(&format!("/api/digests/{id}?format={fmt}"))).await;
        assert_eq!(r.status(), StatusCode::OK, "{fmt}");
        let ct = r.headers()[header::CONTENT_TYPE]
            .to_str()
            .expect("ascii")
            .to_string();
        assert!(ct.starts_with(want), "{fmt}: {ct}");
        let t = body_text(r).await;
        assert!(t.contains(text), "{fmt}: {t}");
    }
    let r = call(&state, get_req(&format!("/api/digests/{id}?format=pdf"))).await;
    expect_error(r, StatusCode::BAD_REQUEST, "bad_request").await;

    // Unknown, malformed and traversal ids: 404, never a file outside the folder.
    std::fs::write(tmp.path().join("data/secret.json"), "{}").expect("write");
    for bad in [
        "nope",
        "..%2Fx",
        "..%2Fsecret",
        "..",
        "%2e%2e%2fsecret",
        "watermark%2F..%2F..%2Fsecret",
        "a%5Cb",
    ] {
        let r = call(&state, get_req(&format!("/api/digests/{bad}"))).await;
        expect_error(r, StatusCode::NOT_FOUND, "not_found").await;
    }
    let r = call(&state, get_req("/api/digests/jobs/nope")).await;
    expect_error(r, StatusCode::NOT_FOUND, "not_found").await;

    // A week window takes the dated items in it; the watermark is left alone.
    let v = make_digest(
        &state,
        r#"{"week": "2024-W10", "summaries": false, "title": "Week 10"}"#,
    )
    .await;
    assert_eq!(v["state"], "done", "{v}");
    let list = digest_list(&state).await;
    assert_eq!(list.len(), 2);
    let week = list
        .iter()
        .find(|d| d["title"] == "Week 10")
        .expect("week digest");
    assert_eq!(week["items"], 2, "{week}");
    assert!(!tmp.path().join("data/digests/watermark.json").exists());

    // No window: since the watermark (none yet: everything), and it moves; the next
    // such digest holds only what was ingested after it.
    let v = make_digest(&state, r#"{"summaries": false}"#).await;
    assert_eq!(v["state"], "done", "{v}");
    let first = v["digest"].as_str().expect("id").to_string();
    let w: Value = serde_json::from_str(
        &std::fs::read_to_string(tmp.path().join("data/digests/watermark.json"))
            .expect("watermark"),
    )
    .expect("watermark json");
    assert_eq!(w["digest"], first.as_str());
    let more = r#"{"documents":[{"id":"d4","source":"arxiv","title":"Debate","text":"AI safety via debate between two agents judged by a human.","date_published":"2024-04-01"}]}"#;
    let r = call(
        &state,
        admin_req("POST", "/api/ingest", Some("s3cret"), more),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    let v = make_digest(&state, r#"{"summaries": false}"#).await;
    let second = v["digest"].as_str().expect("id").to_string();
    let r = call(&state, get_req(&format!("/api/digests/{second}"))).await;
    let d = body_json(r).await;
    let ids: Vec<&str> = d["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| i["id"].as_str().expect("id"))
        .collect();
    assert_eq!(ids, ["d4"], "{d}");
    assert_eq!(digest_list(&state).await.len(), 4);
}

#[tokio::test]
async fn one_digest_job_at_a_time_and_none_without_a_digester() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let state = digest_state(tmp.path());
    // Enough documents that the first build is still running when the second request
    // comes (a 409 then), or already done (a 202 then): never two at once.
    let docs: Vec<Value> = (0..300)
        .map(|i| json!({"id": format!("n{i}"), "source": "s", "title": format!("Note {i}"), "text": format!("Reward hacking note number {i} about agents and oversight.")}))
        .collect();
    let body = json!({ "documents": docs }).to_string();
    let r = call(
        &state,
        admin_req("POST", "/api/ingest", Some("s3cret"), &body),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    let req = r#"{"all": true, "summaries": false}"#;
    let r = call(
        &state,
        admin_req("POST", "/api/digests", Some("s3cret"), req),
    )
    .await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert!(r.headers().contains_key(header::LOCATION));
    let job = body_json(r).await["job"].as_str().expect("job").to_string();
    let r = call(
        &state,
        admin_req("POST", "/api/digests", Some("s3cret"), req),
    )
    .await;
    let second_started = match r.status() {
        StatusCode::CONFLICT => {
            let m = expect_error(r, StatusCode::CONFLICT, "digest_running").await;
            assert!(m.contains(&job), "{m}");
            false
        }
        StatusCode::ACCEPTED => true,
        s => panic!("unexpected status {s}"),
    };
    // Both (or the one) finish; the slot is free again afterwards.
    let t0 = Instant::now();
    loop {
        let v = body_json(call(&state, get_req(&format!("/api/digests/jobs/{job}"))).await).await;
        if v["state"] == "done" {
            assert_eq!(v["total"].as_u64(), v["done"].as_u64(), "{v}");
            break;
        }
        assert_eq!(v["state"], "running", "{v}");
        assert!(t0.elapsed() < Duration::from_secs(60), "{v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let v = make_digest(&state, req).await;
    assert_eq!(v["state"], "done", "{v}");
    let n = digest_list(&state).await.len();
    assert!(n == 2 || (second_started && n == 3), "{n}");

    // A server without a digester still lists what is saved but cannot make one.
    let plain = real_index_state(tmp.path());
    assert_eq!(digest_list(&plain).await.len(), n);
    let r = call(
        &plain,
        admin_req("POST", "/api/digests", Some("s3cret"), req),
    )
    .await;
    expect_error(r, StatusCode::SERVICE_UNAVAILABLE, "unavailable").await;
}
