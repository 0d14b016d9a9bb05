//! `POST /v1/chat/completions`: the OpenAI chat-completions protocol (streaming and not)
//! served by the local model through the generation worker. An `overseer` extension
//! object may name a lab run to steer with (`{"steer": RUN, "coef": C}`) or to ablate its
//! refusal direction (`{"ablate": RUN}`).

use std::time::{SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::api::{error_payload, submit, ticket_stream};
use crate::backend::{ChatMessage, ChatOutput, ChatParams, Intervention};
use crate::error::ApiError;
use crate::security::ApiJson;
use crate::state::AppState;
use crate::worker::{JobKind, WorkerEvent};

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Deserialize)]
pub(crate) struct ContentPart {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: String,
}

#[derive(Debug, Deserialize)]
pub(crate) struct MessageIn {
    role: String,
    content: Content,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct OverseerExt {
    steer: Option<String>,
    coef: Option<f32>,
    ablate: Option<String>,
}

/// The subset of OpenAI's request the local model honours; other fields are ignored.
#[derive(Debug, Deserialize)]
pub(crate) struct ChatRequest {
    #[serde(default)]
    model: Option<String>,
    messages: Vec<MessageIn>,
    #[serde(default)]
    stream: bool,
    max_tokens: Option<usize>,
    max_completion_tokens: Option<usize>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    seed: Option<u64>,
    stop: Option<Stop>,
    #[serde(default)]
    overseer: Option<OverseerExt>,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn validate(state: &AppState, req: ChatRequest) -> Result<ChatParams, ApiError> {
    let cfg = &state.config;
    if req.messages.is_empty() {
        return Err(ApiError::bad_request("\"messages\" is empty"));
    }
    let mut messages = Vec::with_capacity(req.messages.len());
    for (i, m) in req.messages.into_iter().enumerate() {
        if !matches!(m.role.as_str(), "system" | "user" | "assistant") {
            return Err(ApiError::bad_request(format!(
                "messages[{i}].role must be system, user or assistant"
            )));
        }
        let content = match m.content {
            Content::Text(t) => t,
            Content::Parts(parts) => {
                if let Some(p) = parts.iter().find(|p| p.kind != "text") {
                    return Err(ApiError::bad_request(format!(
                        "messages[{i}]: content parts of type {:?} are not supported",
                        p.kind
                    )));
                }
                parts
                    .into_iter()
                    .map(|p| p.text)
                    .collect::<Vec<_>>()
                    .join("")
            }
        };
        messages.push(ChatMessage {
            role: m.role,
            content,
        });
    }
    let chars: usize = messages.iter().map(|m| m.content.chars().count()).sum();
    if chars > cfg.max_chat_chars {
        return Err(ApiError::too_large(format!(
            "the conversation is over {} characters",
            cfg.max_chat_chars
        )));
    }
    let temperature = req.temperature.unwrap_or(0.7);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::bad_request("temperature must be between 0 and 2"));
    }
    let top_p = req.top_p.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::bad_request("top_p must be in (0, 1]"));
    }
    let max_tokens = req
        .max_completion_tokens
        .or(req.max_tokens)
        .unwrap_or(cfg.default_max_tokens);
    if max_tokens == 0 {
        return Err(ApiError::bad_request("max_tokens must be at least 1"));
    }
    let stop = match req.stop {
        None => Vec::new(),
        Some(Stop::One(s)) => vec![s],
        Some(Stop::Many(v)) => v,
    };
    if stop.len() > 4 || stop.iter().any(|s| s.is_empty() || s.len() > 64) {
        return Err(ApiError::bad_request(
            "stop takes up to 4 non-empty strings of at most 64 bytes",
        ));
    }
    let ext = req.overseer.unwrap_or_default();
    let find_run = |id: &str| {
        state
            .lab
            .find(id)
            .map(|r| r.dir)
            .ok_or_else(|| ApiError::not_found(format!("no lab run named {id:?}")))
    };
    let intervention = match (ext.steer, ext.ablate) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "overseer.steer and overseer.ablate cannot be combined",
            ));
        }
        (Some(run), None) => {
            let coef = ext.coef.unwrap_or(1.0);
            if !coef.is_finite() || coef.abs() > 100.0 {
                return Err(ApiError::bad_request("overseer.coef must be within ±100"));
            }
            Some(Intervention::Steer {
                run_dir: find_run(&run)?,
                coef,
            })
        }
        (None, Some(run)) => Some(Intervention::Ablate {
            run_dir: find_run(&run)?,
        }),
        (None, None) => None,
    };
    Ok(ChatParams {
        messages,
        max_tokens: max_tokens.min(cfg.max_tokens_cap),
        temperature,
        top_p,
        seed: req.seed,
        stop,
        intervention,
    })
}

