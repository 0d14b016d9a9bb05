//! `overseer serve`: the web app and HTTP API on one socket. Loads the index and the
//! model (one chat backend for the assistant and the digests' summaries), ingests `--corpus` when the index is empty, binds (127.0.0.1 unless told
//! otherwise), prints the URL and serves until Ctrl-C.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use overseer_server::{AppState, Generator, ServerConfig};

use crate::cmd::ask::LlmArgs;
use crate::settings::{Global, QWEN_FILE};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Address to listen on. Anything but loopback exposes the server to the network.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub bind: SocketAddr,
    /// The language model: local GGUF (--model) or an OpenAI-compatible server (--llm-url).
    #[command(flatten)]
    pub llm: LlmArgs,
    /// Serve search, documents, digests and the lab only (no generation: /api/ask answers
    /// 503, new digests are made without summaries).
    #[arg(long)]
    pub no_model: bool,
    /// File holding the admin bearer token (first line). Without it or
    /// OVERSEER_ADMIN_TOKEN the admin endpoints (ingest, delete, new digests) are disabled.
    #[arg(long)]
    pub admin_token_file: Option<PathBuf>,
    /// Ingest these files or folders first if the index is empty.
    #[arg(long)]
    pub corpus: Vec<PathBuf>,
    /// Allow cross-origin requests from this origin (repeatable; `*` for any). Off by default.
    #[arg(long = "cors-origin")]
    pub cors_origins: Vec<String>,
    /// Requests per second per client IP on /api and /v1 (0 = no limit).
    #[arg(long, default_value_t = 20)]
    pub rate_limit: u32,
    /// Burst allowance of the rate limit.
    #[arg(long, default_value_t = 60)]
    pub rate_burst: u32,
    /// Generation jobs that may wait for the model; more get 503 with Retry-After.
    #[arg(long, default_value_t = 8)]
    pub queue: usize,
    /// Upper bound on tokens generated per request.
    #[arg(long, default_value_t = 1024)]
    pub max_tokens: usize,
    /// Extra folder to look for refusal-lab runs in (repeatable; DATA/lab is always searched).
    #[arg(long)]
    pub lab_dir: Vec<PathBuf>,
    /// Topic file the web app's digests are grouped by (same schema as `overseer digest
    /// --topics`) [default: the research agenda's 18 challenges].
    #[arg(long)]
    pub digest_topics: Option<PathBuf>,
    /// Seconds a connection may take to send a request's headers, or stay idle between
    /// requests, before it is closed.
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub header_timeout: u64,
    /// Seconds a request body may pause between two pieces before the request fails.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub body_timeout: u64,
}

fn admin_token(a: &Args) -> Result<Option<String>> {
    if let Some(f) = &a.admin_token_file {
        let text = std::fs::read_to_string(f)
            .with_context(|| format!("cannot read admin token file {}", f.display()))?;
        let token = text.lines().next().unwrap_or("").trim().to_string();
        if token.len() < 8 {
            bail!(
                "admin token in {} is shorter than 8 characters",
                f.display()
            );
        }
        return Ok(Some(token));
    }
    match std::env::var("OVERSEER_ADMIN_TOKEN") {
        Ok(t) if !t.trim().is_empty() => {
            let t = t.trim().to_string();
            if t.len() < 8 {
                bail!("OVERSEER_ADMIN_TOKEN is shorter than 8 characters");
            }
            Ok(Some(t))
        }
        _ => Ok(None),
    }
}

