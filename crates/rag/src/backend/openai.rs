//! Any OpenAI-compatible chat-completions server (llama.cpp's server, vLLM, Ollama,
//! hosted APIs) over blocking HTTP with `ureq`, streamed with server-sent events.
//!
//! Failure handling is the point of this module: connect and per-read timeouts so a
//! dead or stalled server ends in an error instead of a hang, an overall deadline,
//! retries with exponential backoff for connection failures, 429 and 5xx (only before
//! any text was streamed, so nothing is duplicated), and a clear error for responses
//! that are not chat completions.

use std::io::{BufRead, BufReader, Read};
use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{Backend, ChatMessage, Completion, GenParams};
use crate::{Error, Result};

/// The largest response body read from a server (a guard against garbage floods).
const MAX_BODY_BYTES: u64 = 16 << 20;
/// The longest single SSE line accepted.
const MAX_LINE_BYTES: usize = 1 << 20;

/// How to reach the server.
#[derive(Debug, Clone)]
pub struct OpenAiConfig {
    /// Base URL (`http://host:port`, `.../v1`, or the full `.../chat/completions`).
    pub url: String,
    /// Bearer token, if the server wants one.
    pub api_key: Option<String>,
    /// Model name sent in the request (servers with one model ignore it).
    pub model: String,
    /// Time allowed to open the connection.
    pub connect_timeout: Duration,
    /// Time allowed between two reads once connected (the server's first token
    /// included): a stalled server fails after this.
    pub read_timeout: Duration,
    /// Deadline for a whole request, streaming included.
    pub total_timeout: Duration,
    /// Extra attempts after a retryable failure.
    pub retries: u32,
    /// First backoff; doubled per attempt.
    pub backoff: Duration,
    /// The server's context size in tokens (used to budget the sources).
    pub context_window: usize,
}

impl OpenAiConfig {
    /// Defaults for `url`: 5 s connect, 60 s read, 10 min total, 2 retries from 250 ms,
    /// a 2048-token context (llama.cpp's server default).
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            api_key: None,
            model: "default".into(),
            connect_timeout: Duration::from_secs(5),
            read_timeout: Duration::from_secs(60),
            total_timeout: Duration::from_secs(600),
            retries: 2,
            backoff: Duration::from_millis(250),
            context_window: 2048,
        }
    }
}

/// A chat backend speaking the OpenAI chat-completions protocol.
pub struct OpenAiBackend {
    cfg: OpenAiConfig,
    endpoint: String,
    agent: ureq::Agent,
}

impl std::fmt::Debug for OpenAiBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the API key.
        f.debug_struct("OpenAiBackend")
            .field("endpoint", &self.endpoint)
            .field("model", &self.cfg.model)
            .finish()
    }
}

/// `.../chat/completions` for a base URL.
fn endpoint(url: &str) -> String {
    let u = url.trim_end_matches('/');
    if u.ends_with("/chat/completions") {
        u.to_string()
    } else if u.ends_with("/v1") {
        format!("{u}/chat/completions")
    } else {
        format!("{u}/v1/chat/completions")
    }
}

enum Attempt {
    Done(Completion),
    /// Failed before anything was streamed; may be retried.
    Retry(Error),
    Fatal(Error),
}

