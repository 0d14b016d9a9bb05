//! What starting activation addition at its layer saves in candidate scoring: for each
//! layer given, the induce pass (refusal scores of the prompts with `+r` at
//! `ResidPre(layer)`) run through every layer, and started at the layer from the
//! unmodified inputs captured once (`Runner::layer_inputs`), timed back to back, with
//! the largest score difference between the two:
//!
//!     cargo run --release -p overseer-lab --example induce_pass -- MODEL.gguf \
//!         ../shared/data/refusal/harmless_val.json [--n 32] [--batch 16] \
//!         [--layers 1,6,12,18] [--repeat 3] [--f32-rows 128]

use std::path::PathBuf;
use std::time::Instant;

use overseer_lab::{NoProgress, Runner};
use overseer_lm::{ActivationAddition, HookPoint, LoadOptions, Model, Positions};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

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
    let usage = "usage: induce_pass MODEL PROMPTS.json [--n N] [--batch B] [--layers L,L,..] \
                 [--repeat R] [--f32-rows R]";
    let model_path = PathBuf::from(args.next().ok_or(usage)?);
    let prompts_path = PathBuf::from(args.next().ok_or(usage)?);
    let (mut n, mut batch, mut repeat, mut f32_rows) = (32usize, 16usize, 3usize, Some(128));
    let mut layers = vec![1usize, 6, 12, 18];
    while let Some(flag) = args.next() {
        let val = args.next().ok_or(usage)?;
        match flag.as_str() {
            "--n" => n = val.parse()?,
            "--batch" => batch = val.parse()?,
            "--repeat" => repeat = val.parse()?,
            "--f32-rows" => f32_rows = Some(val.parse()?),
            "--layers" => {
                layers = val
                    .split(',')
                    .map(str::parse)
                    .collect::<Result<Vec<usize>, _>>()?
            }
            _ => return Err(usage.into()),
        }
    }
    let mut opts = LoadOptions::cpu(None);
    opts.f32_gemm_rows = f32_rows;
    let model = Model::load(&model_path, &opts)?;
    let texts: Vec<String> = overseer_lab::load_prompts(&prompts_path)?
        .into_iter()
        .take(n)
        .collect();
    let r = Runner {
        model: &model,
        batch,
        gen_batch: batch,
        refusal_ids: overseer_lab::refusal_token_ids(
            model.tokenizer().tokens(),
            &overseer_lab::DEFAULT_REFUSAL_WORDS
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>(),
        ),
        system_prompt: None,
        share_prefix: true,
        lanes: 1,
    };
    let prompts = r.encode_all(&texts)?;
    let upto = layers.iter().copied().max().unwrap_or(0);
    let t = Instant::now();
    let inputs = r.layer_inputs(&prompts, upto)?;
    println!(
        "capture up to layer {upto}: {:.3} s ({} prompts)",
        t.elapsed().as_secs_f64(),
        prompts.len()
    );
    let hidden = model.config().hidden;
    let dir: Vec<f32> = (0..hidden).map(|i| ((i * 5 % 11) as f32) - 5.0).collect();
    for &layer in &layers {
        let mut add = ActivationAddition::new(
            HookPoint::ResidPre(layer),
            &dir,
            0.05,
            Positions::All,
            model.device(),
        )?;
        let (mut full, mut from) = (Vec::new(), Vec::new());
        let mut diff = 0f64;
        for _ in 0..repeat {
            let t = Instant::now();
            let a = r.refusal_scores(&prompts, Some(&mut add), &NoProgress)?;
            full.push(t.elapsed().as_secs_f64());
            let t = Instant::now();
            let b = r.refusal_scores_from(&inputs, layer, Some(&mut add), &NoProgress)?;
            from.push(t.elapsed().as_secs_f64());
            diff = a
                .iter()
                .zip(&b)
                .fold(diff, |d, (x, y)| d.max((x - y).abs()));
        }
        let (f, s) = (median(full), median(from));
        println!(
            "layer {layer:2}: all layers {f:.3} s, from the layer {s:.3} s ({:.2}x), max score difference {diff:e}",
            f / s
        );
    }
    Ok(())
}
