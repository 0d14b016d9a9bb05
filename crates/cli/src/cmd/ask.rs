//! `overseer ask`: grounded, cited answers from the literature index, streamed to the
//! terminal with the cited sources underneath, or as one JSON object (`--json`).
//! Without a question it reads questions from stdin and keeps the conversation.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use overseer_rag::{
    Answer, AskEvent, AskRequest, Assistant, AssistantConfig, Backend, Mode, OpenAiBackend,
    OpenAiConfig,
};

use crate::settings::{Global, QWEN_FILE};

/// How to reach the language model (shared by `ask`, `eval answers`, `serve` and
/// `digest`).
#[derive(clap::Args, Debug, Clone)]
pub struct BackendArgs {
    /// Local GGUF chat model [env: OVERSEER_MODEL] [default: the fetched Qwen2.5 0.5B].
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Use an OpenAI-compatible chat-completions server instead of the local model
    /// (`http://host:port`, `.../v1` or the full `.../chat/completions` URL).
    #[arg(long, env = "OVERSEER_LLM_URL")]
    pub llm_url: Option<String>,
    /// Model name sent to the server.
    #[arg(long, env = "OVERSEER_LLM_MODEL", default_value = "default")]
    pub llm_model: String,
    /// Environment variable holding the server's API key (sent as a bearer token).
    #[arg(long, default_value = "OVERSEER_LLM_API_KEY")]
    pub llm_api_key_env: String,
    /// Seconds to wait for a connection to the server.
    #[arg(long, default_value_t = 5.0)]
    pub llm_connect_timeout: f64,
    /// Seconds the server may stay silent (before its first token or between tokens).
    #[arg(long, default_value_t = 60.0)]
    pub llm_read_timeout: f64,
    /// Retries after connection failures, 429 and 5xx, with exponential backoff.
    #[arg(long, default_value_t = 2)]
    pub llm_retries: u32,
    /// The server model's context size in tokens.
    #[arg(long, default_value_t = 2048)]
    pub llm_context: usize,
}

/// The language model and the answer pipeline's settings (shared with `overseer eval
/// answers` and `overseer serve`).
#[derive(clap::Args, Debug, Clone)]
pub struct LlmArgs {
    #[command(flatten)]
    pub backend: BackendArgs,
    /// Abstain when no source reaches this cosine similarity to the question
    /// [default: 0.35, `AssistantConfig::default`; its abstention and false-abstention
    /// rates on the answer eval are in docs/BENCHMARKS.md, "Grounded answers"].
    #[arg(long)]
    pub min_relevance: Option<f32>,
    /// Most tokens of sources put in the prompt (bounds prompt processing time).
    #[arg(long, default_value_t = AssistantConfig::default().max_context_tokens)]
    pub max_context_tokens: usize,
    /// Most tokens in an answer [default: by mode: 220, concise 80, rookie 240].
    #[arg(long)]
    pub max_answer_tokens: Option<usize>,
    /// Most evidence sentences given to the model.
    #[arg(long, default_value_t = AssistantConfig::default().evidence.max_sentences)]
    pub evidence_sentences: usize,
    /// Most characters of evidence given to the model.
    #[arg(long, default_value_t = AssistantConfig::default().evidence.max_chars)]
    pub evidence_chars: usize,
}

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The question; without one, questions are read from stdin as a conversation.
    pub question: Vec<String>,
    /// Answer style.
    #[arg(long, default_value = "default", value_parser = ["default", "concise", "rookie"])]
    pub mode: String,
    /// Number of sources given to the model.
    #[arg(long, short, default_value_t = 5)]
    pub k: usize,
    /// Only use documents from this source (e.g. alignment_newsletter).
    #[arg(long)]
    pub source: Option<String>,
    /// Print one JSON object per answer instead of streaming text.
    #[arg(long)]
    pub json: bool,
    /// Do not suggest follow-up questions (saves one short generation).
    #[arg(long)]
    pub no_followups: bool,
    #[command(flatten)]
    pub llm: LlmArgs,
}

