//! The forward pass and greedy generation against independent implementations on the same
//! GGUF, for both default models.
//!
//! Fixtures `fixtures/logits-*.json` (made by `scripts/reference/logits_fixture.py`): 5
//! fixed chat prompts rendered with the model's template; from llama.cpp the prompt ids,
//! the first 32 greedy tokens, the top-2 logits at every generated step and the top-50
//! logits at the final prompt position; from HF transformers (GGUF dequantized to f32)
//! the top-50 final-position logits.
//!
//! What must hold, and why these tolerances:
//! * **Prompt ids** equal llama.cpp's (the chat prompt goes through our template renderer
//!   and tokenizer: `Model::encode_chat`).
//! * **Greedy continuations** (`generate`, greedy, 32 tokens; after an early end token the
//!   test goes on with argmax steps, since the fixture ignores end tokens) equal llama.cpp's
//!   for all 32 tokens on at least 4 of the 5 prompts (the bar). Where ours
//!   diverges, llama.cpp's own top-2 logits at that step must be within its *own*
//!   numerical tolerance and our token must be its second choice. That tolerance is
//!   measured from llama.cpp alone (`scripts/reference/llama_cpp_self_check.py`, fixture
//!   field `llama_cpp_self`): the same library, model and threads with the prompt fed one
//!   token at a time (other kernels, same arithmetic summed in another order) changes the
//!   gap between the batched run's top-2 tokens by up to `gap_noise` along these paths
//!   (0.47 on SmolLM2), so a gap below that is decided by rounding, not by the model.
//!   On SmolLM2 that second llama.cpp run itself leaves the batched run's path on 3 of
//!   the 5 prompts, two of them one step before ours does (the paths run through several
//!   near-ties in a row there); HF's exact f32 path (also in the fixture) leaves it on 3.
//!   So for a model on which llama.cpp agrees with itself on fewer than 4 prompts, the bar
//!   is that count: ours must agree with llama.cpp at least as often as llama.cpp agrees
//!   with itself. Divergences at a top-2 gap under [`COIN_FLIP_GAP`] = 0.1 may also count
//!   towards the bar, so the test does not depend on the CPU's summation order.
//!   Why exact agreement is out of reach: with 8-bit activations a 1-ulp difference
//!   flips a rounding now and then, and each flip moves a value by 1/127 of its block's
//!   range; comparing our per-layer activations with llama.cpp's (its eval callback) on
//!   SmolLM2 shows every matmul equal to 1e-7 on llama.cpp's inputs, yet differences grow
//!   from 1e-7 at layer 0 to 1e-2 by layer 4, from summation order and `expf` alone.
//! * **Final-position logits**: the argmax equals both references'; the max abs difference
//!   over each reference's top-50 is at most the tolerance (the larger of [`ABS_TOL`] =
//!   0.5 and [`NOISE_FACTOR`] = 1.5 times the largest llama.cpp-to-HF distance on that
//!   model's prompts); and on average over the 5 prompts ours is no more than [`REL_TOL`]
//!   = 1.25x as far from HF as llama.cpp is.
//!
//! Why that scale: it is where two correct implementations of the same quantized
//! model disagree. HF dequantizes the weights and computes in f32 (exact arithmetic on the
//! quantized model); llama.cpp and ours round activations to 8 bits for the quantized dot
//! products, differently. Measured (fixture field `llama_cpp_vs_hf_max_abs_diff_top50`):
//! llama.cpp is up to 0.47 from HF on SmolLM2 and up to 0.24 on Qwen2.5. Two computations
//! that each carry 8-bit rounding noise of size D (ours and llama.cpp's) are typically
//! about 1.4 D apart, hence 1.5. A forward-pass bug
//! (RoPE layout, norm epsilon, a bias, a quant format) moves logits by whole units and flips
//! argmaxes; the relative bound catches a systematic loss of accuracy below that scale.
//! Observed values are printed (`cargo test -p overseer-lm --test reference -- --nocapture`).

#![allow(clippy::unwrap_used)]

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use overseer_lm::{
    ForwardOptions, GenerateOptions, LoadOptions, Logits, Message, Model, SamplingParams,
    StopReason, generate,
};
use serde::Deserialize;

