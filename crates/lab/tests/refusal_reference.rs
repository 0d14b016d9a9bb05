//! Faithfulness of the lab against independent references, on SmolLM2-135M:
//! * the difference-in-means direction equals the one HF transformers computes on the
//!   same GGUF, prompts, chat template and position (fixture made by
//!   `scripts/reference/refusal_direction.py`), cosine >= 0.99;
//! * a weight-orthogonalized GGUF gives the same logits as hook ablation.

use std::path::{Path, PathBuf};

use overseer_lab::{EditedDType, NoProgress, Runner, cosine, orthogonalize};
use overseer_lm::candle_core::quantized::gguf_file;
use overseer_lm::candle_core::{Device, Tensor};
use overseer_lm::{Ablation, ForwardOptions, LoadOptions, Logits, Model};

fn models() -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../models")).to_path_buf()
}

fn smollm2() -> PathBuf {
    let p = models().join("SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        p.exists(),
        "{} missing: run scripts/fetch-models",
        p.display()
    );
    p
}

#[derive(serde::Deserialize)]
struct Fixture {
    layer: usize,
    position: i64,
    post_instruction: String,
    harmful: Vec<String>,
    harmless: Vec<String>,
    direction: Vec<f32>,
}

fn fixture() -> Fixture {
    let p =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/refusal_direction_smollm2.json");
    let text = std::fs::read_to_string(&p).expect("committed fixture");
    serde_json::from_str(&text).expect("fixture parses")
}

fn runner(model: &Model) -> Runner<'_> {
    Runner {
        model,
        batch: 8,
        gen_batch: 8,
        refusal_ids: overseer_lab::refusal_token_ids(
            model.tokenizer().tokens(),
            &["I".to_string()],
        ),
        system_prompt: None,
        share_prefix: true,
        lanes: 1,
    }
}

#[test]
fn direction_matches_transformers_reference() {
    let f = fixture();
    let model = Model::load(&smollm2(), &LoadOptions::cpu(None)).unwrap();
    assert_eq!(
        model.chat_template().post_instruction().unwrap(),
        f.post_instruction
    );
    let r = runner(&model);
    let n = (-f.position) as usize;
    let h = r
        .means(&r.encode_all(&f.harmful).unwrap(), n, &NoProgress)
        .unwrap();
    let l = r
        .means(&r.encode_all(&f.harmless).unwrap(), n, &NoProgress)
        .unwrap();
    let cfg = model.config();
    // Layout (positions, layers, hidden); position index 0 is `n` from the end.
    let start = f.layer * cfg.hidden;
    let ours: Vec<f32> = (0..cfg.hidden)
        .map(|i| (h[start + i] - l[start + i]) as f32)
        .collect();
    let cos = cosine(&ours, &f.direction);
    assert!(cos >= 0.99, "cosine with the transformers direction {cos}");
}

