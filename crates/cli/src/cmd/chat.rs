//! `overseer chat`: an interactive, streaming, multi-turn conversation with a local
//! GGUF model. Reads one user message per line from stdin (a terminal or a pipe);
//! `/reset` forgets the conversation, `/quit` (or end of input) leaves.
//!
//! The KV cache is reused across turns: each turn re-renders the whole conversation
//! with the chat template and feeds only the tokens after the longest prefix already
//! in the session's cache.

use std::io::{BufRead, IsTerminal, Write};
use std::ops::ControlFlow;
use std::path::PathBuf;

use anyhow::{Context, Result};
use overseer_lm::{Message, Role};

use super::generate::{SamplingArgs, load_model};
use crate::settings::{self, Global};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// GGUF model file [default: the Qwen2.5 model in the models folder; env OVERSEER_MODEL].
    #[arg(long)]
    pub model: Option<PathBuf>,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// System message for the conversation.
    #[arg(long)]
    pub system: Option<String>,
    /// Steer with a refusal-lab run's direction: add COEF·r (default 1) at the run's
    /// layer, at every position. DIR is a run folder or its direction.safetensors.
    #[arg(long, value_name = "DIR[:COEF]")]
    pub steer: Option<String>,
    /// Ablate a refusal-lab run's direction: project it out of the residual stream at
    /// every layer and position.
    #[arg(long, value_name = "DIR")]
    pub ablate: Option<PathBuf>,
}

/// `DIR[:COEF]`: a trailing `:number` is the coefficient, anything else is the path.
fn parse_steer(spec: &str) -> Result<(PathBuf, f64)> {
    if let Some((dir, coef)) = spec.rsplit_once(':')
        && let Ok(c) = coef.parse::<f64>()
    {
        if !c.is_finite() {
            anyhow::bail!("--steer coefficient must be a finite number, got '{coef}'");
        }
        return Ok((PathBuf::from(dir), c));
    }
    Ok((PathBuf::from(spec), 1.0))
}

/// The lab hooks asked for on the command line (empty when none).
fn lab_hooks(model: &overseer_lm::Model, a: &Args) -> Result<overseer_lm::HookList> {
    let mut hooks = overseer_lm::HookList::default();
    let mut add = |dir: &std::path::Path, iv: overseer_lab::Intervention| -> Result<()> {
        let hook = overseer_lab::load_direction(dir)
            .and_then(|d| d.hook(model, iv))
            .with_context(|| format!("cannot use the direction in {}", dir.display()))?;
        hooks.0.extend(hook);
        Ok(())
    };
    if let Some(spec) = &a.steer {
        let (dir, coef) = parse_steer(spec)?;
        add(&dir, overseer_lab::Intervention::Add(coef))?;
    }
    if let Some(dir) = &a.ablate {
        add(dir, overseer_lab::Intervention::Ablate)?;
    }
    Ok(hooks)
}

pub fn run(g: &Global, a: Args) -> Result<()> {
    let path = g.model_path(a.model.as_deref(), settings::QWEN_FILE)?;
    let model = load_model(g, &path)?;
    let mut hooks = lab_hooks(&model, &a)?;
    let interactive = std::io::stdin().is_terminal();
    if interactive {
        eprintln!(
            "overseer chat with {} ({}). /reset starts over, /quit leaves.",
            model.info().name.as_deref().unwrap_or("model"),
            path.display()
        );
    }
    let system: Vec<Message> = a
        .system
        .iter()
        .map(|s| Message::system(s.clone()))
        .collect();
    let mut history = system.clone();
    let mut session = model.session(1);
    // Tokens held in the session's cache, in order.
    let mut cached: Vec<u32> = Vec::new();
    let opts = a.sampling.options();
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    loop {
        if interactive {
            eprint!("> ");
            let _ = std::io::stderr().flush();
        }
        let Some(line) = lines.next() else { break };
        let line = line.context("cannot read stdin")?;
        let line = line.trim();
        match line {
            "" => continue,
            "/quit" | "/exit" => break,
            "/reset" => {
                history = system.clone();
                session.reset();
                cached.clear();
                if interactive {
                    eprintln!("(conversation reset)");
                }
                continue;
            }
            _ => {}
        }
        history.push(Message::user(line.to_string()));
        let tokens = model.encode_chat(&history, true)?;
        // Reuse the cached prefix; always feed at least one token.
        let common = cached
            .iter()
            .zip(&tokens)
            .take_while(|(a, b)| a == b)
            .count();
        let keep = common.min(tokens.len() - 1);
        if keep < session.len() {
            session.truncate(keep);
        }
        let keep = session.len();
        let fresh = &tokens[keep..];
        let stdout = std::io::stdout();
        let mut out = stdout.lock();
        let generation = match overseer_lm::generate(
            &model,
            &mut session,
            fresh,
            &opts,
            if hooks.0.is_empty() {
                None
            } else {
                Some(&mut hooks as &mut dyn overseer_lm::Hook)
            },
            &mut |t| {
                let _ = out.write_all(t.as_bytes());
                let _ = out.flush();
                ControlFlow::Continue(())
            },
        ) {
            Ok(g) => g,
            Err(overseer_lm::Error::ContextOverflow { tokens, context }) => {
                eprintln!(
                    "the conversation ({tokens} tokens) no longer fits the context of {context}; /reset to start over"
                );
                history.pop();
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let _ = writeln!(out);
        let _ = out.flush();
        cached = tokens[..keep].to_vec();
        cached.extend_from_slice(fresh);
        cached.extend_from_slice(&generation.tokens);
        cached.truncate(session.len());
        history.push(Message::new(Role::Assistant, generation.text));
    }
    Ok(())
}
