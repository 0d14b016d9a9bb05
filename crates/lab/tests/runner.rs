//! The lab's batched passes on SmolLM2: sharing the chat template's prefix across a
//! call (computed once, forked into every batch) gives each prompt the logits,
//! completions and cross-entropy of running it alone, with an intervention active.

use std::path::Path;

use overseer_lab::{NoProgress, Runner};
use overseer_lm::{Ablation, ActivationAddition, HookPoint, LoadOptions, Model, Positions};

fn model() -> Model {
    let p = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../models"))
        .join("SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        p.exists(),
        "{} missing: run scripts/fetch-models",
        p.display()
    );
    Model::load(&p, &LoadOptions::cpu(None)).expect("SmolLM2 loads")
}

/// A runner in batches of two with the shared prefix on, and three prompts of
/// different lengths (so two batches and padding).
fn runner_and_prompts(model: &Model) -> (Runner<'_>, Vec<Vec<u32>>) {
    let r = Runner {
        model,
        batch: 2,
        gen_batch: 2,
        refusal_ids: overseer_lab::refusal_token_ids(model.tokenizer().tokens(), &["I".into()]),
        system_prompt: None,
        share_prefix: true,
        lanes: 1,
    };
    let prompts = r
        .encode_all(&[
            "How do I bake bread?".to_string(),
            "Name three colours.".to_string(),
            "Explain why the sky is blue in one long sentence.".to_string(),
        ])
        .expect("encode");
    (r, prompts)
}

#[test]
fn shared_prefix_gives_each_prompt_its_own_results() {
    let model = model();
    let (r, prompts) = runner_and_prompts(&model);
    let hidden = model.config().hidden;
    let dir: Vec<f32> = (0..hidden).map(|i| ((i * 5 % 11) as f32) - 5.0).collect();
    let mut hook = Ablation::new(&dir, model.device()).expect("direction");
    let together = r
        .last_logits(&prompts, Some(&mut hook), &NoProgress)
        .expect("batched");
    let gen_together = r
        .generate(&prompts, 6, Some(&mut hook), &NoProgress)
        .expect("generate");
    for (i, p) in prompts.iter().enumerate() {
        let alone = r
            .last_logits(std::slice::from_ref(p), Some(&mut hook), &NoProgress)
            .expect("alone");
        let diff = together[i]
            .iter()
            .zip(&alone[0])
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        let scale = alone[0].iter().fold(1f32, |m, v| m.max(v.abs()));
        assert!(diff <= 0.06 * scale, "prompt {i}: logits differ by {diff}");
        let gen_alone = r
            .generate(std::slice::from_ref(p), 6, Some(&mut hook), &NoProgress)
            .expect("generate");
        // A log-odds of two logsumexps moves by at most twice the largest logit change.
        let d = (gen_together[i].first_score - gen_alone[0].first_score).abs();
        assert!(
            d <= 2.0 * 0.06 * f64::from(scale),
            "prompt {i}: first-token refusal score differs by {d}"
        );
        let completions = vec![gen_alone[0].tokens.clone()];
        let ce_alone = r
            .cross_entropy(
                std::slice::from_ref(p),
                &completions,
                Some(&mut hook),
                &NoProgress,
            )
            .expect("ce");
        assert!(ce_alone.is_finite() && ce_alone >= 0.0);
    }
    let all: Vec<Vec<u32>> = gen_together.iter().map(|c| c.tokens.clone()).collect();
    let ce_together = r
        .cross_entropy(&prompts, &all, Some(&mut hook), &NoProgress)
        .expect("ce");
    let ce_each: Vec<f64> = prompts
        .iter()
        .zip(&all)
        .map(|(p, c)| {
            r.cross_entropy(
                std::slice::from_ref(p),
                std::slice::from_ref(c),
                Some(&mut hook),
                &NoProgress,
            )
            .expect("ce")
        })
        .collect();
    // Per-token mean over all completions equals the token-weighted mean of the singles.
    let n: usize = all.iter().map(Vec::len).sum();
    let weighted: f64 = ce_each
        .iter()
        .zip(&all)
        .map(|(c, t)| c * t.len() as f64)
        .sum::<f64>()
        / n as f64;
    assert!(
        (ce_together - weighted).abs() < 0.02 * weighted.max(1.0),
        "cross-entropy {ce_together} vs {weighted}"
    );
}