pub(crate) async fn chat_completions(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<ChatRequest>,
) -> Result<Response, ApiError> {
    let stream = req.stream;
    let served = state
        .worker
        .as_ref()
        .map(|w| w.model_name().to_string())
        .or(req.model.clone())
        .unwrap_or_default();
    let params = validate(&state, req)?;
    let id = format!("chatcmpl-{:x}{:x}", now_secs(), rand_suffix());
    let created = now_secs();
    let mut ticket = submit(&state, JobKind::Chat(params))?;
    if stream {
        let head = json!({
            "id": id, "object": "chat.completion.chunk", "created": created, "model": served,
            "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": null}],
        });
        let (id2, model2) = (id.clone(), served.clone());
        let chunk = move |delta: Value, finish: Value, usage: Option<Value>| {
            let mut v = json!({
                "id": id2, "object": "chat.completion.chunk", "created": created, "model": model2,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            });
            if let Some(u) = usage {
                v["usage"] = u;
            }
            Event::default().data(v.to_string())
        };
        let body = ticket_stream(ticket, move |ev| match ev {
            WorkerEvent::Text(t) => vec![chunk(json!({ "content": t }), Value::Null, None)],
            WorkerEvent::ChatDone(out) => vec![
                chunk(json!({}), json!(out.finish_reason), Some(usage(&out))),
                Event::default().data("[DONE]"),
            ],
            WorkerEvent::Failed(e) => {
                vec![Event::default().data(json!({ "error": error_payload(e) }).to_string())]
            }
            WorkerEvent::Ask(_) => Vec::new(),
        });
        let first =
            futures::stream::once(async move { Ok(Event::default().data(head.to_string())) });
        use futures::StreamExt;
        return Ok(Sse::new(first.chain(body))
            .keep_alive(KeepAlive::default())
            .into_response());
    }
    // Not streaming: wait for the end (dropping `ticket` on disconnect cancels the job).
    while let Some(ev) = ticket.events.recv().await {
        match ev {
            WorkerEvent::ChatDone(out) => {
                return Ok(Json(json!({
                    "id": id, "object": "chat.completion", "created": created, "model": served,
                    "choices": [{
                        "index": 0,
                        "message": {"role": "assistant", "content": out.text},
                        "finish_reason": out.finish_reason,
                    }],
                    "usage": usage(&out),
                }))
                .into_response());
            }
            WorkerEvent::Failed(e) => return Err(ApiError::from(e)),
            WorkerEvent::Text(_) | WorkerEvent::Ask(_) => {}
        }
    }
    tracing::error!("generation worker ended a job without a result");
    Err(ApiError::internal())
}

fn usage(out: &ChatOutput) -> Value {
    json!({
        "prompt_tokens": out.prompt_tokens,
        "completion_tokens": out.completion_tokens,
        "total_tokens": out.prompt_tokens + out.completion_tokens,
    })
}

/// A per-process counter, enough to make completion ids unique.
fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

pub(crate) async fn models(State(state): State<AppState>) -> Json<Value> {
    let data: Vec<Value> = state
        .worker
        .iter()
        .map(
            |w| json!({"id": w.model_name(), "object": "model", "created": 0, "owned_by": "local"}),
        )
        .collect();
    Json(json!({ "object": "list", "data": data }))
}
