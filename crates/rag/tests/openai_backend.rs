//! The OpenAI-compatible backend against a real llama.cpp server (from the
//! `llama-cpp-python[server]` package in the project venv, started here on loopback
//! and killed on drop), and its failure handling against tiny hand-made TCP servers
//! that refuse, stall or send garbage.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use overseer_rag::{Backend, ChatMessage, Error, GenParams, OpenAiBackend, OpenAiConfig};

fn root() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

/// A llama.cpp server process, killed when dropped.
struct LlamaServer {
    child: Child,
    url: String,
}

impl Drop for LlamaServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("loopback has a free port")
}

fn start_llama_server() -> LlamaServer {
    let python = root().join(".venv/bin/python");
    assert!(
        python.exists(),
        "{} missing: run scripts/setup-python server (the remote-backend tests need llama.cpp's server)",
        python.display()
    );
    let model = root().join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        model.exists(),
        "{} missing: run scripts/fetch-models",
        model.display()
    );
    let port = free_port();
    // The server logs a lot on stderr; a pipe nobody reads would block it.
    let log_path =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("llama-server-{port}.log"));
    let log = std::fs::File::create(&log_path).expect("create server log");
    let child = Command::new(&python)
        .args(["-m", "llama_cpp.server", "--model"])
        .arg(&model)
        .args([
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--n_threads",
            "2",
        ])
        .args(["--n_ctx", "2048"])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn llama_cpp.server");
    let mut server = LlamaServer {
        child,
        url: format!("http://127.0.0.1:{port}"),
    };
    let start = Instant::now();
    loop {
        if let Ok(Some(status)) = server.child.try_wait() {
            let err = std::fs::read_to_string(&log_path).unwrap_or_default();
            let err: String = err
                .chars()
                .rev()
                .take(2000)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            panic!(
                "llama_cpp.server exited ({status}); is llama-cpp-python[server] installed (scripts/setup-python server)?\n{err}"
            );
        }
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
            let _ = s.write_all(b"GET /v1/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            let mut buf = String::new();
            let _ = s.read_to_string(&mut buf);
            if buf.starts_with("HTTP/1.1 200") {
                return server;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "llama_cpp.server did not start in 90 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn backend(url: &str) -> OpenAiBackend {
    let mut cfg = OpenAiConfig::new(url);
    cfg.connect_timeout = Duration::from_secs(2);
    cfg.read_timeout = Duration::from_secs(2);
    cfg.total_timeout = Duration::from_secs(30);
    cfg.retries = 2;
    cfg.backoff = Duration::from_millis(50);
    OpenAiBackend::new(cfg).expect("valid url")
}

fn msgs() -> Vec<ChatMessage> {
    vec![
        ChatMessage::system("You answer briefly."),
        ChatMessage::user("What is the capital of France?"),
    ]
}

#[test]
fn streams_from_a_real_llama_cpp_server() {
    let server = start_llama_server();
    let mut cfg = OpenAiConfig::new(format!("{}/v1", server.url));
    cfg.api_key = Some("test-key".into()); // llama.cpp ignores it without --api_key
    let b = OpenAiBackend::new(cfg).expect("valid url");
    let params = GenParams {
        max_tokens: 24,
        ..GenParams::default()
    };
    let mut pieces = Vec::new();
    let c = b
        .chat(&msgs(), &params, &mut |p| {
            pieces.push(p.to_string());
            ControlFlow::Continue(())
        })
        .expect("completion");
    assert!(pieces.len() > 1, "streamed in several pieces: {pieces:?}");
    assert_eq!(pieces.concat(), c.text);
    assert!(!c.text.trim().is_empty());
    assert!(c.completion_tokens <= 24 + 1);
    assert!(c.first_token.is_some_and(|f| f <= c.total));
    // A second request on the same agent (pooled connection) works too.
    let again = b
        .chat(&msgs(), &params, &mut |_| ControlFlow::Continue(()))
        .expect("again");
    assert!(!again.text.trim().is_empty());
    // The callback can stop generation early.
    let mut n = 0;
    let stopped = b
        .chat(&msgs(), &params, &mut |_| {
            n += 1;
            if n == 2 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .expect("stopped");
    assert!(stopped.cancelled);
    assert_eq!(n, 2);
}

#[test]
fn server_down_is_a_connect_error_after_retries() {
    let port = free_port(); // nothing listens here
    let start = Instant::now();
    let e = backend(&format!("http://127.0.0.1:{port}"))
        .chat(&msgs(), &GenParams::default(), &mut |_| {
            ControlFlow::Continue(())
        })
        .expect_err("nobody listens");
    assert!(matches!(e, Error::Connect { .. }), "{e}");
    assert!(e.to_string().contains("cannot reach the LLM server"), "{e}");
    // Two retries with 50 ms and 100 ms backoff, no hang.
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(150) && took < Duration::from_secs(10),
        "{took:?}"
    );
}

/// A one-thread HTTP server answering each connection with `respond(i)`, where `i`
/// counts connections; `None` means accept and never answer.
fn fake_server(
    respond: impl Fn(usize) -> Option<Vec<u8>> + Send + 'static,
) -> (String, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let url = format!("http://{}", l.local_addr().expect("addr"));
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in l.incoming() {
            let Ok(mut s) = stream else { continue };
            let i = c.fetch_add(1, Ordering::SeqCst);
            // Read the request head and body (by content-length).
            let mut r = BufReader::new(s.try_clone().expect("clone"));
            let mut len = 0;
            loop {
                let mut line = String::new();
                if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; len];
            let _ = r.read_exact(&mut body);
            match respond(i) {
                Some(bytes) => {
                    let _ = s.write_all(&bytes);
                }
                None => held.push(s), // stall: keep the socket open, say nothing
            }
        }
    });
    (url, count)
}

fn http(status: &str, ctype: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status}\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[test]
fn stalled_server_times_out() {
    let (url, _) = fake_server(|_| None);
    let start = Instant::now();
    let e = backend(&url)
        .chat(&msgs(), &GenParams::default(), &mut |_| {
            ControlFlow::Continue(())
        })
        .expect_err("stalls");
    assert!(matches!(e, Error::Timeout { .. }), "{e}");
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn garbage_is_a_bad_response() {
    for body in [
        http("200 OK", "text/event-stream", "data: this is not json\n\n"),
        http("200 OK", "application/json", "<html>hello</html>"),
        http("200 OK", "application/json", "{\"choices\": []}"),
        http("200 OK", "text/event-stream", ": only a comment\n\n"),
        b"NOT HTTP AT ALL\r\n\r\n".to_vec(),
    ] {
        let (url, _) = fake_server(move |_| Some(body.clone()));
        let e = backend(&url)
            .chat(&msgs(), &GenParams::default(), &mut |_| {
                ControlFlow::Continue(())
            })
            .expect_err("garbage");
        assert!(matches!(e, Error::BadResponse { .. }), "{e}");
    }
}

#[test]
fn retries_5xx_then_succeeds_and_does_not_retry_4xx() {
    let ok = "data: {\"choices\":[{\"delta\":{\"content\":\"Paris\"},\"finish_reason\":null}]}\n\n\
              data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n";
    let (url, count) = fake_server(move |i| {
        Some(if i < 2 {
            http("503 Service Unavailable", "text/plain", "busy")
        } else {
            http("200 OK", "text/event-stream", ok)
        })
    });
    let c = backend(&url)
        .chat(&msgs(), &GenParams::default(), &mut |_| {
            ControlFlow::Continue(())
        })
        .expect("third attempt succeeds");
    assert_eq!(c.text, "Paris");
    assert_eq!(count.load(Ordering::SeqCst), 3);

    let (url, count) = fake_server(|_| {
        Some(http(
            "401 Unauthorized",
            "application/json",
            "{\"error\":\"bad key\"}",
        ))
    });
    let e = backend(&url)
        .chat(&msgs(), &GenParams::default(), &mut |_| {
            ControlFlow::Continue(())
        })
        .expect_err("unauthorized");
    assert!(matches!(e, Error::Status { status: 401, .. }), "{e}");
    assert!(e.to_string().contains("bad key"));
    assert_eq!(count.load(Ordering::SeqCst), 1);
}
