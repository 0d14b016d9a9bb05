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
}

pub fn run(g: &Global, a: Args) -> Result<()> {
    let path = g.model_path(a.model.as_deref(), settings::QWEN_FILE)?;
    let model = load_model(g, &path)?;
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
            None,
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