/// Max abs difference of the final-position logits from either reference, over that
/// reference's top-50.
const ABS_TOL: f32 = 0.5;
/// The tolerance grows to this times the largest llama.cpp-to-HF distance of the model.
const NOISE_FACTOR: f32 = 1.5;
/// Ours may be at most this much further (on average over the prompts) from HF's f32
/// computation than llama.cpp is.
const REL_TOL: f32 = 1.25;
/// A top-2 gap below which llama.cpp's own choice is a coin flip for any implementation
/// with 8-bit activations (HF's exact arithmetic leaves llama.cpp's path at gaps of 0.04):
/// a divergence there may count towards [`MIN_EXACT`]. It keeps the test stable across CPUs
/// whose SIMD widths order the attention sums differently (CI runs on AVX-512 machines; the
/// fixture was made on AVX2).
const COIN_FLIP_GAP: f32 = 0.1;
/// Prompts (of 5) whose 32 greedy tokens must all equal llama.cpp's (the bar).
const MIN_EXACT: usize = 4;

#[derive(Deserialize)]
struct Fixture {
    model: String,
    prompts: Vec<Prompt>,
    /// llama.cpp against itself (see the module docs).
    llama_cpp_self: SelfCheck,
}

#[derive(Deserialize)]
struct SelfCheck {
    /// Prompts on which llama.cpp's token-by-token run follows its batched run for all
    /// 32 greedy tokens.
    exact: usize,
    /// Largest change of the batched run's top-2 gap between the two configurations.
    gap_noise: f32,
}

#[derive(Deserialize)]
struct Prompt {
    messages: Vec<Message>,
    prompt_ids: Vec<u32>,
    llama_cpp: LlamaCpp,
    hf: Hf,
    llama_cpp_vs_hf_max_abs_diff_top50: f32,
    llama_cpp_token_by_token: TokenByToken,
}

#[derive(Deserialize)]
struct TokenByToken {
    /// llama.cpp's own 32 greedy ids with the prompt fed one token at a time.
    generated: Vec<u32>,
}

#[derive(Deserialize)]
struct LlamaCpp {
    generated: Vec<u32>,
    /// Per generated step: [top1 id, top1 logit, top2 id, top2 logit].
    steps_top2: Vec<(u32, f32, u32, f32)>,
    final_top_ids: Vec<u32>,
    final_top_values: Vec<f32>,
}

#[derive(Deserialize)]
struct Hf {
    /// HF's own 32 greedy ids (exact f32 arithmetic on the dequantized weights).
    generated: Vec<u32>,
    final_top_ids: Vec<u32>,
    final_top_values: Vec<f32>,
}

fn models_dir() -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../models")).to_path_buf()
}

fn argmax(v: &[f32]) -> u32 {
    // First maximum on ties, as numpy's argmax in the fixture script.
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best as u32
}

fn max_abs_diff(ours: &[f32], ids: &[u32], values: &[f32]) -> f32 {
    ids.iter()
        .zip(values)
        .map(|(&i, &v)| (ours[i as usize] - v).abs())
        .fold(0.0, f32::max)
}

/// The last position's logits after feeding `toks` to session `s`.
fn last_logits(model: &Model, s: &mut overseer_lm::Session, toks: &[u32]) -> Vec<f32> {
    model
        .forward(
            s,
            &[toks.to_vec()],
            ForwardOptions {
                hooks: None,
                logits: Logits::Last,
            },
        )
        .expect("forward")
        .squeeze(0)
        .and_then(|t| t.to_vec1::<f32>())
        .expect("(1, vocab) logits")
}

