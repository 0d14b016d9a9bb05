//! `overseer bench`: model prefill and decode speed, like llama-bench's `pp` and `tg`
//! tests (prompt processing of N tokens in one batch; generation of M tokens one at a
//! time from an empty context), plus peak resident memory. `overseer bench embed`
//! dispatches to `bench_embed`.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use overseer_lm::{ForwardOptions, Model};

use super::generate::load_model;
use crate::settings::{self, Global};

#[derive(clap::Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Args {
    #[command(subcommand)]
    pub sub: Option<Sub>,
    /// GGUF model file [default: the Qwen2.5 model in the models folder; env OVERSEER_MODEL].
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Prompt length of the prefill test.
    #[arg(long, default_value_t = 256)]
    pub prompt_tokens: usize,
    /// Tokens generated in the decode test.
    #[arg(long, default_value_t = 128)]
    pub gen_tokens: usize,
    /// Repetitions of each test (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Subcommand, Debug)]
pub enum Sub {
    /// Embedding throughput of the index's embedder.
    Embed(super::bench_embed::Args),
}

pub fn run(g: &Global, a: Args) -> Result<()> {
    match a.sub {
        Some(Sub::Embed(e)) => super::bench_embed::run(g, e),
        None => bench_model(g, &a),
    }
}

/// Peak resident set size of this process (`VmHWM`), when the OS reports it.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        0.0
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// A prompt of exactly `n` tokens: ordinary English text, repeated as needed.
fn bench_prompt(model: &Model, n: usize) -> Result<Vec<u32>> {
    const TEXT: &str = "The committee reviewed the proposal for a new public library in the \
        old market hall. Supporters argued that the building's large windows and central \
        location made it ideal, while critics worried about the cost of repairing the roof \
        and installing modern heating. After a long discussion, the members agreed to commission \
        an independent survey and to invite residents to a public meeting next month. ";
    let mut ids = model.encode_prompt(TEXT)?;
    let unit = model.tokenizer().encode(TEXT, false)?;
    if unit.is_empty() {
        bail!("the tokenizer produced no tokens for the benchmark text");
    }
    while ids.len() < n {
        ids.extend_from_slice(&unit);
    }
    ids.truncate(n);
    Ok(ids)
}

fn bench_model(g: &Global, a: &Args) -> Result<()> {
    if a.prompt_tokens == 0 || a.reps == 0 {
        bail!("--prompt-tokens and --reps must be positive");
    }
    let path = g.model_path(a.model.as_deref(), settings::QWEN_FILE)?;
    let t_load = Instant::now();
    let model = load_model(g, &path)?;
    let load_secs = t_load.elapsed().as_secs_f64();
    // What loading parsed and dropped (tokenizer arrays, metadata) goes back to the OS.
    crate::alloc::trim();
    let ctx = model.config().context_length;
    if a.prompt_tokens > ctx || a.gen_tokens + 1 > ctx {
        bail!("the model's context is {ctx} tokens");
    }
    let prompt = bench_prompt(&model, a.prompt_tokens)?;
    let first = prompt[0];

    // Warm-up: one short forward pass (page faults, thread pools).
    {
        let mut s = model.session(1);
        model.forward(
            &mut s,
            &[prompt[..prompt.len().min(8)].to_vec()],
            ForwardOptions::default(),
        )?;
    }

    let mut prefill = Vec::new();
    let mut decode = Vec::new();
    for rep in 0..a.reps {
        let mut s = model.session(1);
        s.reserve(prompt.len());
        let t = Instant::now();
        let logits = model.forward(
            &mut s,
            std::slice::from_ref(&prompt),
            ForwardOptions::default(),
        )?;
        logits.to_vec2::<f32>()?;
        prefill.push(a.prompt_tokens as f64 / t.elapsed().as_secs_f64());
        // The decode test runs on a fresh context, as llama-bench's `tg` does: the
        // prefill's cache is dropped first, so peak RSS counts one session, not two.
        drop(s);

        if a.gen_tokens > 0 {
            let mut s = model.session(1);
            s.reserve(1 + a.gen_tokens);
            model.forward(&mut s, &[vec![first]], ForwardOptions::default())?;
            let mut next = first;
            let t = Instant::now();
            for _ in 0..a.gen_tokens {
                let logits = model.forward(&mut s, &[vec![next]], ForwardOptions::default())?;
                let row = logits.squeeze(0)?.to_vec1::<f32>()?;
                next = row
                    .iter()
                    .enumerate()
                    .max_by(|x, y| x.1.total_cmp(y.1))
                    .map_or(0, |(i, _)| i as u32);
            }
            decode.push(a.gen_tokens as f64 / t.elapsed().as_secs_f64());
        }
        tracing::info!(
            "rep {rep}: prefill {:.1} tok/s, decode {:?} tok/s",
            prefill[rep],
            decode.last()
        );
    }
    let prefill_tok_s = median(&mut prefill);
    let decode_tok_s = median(&mut decode);
    let rss = peak_rss_bytes();
    let file_size = model.info().file_size;
    let report = serde_json::json!({
        "model": path.display().to_string(),
        "model_name": model.info().name,
        "architecture": model.info().architecture,
        "quantization": model.info().file_type.clone().unwrap_or_else(|| model.info().quantization.clone()),
        "threads": g.threads(),
        "prompt_tokens": a.prompt_tokens,
        "gen_tokens": a.gen_tokens,
        "reps": a.reps,
        "prefill_tok_s": prefill_tok_s,
        "decode_tok_s": decode_tok_s,
        "prefill_tok_s_runs": prefill,
        "decode_tok_s_runs": decode,
        "load_secs": load_secs,
        "peak_rss_bytes": rss,
        "file_size_bytes": file_size,
        "peak_rss_over_file_size": rss.map(|r| r as f64 / file_size as f64),
    });
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).context("serialising the report")?
        );
    } else {
        println!("model      {}", path.display());
        println!("threads    {}", g.threads());
        println!(
            "prefill    {prefill_tok_s:.1} tok/s ({} tokens, median of {})",
            a.prompt_tokens, a.reps
        );
        println!(
            "decode     {decode_tok_s:.1} tok/s ({} tokens, median of {})",
            a.gen_tokens, a.reps
        );
        if let Some(r) = rss {
            println!(
                "peak RSS   {:.1} MiB ({:.2}x the file)",
                r as f64 / 1048576.0,
                r as f64 / file_size as f64
            );
        }
    }
    Ok(())
}