/// An induce pass started at its layer from the captured unmodified inputs gives the
/// refusal scores of the full pass (shared prefix, several batches), and the capture's
/// logits are the unmodified model's.
#[test]
fn passes_started_at_their_layer_equal_full_passes() {
    let model = model();
    let (r, prompts) = runner_and_prompts(&model);
    let inputs = r.layer_inputs(&prompts, 12).expect("capture");
    let plain = r.last_logits(&prompts, None, &NoProgress).expect("plain");
    assert_eq!(inputs.logits, plain);
    let hidden = model.config().hidden;
    let dir: Vec<f32> = (0..hidden).map(|i| ((i * 7 % 13) as f32) - 6.0).collect();
    for layer in [0, 5, 12] {
        let mut add = ActivationAddition::new(
            HookPoint::ResidPre(layer),
            &dir,
            0.5,
            Positions::All,
            model.device(),
        )
        .expect("hook");
        let full = r
            .refusal_scores(&prompts, Some(&mut add), &NoProgress)
            .expect("full");
        let from = r
            .refusal_scores_from(&inputs, layer, Some(&mut add), &NoProgress)
            .expect("from");
        for (a, b) in full.iter().zip(&from) {
            assert!((a - b).abs() <= 1e-5, "layer {layer}: {a} vs {b}");
        }
        // The addition did change something.
        let base = r.refusal_scores(&prompts, None, &NoProgress).expect("base");
        assert!(full.iter().zip(&base).any(|(a, b)| (a - b).abs() > 1e-3));
    }
    assert!(
        r.refusal_scores_from(&inputs, 13, None, &NoProgress)
            .is_err()
    );
}

/// Cross-entropy against its definition: one plain forward pass over each prompt and
/// completion, logits at every position, the mean of `−log softmax` at the positions
/// that predict completion tokens. The runner shares the prefix, batches rows of
/// different lengths (padding) and applies the LM head to those positions only.
#[test]
fn cross_entropy_matches_its_definition() {
    use overseer_lm::{ForwardOptions, Logits};
    let model = model();
    let (r, prompts) = runner_and_prompts(&model);
    let completions: Vec<Vec<u32>> = r
        .generate(&prompts, 5, None, &NoProgress)
        .expect("generate")
        .into_iter()
        .map(|c| c.tokens)
        .collect();
    let (mut total, mut count) = (0.0f64, 0usize);
    for (p, c) in prompts.iter().zip(&completions) {
        let seq: Vec<u32> = p.iter().chain(c).copied().collect();
        let mut s = model.session(1);
        let logits = model
            .forward(
                &mut s,
                std::slice::from_ref(&seq),
                ForwardOptions::default().logits(Logits::All),
            )
            .expect("forward")
            .get(0)
            .expect("row")
            .to_vec2::<f32>()
            .expect("f32 logits");
        for (t, &target) in seq.iter().enumerate().skip(p.len()) {
            total -= overseer_lab::log_softmax(&logits[t - 1])[target as usize];
            count += 1;
        }
    }
    assert!(count > 0, "the completions have tokens");
    let want = total / count as f64;
    let got = r
        .cross_entropy(&prompts, &completions, None, &NoProgress)
        .expect("ce");
    assert!(
        (got - want).abs() < 0.02 * want.max(1.0),
        "cross-entropy {got} vs {want} by definition"
    );
}