/// Our 32 (`n`) greedy tokens after `ids`, through `generate` (which stops at an
/// end-of-generation token); after an early stop, argmax steps continue so all `n`
/// positions of the fixture (which ignores end tokens) are compared.
fn greedy_path(model: &Model, ids: &[u32], n_gen: usize, what: &str) -> Vec<u32> {
    let opts = GenerateOptions {
        max_tokens: n_gen,
        sampling: SamplingParams::greedy(),
        stop: Vec::new(),
        ..GenerateOptions::default()
    };
    let mut s = model.session(1);
    let g = generate(model, &mut s, ids, &opts, None, &mut |_| {
        ControlFlow::Continue(())
    })
    .expect("generate");
    let mut ours = g.tokens.clone();
    if ours.len() < n_gen {
        assert_eq!(g.stop_reason, StopReason::Eos, "{what}: stopped early");
        // Recompute the logits that chose the end token, then go on.
        let last = *ours
            .last()
            .unwrap_or(ids.last().expect("prompt is not empty"));
        s.truncate(s.len() - 1);
        let mut logits = last_logits(model, &mut s, &[last]);
        let end = argmax(&logits);
        assert!(
            model.tokenizer().is_eog(end),
            "{what}: stopped before {end}"
        );
        ours.push(end);
        while ours.len() < n_gen {
            logits = last_logits(model, &mut s, &[*ours.last().expect("not empty")]);
            ours.push(argmax(&logits));
        }
    } else {
        assert_eq!(g.stop_reason, StopReason::MaxTokens, "{what}");
    }
    ours
}

/// Report of one model, printed by the test (`cargo test -- --nocapture`).
fn check_model(fixture: &str, file: &str) {
    let fx: Fixture = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures")
                .join(fixture),
        )
        .expect("fixture is committed"),
    )
    .expect("fixture parses");
    assert_eq!(fx.model, file);
    let path = models_dir().join(file);
    assert!(
        path.exists(),
        "{}: missing: run scripts/fetch-models first",
        path.display()
    );
    let model = Model::load(&path, &LoadOptions::cpu(Some(2))).expect("default model loads");

    let mut exact = 0;
    let mut hf_exact = 0;
    let tie_gap = fx.llama_cpp_self.gap_noise;
    let mut coin_flips = 0;
    let tol = fx
        .prompts
        .iter()
        .map(|p| NOISE_FACTOR * p.llama_cpp_vs_hf_max_abs_diff_top50)
        .fold(ABS_TOL, f32::max);
    let (mut sum_ours_hf, mut sum_ll_hf, mut sum_ours_ll) = (0.0f32, 0.0f32, 0.0f32);
    let mut problems = Vec::new();
    for (p, prompt) in fx.prompts.iter().enumerate() {
        let ids = model
            .encode_chat(&prompt.messages, true)
            .expect("chat prompt encodes");
        assert_eq!(
            ids, prompt.prompt_ids,
            "{file} prompt {p}: prompt ids differ from llama.cpp's"
        );

        // Final prompt position.
        let first = last_logits(&model, &mut model.session(1), &ids);
        let ll = &prompt.llama_cpp;
        let d_ll = max_abs_diff(&first, &ll.final_top_ids, &ll.final_top_values);
        let d_hf = max_abs_diff(
            &first,
            &prompt.hf.final_top_ids,
            &prompt.hf.final_top_values,
        );
        sum_ours_hf += d_hf;
        sum_ours_ll += d_ll;
        sum_ll_hf += prompt.llama_cpp_vs_hf_max_abs_diff_top50;
        println!(
            "{file} prompt {p}: final logits max|ours-llama.cpp| {d_ll:.4}, max|ours-hf| {d_hf:.4}, \
             max|llama.cpp-hf| {:.4} (over the reference's top-50)",
            prompt.llama_cpp_vs_hf_max_abs_diff_top50
        );
        if argmax(&first) != ll.final_top_ids[0] || argmax(&first) != prompt.hf.final_top_ids[0] {
            problems.push(format!(
                "prompt {p}: final argmax {} (llama.cpp {}, hf {})",
                argmax(&first),
                ll.final_top_ids[0],
                prompt.hf.final_top_ids[0]
            ));
        }
        if d_ll > tol || d_hf > tol {
            problems.push(format!(
                "prompt {p}: final logits differ from llama.cpp by {d_ll:.4}, from HF by {d_hf:.4} (tolerance {tol:.4})"
            ));
        }

        let ours = greedy_path(
            &model,
            &ids,
            ll.generated.len(),
            &format!("{file} prompt {p}"),
        );
        let hf_div = prompt
            .hf
            .generated
            .iter()
            .zip(&ll.generated)
            .position(|(a, b)| a != b);
        if hf_div.is_none() {
            hf_exact += 1;
        }
        let self_div = prompt
            .llama_cpp_token_by_token
            .generated
            .iter()
            .zip(&ll.generated)
            .position(|(a, b)| a != b);
        match ours.iter().zip(&ll.generated).position(|(a, b)| a != b) {
            None => exact += 1,
            Some(k) => {
                let (t1, v1, t2, v2) = ll.steps_top2[k];
                let gap = v1 - v2;
                if gap < COIN_FLIP_GAP {
                    coin_flips += 1;
                }
                let show = |d: Option<usize>| {
                    d.map_or("follows it for all 32".to_string(), |d| {
                        format!("leaves it at step {d}")
                    })
                };
                println!(
                    "{file} prompt {p}: diverges at step {k}: ours {} llama.cpp {t1} \
                     (its top-2: {t1} {v1:.4}, {t2} {v2:.4}, gap {gap:.4}, its own noise {tie_gap:.4}); \
                     llama.cpp token by token {}; HF f32 {}",
                    ours[k],
                    show(self_div),
                    show(hf_div)
                );
                if gap > tie_gap || ours[k] != t2 {
                    problems.push(format!(
                        "prompt {p}: greedy diverges at step {k} (ours {}, llama.cpp {t1}) where \
                         llama.cpp's top-2 gap is {gap:.4} (its own noise {tie_gap:.4}) and its second choice is {t2}",
                        ours[k]
                    ));
                }
            }
        }
    }
    let n = fx.prompts.len() as f32;
    println!(
        "{file}: mean max|ours-hf| {:.4}, mean max|llama.cpp-hf| {:.4}, mean max|ours-llama.cpp| {:.4}",
        sum_ours_hf / n,
        sum_ll_hf / n,
        sum_ours_ll / n
    );
    if sum_ours_hf > REL_TOL * sum_ll_hf {
        problems.push(format!(
            "final logits are further from HF's f32 computation than llama.cpp's: mean {:.4} vs {:.4} (allowed ratio {REL_TOL})",
            sum_ours_hf / n,
            sum_ll_hf / n
        ));
    }
    println!(
        "{file}: {exact} of {} prompts match llama.cpp for all 32 greedy tokens",
        fx.prompts.len()
    );
    println!(
        "{file}: llama.cpp token by token matches its batched greedy path on {} of {} prompts; \
         HF's exact f32 path matches it on {hf_exact}",
        fx.llama_cpp_self.exact,
        fx.prompts.len()
    );
    let need = MIN_EXACT.min(fx.llama_cpp_self.exact);
    if exact < need && exact + coin_flips < MIN_EXACT {
        problems.push(format!(
            "only {exact} of {} prompts match llama.cpp for 32 tokens, {coin_flips} more diverge at a \
             top-2 gap under {COIN_FLIP_GAP} (need {need} exact: the issue's {MIN_EXACT}, or as many as \
             llama.cpp matches itself when that is fewer; or {MIN_EXACT} counting those coin flips)",
            fx.prompts.len()
        ));
    }
    assert!(problems.is_empty(), "{file}:\n  {}", problems.join("\n  "));
}