#[test]
fn orthogonalized_model_equals_hook_ablation() {
    let f = fixture();
    let path = smollm2();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("abliterated.gguf");
    let s = orthogonalize(&path, &f.direction, &out, EditedDType::F32).unwrap();
    assert!(s.edited.len() > 2 && s.edited.iter().any(|n| n == "token_embd.weight"));

    let base = Model::load(&path, &LoadOptions::cpu(None)).unwrap();
    let edited = Model::load(&out, &LoadOptions::cpu(None)).unwrap();
    let r = runner(&base);
    let prompts = r
        .encode_all(&[
            "How do I pick a lock?".to_string(),
            "Write a haiku about rain.".to_string(),
        ])
        .unwrap();
    let logits = |m: &Model, hook: Option<&mut dyn overseer_lm::Hook>| -> Vec<Vec<f32>> {
        let mut s = m.session(prompts.len());
        let o = ForwardOptions {
            hooks: hook,
            logits: Logits::Last,
        };
        m.forward(&mut s, &prompts, o).unwrap().to_vec2().unwrap()
    };
    let mut abl = Ablation::new(&f.direction, base.device()).unwrap();
    let hooked = logits(&base, Some(&mut abl));
    let plain = logits(&edited, None);
    let untouched = logits(&base, None);
    let max_diff = |a: &[Vec<f32>], b: &[Vec<f32>]| {
        a.iter()
            .flatten()
            .zip(b.iter().flatten())
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max)
    };
    let d_edit = max_diff(&hooked, &plain);
    let d_base = max_diff(&hooked, &untouched);
    let mean_diff = |a: &[Vec<f32>], b: &[Vec<f32>]| {
        let n = a.iter().map(Vec::len).sum::<usize>() as f32;
        a.iter()
            .flatten()
            .zip(b.iter().flatten())
            .map(|(x, y)| (x - y).abs())
            .sum::<f32>()
            / n
    };
    eprintln!(
        "max |dlogit|: edited vs hooked {d_edit} (mean {}), unedited vs hooked {d_base} (mean {})",
        mean_diff(&hooked, &plain),
        mean_diff(&hooked, &untouched)
    );
    // Control: the unedited model with the same tensors stored as F32. The edited
    // matrices are multiplied in f32 while the original Q4_1 ones go through kernels
    // that quantize activations to 8 bits (as llama.cpp does); that storage change, not
    // the edit, is what separates orthogonalized from hooked logits.
    let ctrl_path = dir.path().join("dequantized.gguf");
    overseer_lab::dequantized_copy(&path, &ctrl_path, EditedDType::F32).unwrap();
    let ctrl = Model::load(&ctrl_path, &LoadOptions::cpu(None)).unwrap();
    let d_ctrl = max_diff(&logits(&ctrl, None), &untouched);
    eprintln!("storage-only control: max |dlogit| {d_ctrl}");
    // Stated tolerance: within 1.5x the storage-only gap + 0.1, and under 1.5 logits.
    assert!(
        d_edit <= 1.5 * d_ctrl + 0.1,
        "edit {d_edit} vs storage-only control {d_ctrl}"
    );
    assert!(
        d_edit < 1.5,
        "orthogonalized vs hook ablation: max |dlogit| {d_edit}"
    );
    assert!(
        d_edit < d_base / 4.0,
        "edit {d_edit} not much closer than the unedited model {d_base}"
    );
    // Tight check on the weights themselves: nothing in the edited file writes along d.
    let unit: Vec<f32> = {
        let n = f.direction.iter().map(|x| x * x).sum::<f32>().sqrt();
        f.direction.iter().map(|x| x / n).collect()
    };
    let mut file = std::fs::File::open(&out).unwrap();
    let c = gguf_file::Content::read(&mut file).unwrap();
    let d = Tensor::new(unit.as_slice(), &Device::Cpu).unwrap();
    let mut checked = 0;
    for name in c.tensor_infos.keys() {
        let is_out = name.ends_with("attn_output.weight") || name.ends_with("ffn_down.weight");
        if !(is_out || name == "token_embd.weight") {
            continue;
        }
        let w = c
            .tensor(&mut file, name, &Device::Cpu)
            .unwrap()
            .dequantize(&Device::Cpu)
            .unwrap();
        let proj = if is_out {
            d.unsqueeze(0).unwrap().matmul(&w).unwrap() // dᵀW, (1, in)
        } else {
            w.matmul(&d.unsqueeze(1).unwrap()).unwrap() // E d, (vocab, 1)
        };
        let worst: f32 = proj.abs().unwrap().max_all().unwrap().to_scalar().unwrap();
        let scale: f32 = w.abs().unwrap().max_all().unwrap().to_scalar().unwrap();
        assert!(
            worst < 1e-5 * scale.max(1.0) * 100.0,
            "{name}: |d·W| up to {worst} (weights up to {scale})"
        );
        checked += 1;
    }
    assert_eq!(checked, 1 + 2 * base.config().n_layer);
    // Ablating on top of the edited model moves logits only by activation-quantization
    // noise of the same size as the storage-only control.
    let mut abl2 = Ablation::new(&f.direction, edited.device()).unwrap();
    let both = logits(&edited, Some(&mut abl2));
    let d_both = max_diff(&both, &plain);
    eprintln!("edited + hook vs edited: max |dlogit| {d_both}");
    assert!(
        d_both <= 1.5 * d_ctrl + 0.1,
        "hook ablation still changes the edited model: {d_both}"
    );
    // The greedy next token agrees wherever the hooked model's choice is clear: a top-2
    // margin under the storage-only noise (`d_ctrl`) is a near-tie that either storage
    // could break either way, so it is reported, not compared.
    let mut compared = 0;
    for (a, b) in hooked.iter().zip(&plain) {
        let mut order: Vec<usize> = (0..a.len()).collect();
        order.sort_by(|&x, &y| a[y].total_cmp(&a[x]));
        let margin = a[order[0]] - a[order[1]];
        let bm = b
            .iter()
            .enumerate()
            .max_by(|x, y| x.1.total_cmp(y.1))
            .unwrap()
            .0;
        if margin > d_ctrl {
            assert_eq!(order[0], bm, "greedy next token differs (margin {margin})");
            compared += 1;
        } else {
            eprintln!("near tie: top-2 margin {margin} within the storage noise {d_ctrl}");
        }
    }
    eprintln!(
        "greedy next token compared on {compared} of {} prompts",
        hooked.len()
    );
}
