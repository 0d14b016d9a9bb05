//! Throughput of the lab's batched prompt pass (last-position logits under an ablation
//! hook, as in candidate scoring), with and without the shared-prefix fork, back to back:
//!
//!     cargo run --release -p overseer-lab --example prompt_pass -- MODEL.gguf \
//!         ../shared/data/refusal/harmful_val.json [--n 32] [--batch 16] [--threads T] [--repeat 3] [--f32-rows R] [--amx-rows R] [--shared-only true] [--lanes L]
//!
//! With `--lanes L > 1`, run it with `CANDLE_NUM_THREADS=1` as the CLI does.

use std::path::PathBuf;
use std::time::Instant;

use overseer_lab::{NoProgress, Runner};
use overseer_lm::{Ablation, LoadOptions, Model};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The runtime switches the `overseer` binary reads (docs/CONFIGURATION.md).
    if std::env::var_os("OVERSEER_KERNELS_AVX2").is_some() {
        overseer_kernels::Level::set_cap(overseer_kernels::Level::Avx2);
    }
    if std::env::var_os("OVERSEER_AMX").is_some_and(|v| v == "0") {
        overseer_kernels::Bf16Matrix::set_enabled(false);
    }
    overseer_lm::set_kernel_attention_default(
        std::env::var_os("OVERSEER_KERNEL_ATTENTION").is_some_and(|v| v != "0" && !v.is_empty()),
    );
    let mut args = std::env::args().skip(1);
    let usage = "usage: prompt_pass MODEL PROMPTS.json [--n N] [--batch B] [--threads T] \
                 [--repeat R] [--f32-rows R] [--amx-rows R] [--shared-only true|false] [--lanes L]";
    let model_path = PathBuf::from(args.next().ok_or(usage)?);
    let prompts_path = PathBuf::from(args.next().ok_or(usage)?);
    let (mut n, mut batch, mut threads, mut repeat) = (32usize, 16usize, None, 3usize);
    let (mut f32_rows, mut amx_rows, mut shared_only) = (None, None, false);
    let mut lanes = 1usize;
    while let Some(flag) = args.next() {
        let val = args.next().ok_or(usage)?;
        match flag.as_str() {
            "--n" => n = val.parse()?,
            "--batch" => batch = val.parse()?,
            "--threads" => threads = Some(val.parse()?),
            "--repeat" => repeat = val.parse()?,
            "--f32-rows" => f32_rows = Some(val.parse()?),
            "--amx-rows" => amx_rows = Some(val.parse()?),
            "--shared-only" => shared_only = val.parse()?,
            "--lanes" => lanes = val.parse()?,
            _ => return Err(usage.into()),
        }
    }
    let mut opts = LoadOptions::cpu(threads);
    opts.f32_gemm_rows = f32_rows;
    opts.amx_rows = amx_rows;
    let model = Model::load(&model_path, &opts)?;
    let items: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(&prompts_path)?)?;
    let texts: Vec<String> = items
        .iter()
        .filter_map(|v| {
            v.get("instruction")
                .and_then(|s| s.as_str())
                .map(str::to_string)
        })
        .take(n)
        .collect();
    let hidden = model.config().hidden;
    let dir: Vec<f32> = (0..hidden).map(|i| ((i * 5 % 11) as f32) - 5.0).collect();
    let mut hook = Ablation::new(&dir, model.device())?;
    for share_prefix in [false, true] {
        if !share_prefix && shared_only {
            continue;
        }
        let r = Runner {
            model: &model,
            batch,
            gen_batch: batch,
            refusal_ids: vec![0],
            system_prompt: None,
            share_prefix,
            lanes,
        };
        let prompts = r.encode_all(&texts)?;
        let tokens: usize = prompts.iter().map(Vec::len).sum();
        let mut times = Vec::new();
        for _ in 0..repeat {
            let t = Instant::now();
            r.last_logits(&prompts, Some(&mut hook), &NoProgress)?;
            times.push(t.elapsed().as_secs_f64());
        }
        times.sort_by(f64::total_cmp);
        let med = times[times.len() / 2];
        println!(
            "share_prefix={share_prefix}: {} prompts ({tokens} tokens), median {med:.3} s = {:.2} prompts/s",
            prompts.len(),
            prompts.len() as f64 / med
        );
    }
    Ok(())
}