/// The second prompt set (`fixtures/stable-*.json`, made by
/// `scripts/reference/stable_prompts.py`): 5 prompts picked from a fixed candidate list by
/// the references alone: the first candidates on which llama.cpp batched, llama.cpp token
/// by token and HF's f32 computation all give the same 32 greedy tokens, on both models.
/// On these the greedy path is decided by the model rather than by rounding, so the
/// issue's bar applies as written: ours equals llama.cpp for all 32 tokens on at least 4 of
/// the 5, and where ours diverges, llama.cpp's top-2 gap there must be within its own
/// noise (the logits fixture's `gap_noise`), and so must our own margin for our token over
/// llama.cpp's: both implementations see a near-tie there. (Our token need not be
/// llama.cpp's second choice: a near-tie can involve three tokens, and the fixture keeps
/// only llama.cpp's top two.)
#[derive(Deserialize)]
struct StableFixture {
    model: String,
    selected: Vec<usize>,
    candidates: Vec<Candidate>,
}

#[derive(Deserialize)]
struct Candidate {
    messages: Vec<Message>,
    prompt_ids: Vec<u32>,
    llama_cpp: StablePath,
    stable: bool,
}

#[derive(Deserialize)]
struct StablePath {
    generated: Vec<u32>,
    steps_top2: Vec<(u32, f32, u32, f32)>,
}