pub fn run(g: &Global, a: Args) -> Result<()> {
    // A malformed topic file is refused before any model or index work.
    let digest_topics = a
        .digest_topics
        .as_deref()
        .map(overseer_rag::digest::Taxonomy::load)
        .transpose()?;
    let data_dir = g.data_dir()?;
    let mut cfg = ServerConfig::new(&data_dir);
    cfg.admin_token = admin_token(&a)?;
    cfg.cors_origins = a.cors_origins.clone();
    cfg.rate_per_sec = a.rate_limit;
    cfg.rate_burst = a.rate_burst;
    cfg.queue_capacity = a.queue;
    cfg.max_tokens_cap = a.max_tokens.max(1);
    cfg.lab_roots = a.lab_dir.clone();
    cfg.header_read_timeout = std::time::Duration::from_secs(a.header_timeout);
    cfg.body_read_timeout = std::time::Duration::from_secs(a.body_timeout);

    let lit = backends::literature(g, &data_dir)?;
    let literature: Arc<dyn overseer_server::Literature> = lit.library.clone();
    let stats = literature
        .stats()
        .map_err(|e| anyhow::anyhow!("cannot read the index: {e}"))?;
    if stats.documents == 0 && !a.corpus.is_empty() {
        eprintln!("index is empty: ingesting {} path(s)…", a.corpus.len());
        let summary = literature
            .ingest(overseer_server::IngestInput::Paths(a.corpus.clone()))
            .map_err(|e| anyhow::anyhow!("ingest failed: {e}"))?;
        eprintln!("ingested: {summary}");
    }
    // One chat backend serves the assistant and the digests' summaries.
    let (generator, backend): (Option<Box<dyn Generator>>, _) = if a.no_model {
        (None, None)
    } else {
        let (generator, backend) = backends::generator(g, &a.llm, &lit)?;
        (Some(generator), Some(backend))
    };
    let mut digester = lit.library.digester(backend);
    if let Some(t) = digest_topics {
        digester = digester.with_taxonomy(t);
    }
    let digester = Arc::new(digester);
    let state = AppState::new(cfg, literature, generator)
        .context("cannot start the server")?
        .with_digester(digester);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(serve(state, a.bind))
}

async fn serve(state: AppState, bind: SocketAddr) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(bind)
        .await
        .with_context(|| format!("cannot listen on {bind}"))?;
    let addr = listener.local_addr().context("no local address")?;
    if !addr.ip().is_loopback() {
        tracing::warn!(%addr, "listening beyond loopback: the server is reachable from the network");
    }
    println!("overseer is serving at http://{addr}/");
    use std::io::Write;
    std::io::stdout().flush().ok();
    overseer_server::serve(state, listener)
        .await
        .context("server failed")?;
    Ok(())
}

/// Builds the real back ends from the index, assistant and model crates.
mod backends {
    use std::path::Path;

    use overseer_rag::{Backend, LocalBackend, OpenAiBackend};

    use crate::cmd::ask::openai_config;
    use overseer_server::{AssistantGenerator, IndexLibrary};

    use super::*;

    pub struct Literature {
        pub library: Arc<IndexLibrary>,
    }

    pub fn literature(g: &Global, data_dir: &Path) -> Result<Literature> {
        let embedder: Arc<dyn overseer_index::Embedder> = Arc::new(
            overseer_index::MiniLm::load(&g.embedder_dir()?, g.threads())
                .context("cannot load the embedding model")?,
        );
        let library = IndexLibrary::open(data_dir, embedder)
            .map_err(|e| anyhow::anyhow!("cannot open the index in {}: {e}", data_dir.display()))?;
        Ok(Literature {
            library: Arc::new(library),
        })
    }

    /// The assistant on the generation worker, and its chat backend (shared with the
    /// digests).
    pub fn generator(
        g: &Global,
        llm: &LlmArgs,
        lit: &Literature,
    ) -> Result<(Box<dyn Generator>, Arc<dyn Backend>)> {
        let mut local = None;
        let (backend, name): (Arc<dyn Backend>, String) = match openai_config(&llm.backend)? {
            Some(cfg) => {
                let name = cfg.model.clone();
                (Arc::new(OpenAiBackend::new(cfg)?), name)
            }
            None => {
                let path = g.model_path(llm.backend.model.as_deref(), QWEN_FILE)?;
                let name = path
                    .file_stem()
                    .map_or_else(|| "local".to_string(), |s| s.to_string_lossy().into_owned());
                let opts = g.load_options()?;
                let model = Arc::new(
                    overseer_lm::Model::load(&path, &opts)
                        .with_context(|| format!("cannot load {}", path.display()))?,
                );
                local = Some(model.clone());
                (Arc::new(LocalBackend::shared(model)), name)
            }
        };
        let mut generator = AssistantGenerator::new(
            lit.library.retriever(),
            backend.clone(),
            Some(lit.library.embedder()),
            crate::cmd::ask::assistant_config(llm),
            name,
        );
        if let Some(model) = local {
            generator = generator.with_local_model(model);
        }
        Ok((Box::new(generator), backend))
    }
}
