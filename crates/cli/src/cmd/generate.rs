//! `overseer generate`: one completion from a local GGUF model, streamed to stdout.
//! Only the completion goes to stdout; timings and diagnostics go to stderr.

use std::io::Write;
use std::ops::ControlFlow;
use std::path::PathBuf;

use anyhow::{Context, Result};
use overseer_lm::{GenerateOptions, Message, Model, SamplingParams};

use crate::settings::{self, Global};

/// Sampling flags shared by `generate` and `chat`.
#[derive(clap::Args, Debug, Clone)]
pub struct SamplingArgs {
    /// Most tokens to generate.
    #[arg(long, default_value_t = 256)]
    pub max_tokens: usize,
    /// Sampling temperature; greedy decoding when omitted or 0.
    #[arg(long, value_parser = temperature)]
    pub temperature: Option<f32>,
    /// Sample only among the K most likely tokens (0: no limit).
    #[arg(long, default_value_t = 40)]
    pub top_k: usize,
    /// Nucleus sampling: keep tokens up to this cumulative probability.
    #[arg(long, default_value_t = 0.95, value_parser = top_p)]
    pub top_p: f32,
    /// Random seed for sampling.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Stop when the text contains this string (repeatable).
    #[arg(long)]
    pub stop: Vec<String>,
}

/// `--temperature`: a finite number, 0 or more.
fn temperature(s: &str) -> Result<f32, String> {
    match s.parse::<f32>() {
        Ok(t) if t.is_finite() && t >= 0.0 => Ok(t),
        _ => Err("must be a finite number, 0 (greedy) or more".into()),
    }
}

/// `--top-p`: above 0, at most 1.
fn top_p(s: &str) -> Result<f32, String> {
    match s.parse::<f32>() {
        Ok(p) if p > 0.0 && p <= 1.0 => Ok(p),
        _ => Err("must be above 0 and at most 1".into()),
    }
}

impl SamplingArgs {
    pub fn options(&self) -> GenerateOptions {
        let sampling = match self.temperature {
            Some(t) if t > 0.0 => SamplingParams {
                temperature: t,
                top_k: self.top_k,
                top_p: self.top_p,
                seed: self.seed,
            },
            _ => SamplingParams::greedy(),
        };
        GenerateOptions {
            max_tokens: self.max_tokens,
            sampling,
            stop: self.stop.clone(),
            ..GenerateOptions::default()
        }
    }
}

#[derive(clap::Args, Debug)]
pub struct Args {
    /// GGUF model file [default: the Qwen2.5 model in the models folder; env OVERSEER_MODEL].
    #[arg(long)]
    pub model: Option<PathBuf>,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// System message for the chat template.
    #[arg(long)]
    pub system: Option<String>,
    /// Feed the prompt as is, without the chat template.
    #[arg(long)]
    pub raw: bool,
    /// Print timings to stderr.
    #[arg(long)]
    pub timings: bool,
    /// The prompt.
    pub prompt: String,
}

/// Load the model at `path` with the global thread and device settings.
pub fn load_model(g: &Global, path: &std::path::Path) -> Result<Model> {
    tracing::info!("loading {}", path.display());
    let opts = g.load_options()?;
    // The runtime's errors already name the file.
    Ok(Model::load(path, &opts)?)
}

pub fn run(g: &Global, a: Args) -> Result<()> {
    let path = g.model_path(a.model.as_deref(), settings::QWEN_FILE)?;
    let model = load_model(g, &path)?;
    let prompt = if a.raw {
        model.encode_prompt(&a.prompt)?
    } else {
        let mut messages = Vec::new();
        if let Some(s) = &a.system {
            messages.push(Message::system(s.clone()));
        }
        messages.push(Message::user(a.prompt.clone()));
        model.encode_chat(&messages, true)?
    };
    let mut session = model.session(1);
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut write_err = None;
    let generation = overseer_lm::generate(
        &model,
        &mut session,
        &prompt,
        &a.sampling.options(),
        None,
        &mut |text| match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
            Ok(()) => ControlFlow::Continue(()),
            Err(e) => {
                write_err = Some(e);
                ControlFlow::Break(())
            }
        },
    )?;
    if let Some(e) = write_err {
        // A closed pipe (e.g. `| head`) is not an error worth a message.
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            return Err(e).context("cannot write to stdout");
        }
        return Ok(());
    }
    let _ = writeln!(out);
    let t = generation.timings;
    if a.timings || g.verbose > 0 {
        eprintln!(
            "[{} prompt tokens, {:.1} tok/s prefill; {} tokens, {:.1} tok/s decode; stop: {:?}]",
            generation.prompt_tokens,
            t.prefill_tok_s(),
            generation.tokens.len(),
            t.decode_tok_s(),
            generation.stop_reason
        );
    }
    Ok(())
}
