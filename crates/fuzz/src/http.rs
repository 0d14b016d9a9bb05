//! HTTP request handling of `/api/search`, `/api/ask` and `/v1/chat/completions`
//! through the server's router, with the real index adapter over a small index and a
//! fake model (as `crates/server/tests/api.rs` does).

use std::ops::ControlFlow;
use std::sync::{Arc, OnceLock};

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use overseer_server::{
    AppState, AskEvent, AskParams, BackendError, ChatOutput, ChatParams, Generator, IndexLibrary,
    ServerConfig, router,
};
use serde_json::json;
use tower::ServiceExt;

/// A model that answers from canned text, echoing a little of the question.
struct FakeModel;

impl Generator for FakeModel {
    fn model_name(&self) -> String {
        "fuzz-model".into()
    }

    fn ask(
        &mut self,
        p: &AskParams,
        events: &mut dyn FnMut(AskEvent) -> ControlFlow<()>,
    ) -> Result<(), BackendError> {
        let src = json!({"id": "gh", "title": "Gradient hacking", "url": null, "passage": "A model could influence its own gradient updates.", "score": 1.0});
        if events(AskEvent::Retrieved {
            sources: vec![src],
            millis: 1,
        })
        .is_break()
        {
            return Ok(());
        }
        let echo: String = p.question.chars().take(16).collect();
        for t in ["Gradient hacking ", "is ", &echo, " [1]."] {
            if events(AskEvent::Token(t.to_string())).is_break() {
                return Ok(());
            }
        }
        let cites = json!([{"n": 1, "id": "gh", "title": "Gradient hacking", "supported": true}]);
        let _ = events(AskEvent::Citations(cites.clone()));
        let _ = events(AskEvent::Followups(vec!["Why?".into()]));
        let _ = events(AskEvent::Done(json!({
            "answer": format!("Gradient hacking is {echo} [1]."),
            "abstained": false,
            "citations": cites,
            "followups": ["Why?"],
            "timings": {}
        })));
        Ok(())
    }

    fn chat(
        &mut self,
        p: &ChatParams,
        on_text: &mut dyn FnMut(&str) -> ControlFlow<()>,
    ) -> Result<ChatOutput, BackendError> {
        let mut text = String::new();
        let n = p.max_tokens.min(4);
        for i in 0..n {
            let t = format!("w{i} ");
            text.push_str(&t);
            if on_text(&t).is_break() {
                break;
            }
        }
        Ok(ChatOutput {
            text,
            prompt_tokens: p.messages.len(),
            completion_tokens: n,
            finish_reason: if n == p.max_tokens { "length" } else { "stop" }.into(),
        })
    }
}

struct Server {
    runtime: tokio::runtime::Runtime,
    state: AppState,
    _state_dir: tempfile::TempDir,
}

fn server() -> &'static Server {
    static S: OnceLock<Server> = OnceLock::new();
    S.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("runtime: {e}"));
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
        let mut cfg = ServerConfig::new(dir.path());
        cfg.rate_per_sec = 0;
        let lib = IndexLibrary::open(crate::search::data_dir(), crate::search::embedder())
            .unwrap_or_else(|e| panic!("open index: {e}"));
        let state = AppState::new(cfg, Arc::new(lib), Some(Box::new(FakeModel)))
            .unwrap_or_else(|e| panic!("state: {e}"));
        Server {
            runtime,
            state,
            _state_dir: dir,
        }
    })
}

/// Bytes kept as they are in a query string (the rest is percent-encoded, so any input
/// makes a valid URI and reaches the handler's own parsing).
fn query_byte_ok(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/?%".contains(&b)
}

/// Fuzz one request.
///
/// Input: the first byte picks the endpoint (`% 3`: `GET /api/search`, `POST /api/ask`,
/// `POST /v1/chat/completions`) and, in bit 2, drops the JSON content type; the rest,
/// up to the first newline, is the query string, and after it the body. The response must
/// not be a server error other than 503, and its body must be read to the end without
/// error (streams included).
pub fn http(data: &[u8]) {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let (query, body) = match rest.iter().position(|&b| b == b'\n') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &[][..]),
    };
    let mut uri = String::from(match sel % 3 {
        0 => "/api/search",
        1 => "/api/ask",
        _ => "/v1/chat/completions",
    });
    if !query.is_empty() {
        uri.push('?');
        for &b in query {
            if query_byte_ok(b) {
                uri.push(char::from(b));
            } else {
                uri.push_str(&format!("%{b:02X}"));
            }
        }
    }
    let mut req = Request::builder()
        .method(if sel % 3 == 0 { "GET" } else { "POST" })
        .uri(&uri);
    if sel & 4 == 0 {
        req = req.header(header::CONTENT_TYPE, "application/json");
    }
    let Ok(req) = req.body(Body::from(body.to_vec())) else {
        return;
    };
    let s = server();
    let app = router(s.state.clone());
    let (status, text) = s.runtime.block_on(async move {
        let resp = match app.oneshot(req).await {
            Ok(r) => r,
            Err(e) => match e {},
        };
        let status = resp.status();
        let body = match resp.into_body().collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => panic!("{uri}: body error: {e}"),
        };
        (status, String::from_utf8_lossy(&body).into_owned())
    });
    assert!(
        !status.is_server_error() || status == StatusCode::SERVICE_UNAVAILABLE,
        "{status} for {:?}: {text}",
        String::from_utf8_lossy(data)
    );
}