/// The assistant for these settings: the index in the data dir, its embedder, and the
/// local model or the remote server. Fails early with "ingest first" on an empty index.
pub fn build_assistant(g: &Global, llm: &LlmArgs) -> Result<Assistant> {
    let data_dir = g.data_dir()?;
    let (retriever, embedder) =
        overseer_rag::open_index(&data_dir, &g.embedder_dir()?, g.threads())
            .with_context(|| format!("cannot open the index in {}", data_dir.display()))?;
    if retriever.document_count()? == 0 {
        bail!(
            "the index in {} is empty: run `overseer ingest` first (e.g. `overseer ingest ../shared/data/corpus`)",
            data_dir.display()
        );
    }
    let backend = build_backend(g, &llm.backend)?;
    Ok(Assistant::new(
        retriever,
        backend,
        Some(embedder),
        assistant_config(llm),
    ))
}

/// The pipeline's settings from the command line; `overseer serve` uses the same, so
/// `/api/ask` and `overseer ask` answer alike.
pub fn assistant_config(llm: &LlmArgs) -> AssistantConfig {
    let mut config = AssistantConfig::default();
    if let Some(r) = llm.min_relevance {
        config.min_relevance = r;
    }
    config.max_context_tokens = llm.max_context_tokens;
    config.max_answer_tokens = llm.max_answer_tokens;
    config.evidence.max_sentences = llm.evidence_sentences;
    config.evidence.max_chars = llm.evidence_chars;
    config
}

/// The remote server's settings from the command line, when `--llm-url` is set.
pub fn openai_config(b: &BackendArgs) -> Result<Option<OpenAiConfig>> {
    let Some(url) = &b.llm_url else {
        return Ok(None);
    };
    let mut cfg = OpenAiConfig::new(url.clone());
    cfg.model = b.llm_model.clone();
    cfg.api_key = std::env::var(&b.llm_api_key_env)
        .ok()
        .filter(|k| !k.is_empty());
    cfg.connect_timeout = secs(b.llm_connect_timeout, "--llm-connect-timeout")?;
    cfg.read_timeout = secs(b.llm_read_timeout, "--llm-read-timeout")?;
    cfg.retries = b.llm_retries;
    cfg.context_window = b.llm_context;
    Ok(Some(cfg))
}

/// The remote server (`--llm-url`) or the local GGUF model.
pub fn build_backend(g: &Global, b: &BackendArgs) -> Result<Arc<dyn Backend>> {
    Ok(match openai_config(b)? {
        Some(cfg) => Arc::new(OpenAiBackend::new(cfg)?),
        None => {
            let path = g.model_path(b.model.as_deref(), QWEN_FILE)?;
            let model = overseer_lm::Model::load(&path, &g.load_options()?)
                .with_context(|| format!("cannot load {}", path.display()))?;
            Arc::new(overseer_rag::LocalBackend::new(model))
        }
    })
}

fn secs(v: f64, flag: &str) -> Result<Duration> {
    if !(v.is_finite() && v > 0.0) {
        bail!("{flag} must be a positive number of seconds");
    }
    Ok(Duration::from_secs_f64(v))
}

pub fn run(g: &Global, a: Args) -> Result<()> {
    let mode: Mode = a.mode.parse()?;
    let assistant = build_assistant(g, &a.llm)?;
    let mut req = AskRequest {
        question: String::new(),
        history: Vec::new(),
        mode,
        k: a.k,
        source: a.source.clone(),
        followups: !a.no_followups,
    };
    if !a.question.is_empty() {
        req.question = a.question.join(" ");
        ask_once(&assistant, &req, a.json)?;
        return Ok(());
    }
    // Conversation: one question per line.
    let stdin = std::io::stdin();
    let interactive = stdin.is_terminal();
    let mut lines = stdin.lock().lines();
    loop {
        if interactive {
            eprint!("\n> ");
            std::io::stderr().flush().ok();
        }
        let Some(line) = lines.next() else { break };
        let line = line.context("cannot read stdin")?;
        let q = line.trim();
        if q.is_empty() {
            continue;
        }
        if matches!(q, "exit" | "quit" | ":q") {
            break;
        }
        req.question = q.to_string();
        match ask_once(&assistant, &req, a.json) {
            Ok(ans) => req.history.push((q.to_string(), ans.answer)),
            // One bad turn does not end the conversation.
            Err(e) => eprintln!("error: {e:#}"),
        }
    }
    Ok(())
}