fn read_fixture<T: serde::de::DeserializeOwned>(name: &str) -> T {
    serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures")
                .join(name),
        )
        .expect("fixture is committed"),
    )
    .expect("fixture parses")
}

fn check_stable_set(stable: &str, logits: &str, file: &str) {
    let fx: StableFixture = read_fixture(stable);
    let noise = read_fixture::<Fixture>(logits).llama_cpp_self.gap_noise;
    assert_eq!(fx.model, file);
    assert_eq!(fx.selected.len(), 5, "{stable}: the rule selects 5 prompts");
    let model = Model::load(&models_dir().join(file), &LoadOptions::cpu(Some(2)))
        .expect("default model loads (run scripts/fetch-models first)");
    let mut exact = 0;
    let mut problems = Vec::new();
    for &c in &fx.selected {
        let cand = &fx.candidates[c];
        assert!(cand.stable, "{stable}: selected candidate {c} is stable");
        let ids = model
            .encode_chat(&cand.messages, true)
            .expect("chat prompt encodes");
        assert_eq!(ids, cand.prompt_ids, "{file} candidate {c}: prompt ids");
        let ll = &cand.llama_cpp;
        let ours = greedy_path(
            &model,
            &ids,
            ll.generated.len(),
            &format!("{file} candidate {c}"),
        );
        match ours.iter().zip(&ll.generated).position(|(a, b)| a != b) {
            None => exact += 1,
            Some(k) => {
                let (t1, v1, t2, v2) = ll.steps_top2[k];
                let gap = v1 - v2;
                // The logits our greedy run chose from at that step, recomputed the way
                // `generate` computes them: the prompt in one pass, then one token at a time.
                let mut s = model.session(1);
                let mut v = Vec::new();
                for toks in std::iter::once(&ids[..]).chain(ours[..k].chunks(1)) {
                    v = last_logits(&model, &mut s, toks);
                }
                assert_eq!(
                    argmax(&v),
                    ours[k],
                    "recomputed step {k} of our greedy path"
                );
                let margin = v[ours[k] as usize] - v[t1 as usize];
                println!(
                    "{file} candidate {c}: diverges at step {k}: ours {} llama.cpp {t1} (its \
                     second {t2}; its top-2 gap {gap:.4}, our margin for our token over its \
                     {margin:.4}; llama.cpp's own noise {noise:.4})",
                    ours[k]
                );
                if gap > noise || margin > noise {
                    problems.push(format!(
                        "candidate {c}: greedy diverges at step {k} (ours {}, llama.cpp {t1}): \
                         llama.cpp's top-2 gap {gap:.4}, our margin {margin:.4}, beyond its own \
                         noise {noise:.4}",
                        ours[k]
                    ));
                }
            }
        }
    }
    println!(
        "{file}: {exact} of {} reference-stable prompts match llama.cpp for all 32 greedy tokens",
        fx.selected.len()
    );
    if exact < MIN_EXACT {
        problems.push(format!(
            "only {exact} of {} reference-stable prompts match llama.cpp for 32 tokens (need {MIN_EXACT})",
            fx.selected.len()
        ));
    }
    assert!(problems.is_empty(), "{file}:\n  {}", problems.join("\n  "));
}

#[test]
fn smollm2_greedy_matches_llama_cpp_on_reference_stable_prompts() {
    check_stable_set(
        "stable-smollm2.json",
        "logits-smollm2.json",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
    );
}

#[test]
fn qwen25_greedy_matches_llama_cpp_on_reference_stable_prompts() {
    check_stable_set(
        "stable-qwen2.5.json",
        "logits-qwen2.5.json",
        "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    );
}

#[test]
fn smollm2_matches_llama_cpp_and_transformers() {
    check_model("logits-smollm2.json", "SmolLM2-135M-Instruct.Q4_1.gguf");
}

#[test]
fn qwen25_matches_llama_cpp_and_transformers() {
    check_model(
        "logits-qwen2.5.json",
        "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    );
}