impl OpenAiBackend {
    /// A backend for `cfg`; fails only on an unusable URL.
    pub fn new(cfg: OpenAiConfig) -> Result<Self> {
        if !(cfg.url.starts_with("http://") || cfg.url.starts_with("https://")) {
            return Err(Error::InvalidArgument(format!(
                "LLM URL must start with http:// or https://, got '{}'",
                cfg.url
            )));
        }
        let endpoint = endpoint(&cfg.url);
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(cfg.connect_timeout))
            .timeout_per_read(Some(cfg.read_timeout))
            .timeout_global(Some(cfg.total_timeout))
            .build()
            .into();
        Ok(Self {
            cfg,
            endpoint,
            agent,
        })
    }

    fn url_err(&self, e: ureq::Error) -> (bool, Error) {
        let url = self.endpoint.clone();
        match e {
            ureq::Error::Timeout(t) => {
                let retry = matches!(t, ureq::Timeout::Connect | ureq::Timeout::Resolve);
                (
                    retry,
                    Error::Timeout {
                        url,
                        reason: format!("{t}"),
                    },
                )
            }
            ureq::Error::Io(io) if io.kind() == std::io::ErrorKind::TimedOut => (
                false,
                Error::Timeout {
                    url,
                    reason: io.to_string(),
                },
            ),
            ureq::Error::ConnectionFailed | ureq::Error::HostNotFound => (
                true,
                Error::Connect {
                    url,
                    reason: e.to_string(),
                },
            ),
            ureq::Error::Io(io)
                if matches!(
                    io.kind(),
                    std::io::ErrorKind::ConnectionRefused
                        | std::io::ErrorKind::ConnectionReset
                        | std::io::ErrorKind::ConnectionAborted
                        | std::io::ErrorKind::NotConnected
                ) =>
            {
                (
                    true,
                    Error::Connect {
                        url,
                        reason: io.to_string(),
                    },
                )
            }
            other => (
                false,
                Error::BadResponse {
                    url,
                    reason: other.to_string(),
                },
            ),
        }
    }

    fn attempt(
        &self,
        body: &Value,
        start: Instant,
        on_text: &mut dyn FnMut(&str) -> ControlFlow<()>,
    ) -> Attempt {
        let mut req = self
            .agent
            .post(&self.endpoint)
            .header("Accept", "text/event-stream, application/json");
        if let Some(key) = &self.cfg.api_key {
            req = req.header("Authorization", &format!("Bearer {key}"));
        }
        let resp = match req.send_json(body) {
            Ok(r) => r,
            Err(e) => {
                let (retry, err) = self.url_err(e);
                return if retry {
                    Attempt::Retry(err)
                } else {
                    Attempt::Fatal(err)
                };
            }
        };
        let status = resp.status().as_u16();
        let is_sse = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("text/event-stream"));
        let reader = resp.into_body().into_reader().take(MAX_BODY_BYTES);
        if status != 200 {
            let mut text = String::new();
            let _ = reader.take(2000).read_to_string(&mut text);
            let err = Error::Status {
                url: self.endpoint.clone(),
                status,
                body: text.trim().chars().take(300).collect(),
            };
            let retry = status == 429 || status >= 500;
            return if retry {
                Attempt::Retry(err)
            } else {
                Attempt::Fatal(err)
            };
        }
        let result = if is_sse {
            self.read_sse(reader, start, on_text)
        } else {
            self.read_json(reader, start, on_text)
        };
        match result {
            Ok(c) => Attempt::Done(c),
            Err(e) => Attempt::Fatal(e),
        }
    }

    fn bad(&self, reason: impl Into<String>) -> Error {
        Error::BadResponse {
            url: self.endpoint.clone(),
            reason: reason.into(),
        }
    }

    fn io_err(&self, e: std::io::Error) -> Error {
        if e.kind() == std::io::ErrorKind::TimedOut {
            return Error::Timeout {
                url: self.endpoint.clone(),
                reason: e.to_string(),
            };
        }
        // ureq wraps its own timeouts into io errors when reading the body.
        let msg = e.to_string();
        if msg.contains("timeout") || msg.contains("timed out") {
            return Error::Timeout {
                url: self.endpoint.clone(),
                reason: msg,
            };
        }
        self.bad(format!("reading the response failed: {msg}"))
    }

    fn read_sse(
        &self,
        reader: impl Read,
        start: Instant,
        on_text: &mut dyn FnMut(&str) -> ControlFlow<()>,
    ) -> Result<Completion> {
        let mut out = Completion::default();
        let mut reader = BufReader::new(reader);
        let mut line = String::new();
        let mut saw_data = false;
        let mut done = false;
        loop {
            line.clear();
            let n = (&mut reader)
                .take(MAX_LINE_BYTES as u64 + 1)
                .read_line(&mut line)
                .map_err(|e| self.io_err(e))?;
            if n == 0 {
                break;
            }
            if n > MAX_LINE_BYTES {
                return Err(self.bad("event line longer than 1 MiB"));
            }
            let l = line.trim_end_matches(['\r', '\n']);
            let Some(data) = l.strip_prefix("data:") else {
                continue; // comments, `event:`, blank separators
            };
            let data = data.trim();
            if data == "[DONE]" {
                done = true;
                break;
            }
            let v: Value = serde_json::from_str(data)
                .map_err(|e| self.bad(format!("event is not JSON ({e}): {}", clip(data))))?;
            if let Some(err) = v.get("error") {
                return Err(self.bad(format!("server error: {}", clip(&err.to_string()))));
            }
            let choice = v
                .get("choices")
                .and_then(|c| c.get(0))
                .ok_or_else(|| self.bad(format!("event without choices: {}", clip(data))))?;
            saw_data = true;
            if let Some(u) = v.get("usage").filter(|u| !u.is_null()) {
                out.prompt_tokens = u
                    .get("prompt_tokens")
                    .and_then(Value::as_u64)
                    .map(|x| x as usize);
            }
            let piece = choice
                .get("delta")
                .and_then(|d| d.get("content"))
                .and_then(Value::as_str)
                .unwrap_or("");
            if !piece.is_empty() {
                if out.first_token.is_none() {
                    out.first_token = Some(start.elapsed());
                }
                out.completion_tokens += 1;
                out.text.push_str(piece);
                if on_text(piece).is_break() {
                    out.cancelled = true;
                    break;
                }
            }
            if choice
                .get("finish_reason")
                .and_then(Value::as_str)
                .is_some()
            {
                done = true;
            }
        }
        if !saw_data {
            return Err(self.bad("the event stream held no completion"));
        }
        if !done && !out.cancelled {
            return Err(self.bad("the event stream ended before the completion finished"));
        }
        out.total = start.elapsed();
        Ok(out)
    }

    fn read_json(
        &self,
        mut reader: impl Read,
        start: Instant,
        on_text: &mut dyn FnMut(&str) -> ControlFlow<()>,
    ) -> Result<Completion> {
        let mut body = String::new();
        reader
            .read_to_string(&mut body)
            .map_err(|e| self.io_err(e))?;
        let v: Value = serde_json::from_str(&body)
            .map_err(|e| self.bad(format!("not JSON ({e}): {}", clip(&body))))?;
        let text = v
            .pointer("/choices/0/message/content")
            .and_then(Value::as_str)
            .ok_or_else(|| self.bad(format!("no choices[0].message.content in {}", clip(&body))))?;
        let mut out = Completion {
            text: text.to_string(),
            prompt_tokens: v
                .pointer("/usage/prompt_tokens")
                .and_then(Value::as_u64)
                .map(|x| x as usize),
            completion_tokens: v
                .pointer("/usage/completion_tokens")
                .and_then(Value::as_u64)
                .map_or(1, |x| x as usize),
            first_token: Some(start.elapsed()),
            ..Completion::default()
        };
        if !text.is_empty() && on_text(text).is_break() {
            out.cancelled = true;
        }
        out.total = start.elapsed();
        Ok(out)
    }
}