fn ask_once(assistant: &Assistant, req: &AskRequest, json: bool) -> Result<Answer> {
    if json {
        let ans = assistant.ask(req, &mut |_| {})?;
        println!("{}", serde_json::to_string(&ans)?);
        return Ok(ans);
    }
    let color = std::io::stdout().is_terminal();
    let mut out = std::io::stdout().lock();
    let mut md = MarkdownStream::new(color);
    let ans = assistant.ask(req, &mut |e| match e {
        AskEvent::Rewritten(q) => eprintln!("(searching for: {q})"),
        AskEvent::Token(t) => {
            let _ = write!(out, "{}", md.push(&t));
            let _ = out.flush();
        }
        // The streamed text gave way to a fallback or an abstention: say so and
        // print the replacement in full.
        AskEvent::Replace(t) => {
            let _ = write!(out, "{}", md.push(&format!("\n\n{t}")));
            let _ = out.flush();
        }
        _ => {}
    })?;
    let _ = write!(out, "{}", md.finish());
    drop(out);
    print_sources(&ans, color);
    Ok(ans)
}

fn print_sources(ans: &Answer, color: bool) {
    let (b, d, r) = if color {
        ("\x1b[1m", "\x1b[2m", "\x1b[0m")
    } else {
        ("", "", "")
    };
    println!();
    let weak: Vec<&str> = ans
        .sentences
        .iter()
        .filter(|s| !s.supported)
        .map(|s| s.text.as_str())
        .collect();
    if !weak.is_empty() {
        println!("\n{b}Weakly supported by the cited passages:{r}");
        for s in weak {
            println!("  ⚠ {s}");
        }
    }
    if !ans.citations.is_empty() {
        println!("\n{b}Sources{r}");
        for c in &ans.citations {
            let mut line = format!("[{}] {}", c.n, c.title);
            if !c.authors.is_empty() {
                line.push_str(&format!(" — {}", c.authors.join(", ")));
            }
            if let Some(date) = &c.date {
                line.push_str(&format!(" ({})", date.get(..10).unwrap_or(date)));
            }
            if !c.supported {
                line.push_str(" ⚠ weak support");
            }
            println!("{line}");
            if !c.url.is_empty() {
                println!("    {d}{}{r}", c.url);
            }
            let excerpt: String = c.passage.chars().take(240).collect();
            let more = if excerpt.len() < c.passage.len() {
                "…"
            } else {
                ""
            };
            println!(
                "    {d}“{}{more}” (chars {}–{}){r}",
                excerpt.replace('\n', " "),
                c.passage_start,
                c.passage_end
            );
        }
    }
    if !ans.followups.is_empty() {
        println!("\n{b}You could also ask{r}");
        for f in &ans.followups {
            println!("  • {f}");
        }
    }
    let t = &ans.timings;
    eprintln!(
        "{d}[retrieval {:.0} ms · first token {:.0} ms · generation {:.0} ms · total {:.0} ms]{r}",
        t.retrieval_ms, t.first_token_ms, t.generation_ms, t.total_ms
    );
}

/// Streaming markdown for a terminal: `**bold**` and `# headings` in bold, `` `code` ``
/// dimmed; everything else as written. Without color the text passes through unchanged.
struct MarkdownStream {
    color: bool,
    bold: bool,
    code: bool,
    heading: bool,
    line_start: bool,
    pending_star: bool,
}

impl MarkdownStream {
    fn new(color: bool) -> Self {
        Self {
            color,
            bold: false,
            code: false,
            heading: false,
            line_start: true,
            pending_star: false,
        }
    }

    fn push(&mut self, text: &str) -> String {
        if !self.color {
            return text.to_string();
        }
        let mut out = String::new();
        for c in text.chars() {
            if self.pending_star {
                self.pending_star = false;
                if c == '*' {
                    self.bold = !self.bold;
                    out.push_str(if self.bold { "\x1b[1m" } else { "\x1b[22m" });
                    continue;
                }
                out.push('*');
            }
            match c {
                '*' => self.pending_star = true,
                '`' => {
                    self.code = !self.code;
                    out.push_str(if self.code { "\x1b[2m" } else { "\x1b[22m" });
                }
                '#' if self.line_start => {
                    self.heading = true;
                    out.push_str("\x1b[1m#");
                }
                '\n' => {
                    if self.heading {
                        out.push_str("\x1b[22m");
                        self.heading = false;
                    }
                    out.push('\n');
                }
                c => out.push(c),
            }
            self.line_start = c == '\n';
        }
        out
    }

    fn finish(&mut self) -> String {
        let mut out = String::new();
        if self.pending_star {
            out.push('*');
        }
        if self.color {
            out.push_str("\x1b[0m");
        }
        out.push('\n');
        out
    }
}