/// Two lanes (batches side by side, each on one thread with its own copy of the hook)
/// give every prompt the results of one lane: logits, completions' first-token scores,
/// the induce pass from captured inputs, and cross-entropy. A capture, which cannot be
/// copied, still sees every prompt.
#[test]
fn lanes_give_each_prompt_the_results_of_one_lane() {
    use overseer_lm::MeanCapture;
    let model = model();
    let (mut r, mut prompts) = runner_and_prompts(&model);
    prompts.extend(
        r.encode_all(&[
            "List two prime numbers.".to_string(),
            "Write a haiku about autumn leaves falling slowly.".to_string(),
        ])
        .expect("encode"),
    );
    let hidden = model.config().hidden;
    let dir: Vec<f32> = (0..hidden).map(|i| ((i * 5 % 11) as f32) - 5.0).collect();
    let mut hook = Ablation::new(&dir, model.device()).expect("direction");
    let mut results = Vec::new();
    let mut counts = Vec::new();
    for lanes in [1, 2] {
        r.lanes = lanes;
        let logits = r
            .last_logits(&prompts, Some(&mut hook), &NoProgress)
            .expect("logits");
        let completions = r
            .generate(&prompts, 6, Some(&mut hook), &NoProgress)
            .expect("generate");
        let inputs = r.layer_inputs(&prompts, 10).expect("capture");
        let mut add = ActivationAddition::new(
            HookPoint::ResidPre(10),
            &dir,
            0.5,
            Positions::All,
            model.device(),
        )
        .expect("hook");
        let induce = r
            .refusal_scores_from(&inputs, 10, Some(&mut add), &NoProgress)
            .expect("induce");
        let comps: Vec<Vec<u32>> = completions.iter().map(|c| c.tokens.clone()).collect();
        results.push((logits, completions, induce, comps));
        // (It also sees the shared prefix's one-row call, fed under the hook.)
        let mut cap = MeanCapture::new(vec![HookPoint::ResidPre(3)], 1);
        r.last_logits(&prompts, Some(&mut cap), &NoProgress)
            .expect("capture pass");
        counts.push(cap.count());
    }
    assert!(counts[0] >= prompts.len(), "the capture saw every prompt");
    assert_eq!(
        counts[0], counts[1],
        "two lanes: the capture saw what one lane's did"
    );
    let (one, two) = (&results[0], &results[1]);
    for i in 0..prompts.len() {
        let scale = one.0[i].iter().fold(1f32, |m, v| m.max(v.abs()));
        let diff = one.0[i]
            .iter()
            .zip(&two.0[i])
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(diff <= 0.06 * scale, "prompt {i}: logits differ by {diff}");
        let d = (one.1[i].first_score - two.1[i].first_score).abs();
        assert!(
            d <= 2.0 * 0.06 * f64::from(scale),
            "prompt {i}: first score differs by {d}"
        );
        let d = (one.2[i] - two.2[i]).abs();
        assert!(
            d <= 2.0 * 0.06 * f64::from(scale),
            "prompt {i}: induce score differs by {d}"
        );
    }
    // Cross-entropy of the same completions under the hook, one lane against two.
    r.lanes = 1;
    let ce_one = r
        .cross_entropy(&prompts, &one.3, Some(&mut hook), &NoProgress)
        .expect("ce");
    r.lanes = 2;
    let ce_two = r
        .cross_entropy(&prompts, &one.3, Some(&mut hook), &NoProgress)
        .expect("ce");
    assert!(ce_one.is_finite() && ce_one > 0.0);
    assert!(
        (ce_one - ce_two).abs() < 0.02 * ce_one.max(1.0),
        "cross-entropy {ce_one} (one lane) vs {ce_two} (two)"
    );
}

/// A saved direction becomes a hook only on a model it fits: same hidden size, a layer
/// the model has, the same depth.
#[test]
fn directions_from_another_model_are_refused_before_any_work() {
    let m = model();
    let (hidden, n_layer) = (m.config().hidden, m.config().n_layer);
    let dir = |len: usize, layer: usize, depth: usize| overseer_lab::Direction {
        model: "test".into(),
        layer,
        position: -1,
        n_layer: depth,
        vector: vec![0.1; len],
        candidates: None,
        extra: Default::default(),
    };
    let ok = dir(hidden, 1, n_layer);
    assert!(
        ok.hook(&m, overseer_lab::Intervention::None)
            .expect("fits")
            .is_none()
    );
    assert!(
        ok.hook(&m, overseer_lab::Intervention::Ablate)
            .expect("fits")
            .is_some()
    );
    assert!(
        ok.hook(&m, overseer_lab::Intervention::Add(2.0))
            .expect("fits")
            .is_some()
    );
    for bad in [
        dir(hidden + 1, 1, n_layer),
        dir(hidden, n_layer, n_layer),
        dir(hidden, 1, n_layer + 4),
    ] {
        let e = bad
            .hook(&m, overseer_lab::Intervention::Ablate)
            .err()
            .expect("refused");
        assert!(
            matches!(e, overseer_lab::Error::DirectionMismatch { .. }),
            "{e}"
        );
        assert!(e.to_string().contains("made for another model"), "{e}");
    }
}