fn clip(s: &str) -> String {
    let t: String = s.chars().take(200).collect();
    if t.len() < s.len() {
        format!("{t}…")
    } else {
        t
    }
}

impl Backend for OpenAiBackend {
    fn describe(&self) -> String {
        format!("remote:{}@{}", self.cfg.model, self.endpoint)
    }

    fn context_window(&self) -> usize {
        self.cfg.context_window
    }

    /// An estimate: about 3.5 characters per token for English under BPE tokenizers,
    /// rounded up so the budget errs on the safe side.
    fn count_tokens(&self, text: &str) -> usize {
        (text.chars().count() * 2).div_ceil(7) + 1
    }

    fn chat(
        &self,
        messages: &[ChatMessage],
        params: &GenParams,
        on_text: &mut dyn FnMut(&str) -> ControlFlow<()>,
    ) -> Result<Completion> {
        let mut body = json!({
            "model": self.cfg.model,
            "messages": messages,
            "max_tokens": params.max_tokens,
            "temperature": params.temperature,
            "seed": params.seed,
            "stream": true,
        });
        if !params.stop.is_empty() {
            body["stop"] = json!(params.stop);
        }
        if params.min_tokens > 0 {
            body["min_tokens"] = json!(params.min_tokens);
        }
        let start = Instant::now();
        let mut attempt = 0;
        loop {
            match self.attempt(&body, start, on_text) {
                Attempt::Done(c) => return Ok(c),
                Attempt::Fatal(e) => return Err(e),
                Attempt::Retry(e) => {
                    if attempt >= self.cfg.retries
                        || start.elapsed() + self.cfg.backoff * 2u32.pow(attempt)
                            > self.cfg.total_timeout
                    {
                        return Err(e);
                    }
                    let wait = self.cfg.backoff * 2u32.pow(attempt);
                    tracing::warn!("LLM request failed ({e}); retrying in {wait:?}");
                    std::thread::sleep(wait);
                    attempt += 1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_accepts_base_v1_or_full_urls() {
        assert_eq!(endpoint("http://h:1"), "http://h:1/v1/chat/completions");
        assert_eq!(endpoint("http://h:1/"), "http://h:1/v1/chat/completions");
        assert_eq!(endpoint("http://h:1/v1"), "http://h:1/v1/chat/completions");
        assert_eq!(
            endpoint("http://h:1/v1/chat/completions"),
            "http://h:1/v1/chat/completions"
        );
    }

    #[test]
    fn rejects_non_http_urls() {
        assert!(matches!(
            OpenAiBackend::new(OpenAiConfig::new("localhost:8080")),
            Err(Error::InvalidArgument(_))
        ));
    }
}
