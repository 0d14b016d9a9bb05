//! The forward pass, sessions, hooks and generation on the real default models.
//! Correctness against llama.cpp / transformers is checked in `reference.rs`; these
//! tests check the runtime's own invariants (batching, caching, hooks) that a reference
//! cannot see.

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::OnceLock;

use overseer_lm::candle_core::{DType, Tensor};
use overseer_lm::{
    Ablation, ActivationAddition, Error, ForwardOptions, GenerateOptions, HookList, HookPoint,
    LoadOptions, Logits, MeanCapture, Message, Model, Positions, RawCapture, SamplingParams,
    StopReason, generate, generate_batch,
};

fn model_path(file: &str) -> PathBuf {
    let p = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../models")).join(file);
    assert!(
        p.exists(),
        "{} is missing: run scripts/fetch-models",
        p.display()
    );
    p
}

fn smollm() -> &'static Model {
    static M: OnceLock<Model> = OnceLock::new();
    M.get_or_init(|| {
        Model::load(
            &model_path("SmolLM2-135M-Instruct.Q4_1.gguf"),
            &LoadOptions::default(),
        )
        .expect("SmolLM2 loads")
    })
}

fn qwen() -> &'static Model {
    static M: OnceLock<Model> = OnceLock::new();
    M.get_or_init(|| {
        Model::load(
            &model_path("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"),
            &LoadOptions::default(),
        )
        .expect("Qwen2.5 loads")
    })
}

fn chat(model: &Model, user: &str) -> Vec<u32> {
    model
        .encode_chat(&[Message::user(user)], true)
        .expect("encode")
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .and_then(|d| d.abs())
        .and_then(|d| d.max_all())
        .and_then(|d| d.to_scalar::<f32>())
        .expect("same shapes")
}

fn scale(a: &Tensor) -> f32 {
    a.abs()
        .and_then(|d| d.max_all())
        .and_then(|d| d.to_scalar::<f32>())
        .expect("scalar")
}

/// Logits of the same row computed two ways agree up to the noise of 8-bit activation
/// quantization (the matmul kernels sum in a different order for different batch shapes,
/// and a rounding flip next to the huge attention-sink activations moves logits by up to
/// ~1 on a scale of ~25), and the top token agrees wherever it is not a near-tie. A wrong
/// mask, RoPE position or cache slot moves them by far more.
fn assert_close(got: &Tensor, want: &Tensor, what: &str) {
    let d = max_abs_diff(got, want);
    let sc = scale(want).max(1.0);
    assert!(d <= 0.06 * sc, "{what}: logits differ by {d} (scale {sc})");
    let g = got
        .flatten_all()
        .and_then(|t| t.to_vec1::<f32>())
        .expect("vec");
    let mut w = want
        .flatten_all()
        .and_then(|t| t.to_vec1::<f32>())
        .expect("vec");
    let top = |v: &[f32]| {
        v.iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|x| x.0)
            .expect("non-empty")
    };
    let (tg, tw) = (top(&g), top(&w));
    let best = w[tw];
    w[tw] = f32::NEG_INFINITY;
    let margin = best - w[top(&w)];
    if margin > 2.0 * d {
        assert_eq!(
            tg, tw,
            "{what}: top token differs (margin {margin}, diff {d})"
        );
    }
}

/// The AMX bf16 route (`LoadOptions::amx_rows`), through the whole model: on a batch of
/// two chat prompts its logits at every position agree with the f32 route's up to bf16
/// rounding, the top token included. Where the CPU has no AMX the option must change
/// nothing: the logits are then bit-identical to the f32 route's.
#[test]
fn amx_route_matches_f32_route() {
    let models = [
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    ];
    for file in models {
        let load = |amx: Option<usize>| {
            let opts = LoadOptions {
                f32_gemm_rows: Some(4),
                amx_rows: amx,
                ..LoadOptions::default()
            };
            Model::load(&model_path(file), &opts).expect("model loads")
        };
        let (f32_model, amx_model) = (load(None), load(Some(4)));
        let prompts = vec![
            chat(&f32_model, "Name three uses of a lighthouse."),
            chat(
                &f32_model,
                "What is interpretability research about, in one line?",
            ),
        ];
        let run = |m: &Model| {
            let mut s = m.session(prompts.len());
            m.forward(&mut s, &prompts, ForwardOptions::last().logits(Logits::All))
                .expect("forward")
        };
        let (want, got) = (run(&f32_model), run(&amx_model));
        // Rows are left-padded: keep each prompt's own positions.
        let seq = got.dim(1).expect("seq");
        let own = |t: &Tensor, row: usize| {
            let n = prompts[row].len();
            t.get(row)
                .and_then(|r| r.narrow(0, seq - n, n))
                .expect("row")
        };
        let d = (0..prompts.len())
            .map(|r| max_abs_diff(&own(&got, r), &own(&want, r)))
            .fold(0.0f32, f32::max);
        if overseer_lm::amx_available() {
            assert!(d > 0.0, "{file}: the AMX route was not taken");
            for row in 0..prompts.len() {
                let (g, w) = (own(&got, row), own(&want, row));
                for pos in 0..prompts[row].len() {
                    let what = format!("{file} row {row} position {pos}");
                    assert_close(&g.get(pos).expect("pos"), &w.get(pos).expect("pos"), &what);
                }
            }
        } else {
            eprintln!("no AMX here: checked that amx_rows changes nothing");
            assert_eq!(d, 0.0, "{file}: amx_rows changed the logits without AMX");
        }
    }
}

/// `LoadOptions::kernel_attention` (the f16-cache kernel, as the lab runs): on a padded
/// batch of two prompts, then four decode steps, its logits agree with candle's
/// attention at every position up to summation order, and differ from them (the option
/// takes effect). Measured: at most 1.2e-3 of the logit scale.
#[test]
fn kernel_attention_option_matches_candle_attention() {
    // f32 matmuls (as the lab's batches run without AMX): no 8-bit activation rounding
    // to amplify the attention's different summation order.
    let load = |kernel_attention: bool| {
        let opts = LoadOptions {
            kernel_attention,
            f32_gemm_rows: Some(1),
            ..LoadOptions::default()
        };
        Model::load(&model_path("SmolLM2-135M-Instruct.Q4_1.gguf"), &opts).expect("loads")
    };
    let (candle_model, kernel_model) = (load(false), load(true));
    let prompts = vec![
        chat(&candle_model, "Name three uses of a lighthouse."),
        chat(&candle_model, "Why is the sea salty? One line."),
    ];
    let run = |m: &Model| {
        let mut s = m.session(prompts.len());
        let mut out = vec![
            m.forward(&mut s, &prompts, ForwardOptions::last().logits(Logits::All))
                .expect("prefill"),
        ];
        for step in 0..4u32 {
            let feed = vec![vec![100 + step], vec![200 + step]];
            out.push(
                m.forward(&mut s, &feed, ForwardOptions::last().logits(Logits::All))
                    .expect("decode"),
            );
        }
        out
    };
    let (want, got) = (run(&candle_model), run(&kernel_model));
    let seq = want[0].dim(1).expect("seq");
    let (mut changed, mut worst) = (false, 0.0f32);
    for (call, (g, w)) in got.iter().zip(&want).enumerate() {
        for row in 0..prompts.len() {
            // The prefill's padding positions have no meaning; skip them.
            let skip = if call == 0 {
                seq - prompts[row].len()
            } else {
                0
            };
            let (g, w) = (g.get(row).expect("row"), w.get(row).expect("row"));
            for pos in skip..g.dim(0).expect("positions") {
                let (gp, wp) = (g.get(pos).expect("pos"), w.get(pos).expect("pos"));
                let d = max_abs_diff(&gp, &wp);
                changed |= d > 0.0;
                worst = worst.max(d / scale(&wp));
                assert_close(&gp, &wp, &format!("call {call} row {row} position {pos}"));
            }
        }
    }
    eprintln!("worst difference {worst} of the logit scale");
    assert!(changed, "kernel_attention took no effect");
}

/// A prompt longer than `PREFILL_CHUNK` is fed in chunks; the logits (all positions and
/// the last) equal one unsplit pass, which a hook forces.
#[test]
fn chunked_prefill_equals_one_pass() {
    let m = smollm();
    let mut toks = chat(
        m,
        "Summarise the plot of a long novel about a lighthouse keeper.",
    );
    while toks.len() <= 2 * overseer_lm::PREFILL_CHUNK + 10 {
        toks.extend_from_within(..toks.len().min(40));
    }
    // An empty hook list wants nothing but keeps the call in one piece.
    let mut none = HookList::default();
    let mut s = m.session(1);
    let whole = m
        .forward(
            &mut s,
            std::slice::from_ref(&toks),
            ForwardOptions::default()
                .logits(Logits::All)
                .with_hooks(Some(&mut none)),
        )
        .expect("one pass");
    let mut s2 = m.session(1);
    let chunked = m
        .forward(
            &mut s2,
            std::slice::from_ref(&toks),
            ForwardOptions::default().logits(Logits::All),
        )
        .expect("chunked");
    assert_eq!(chunked.dims(), whole.dims());
    assert_eq!(s2.len(), toks.len());
    for i in [0, overseer_lm::PREFILL_CHUNK, toks.len() - 1] {
        let (a, b) = (
            chunked.narrow(1, i, 1).expect("slice"),
            whole.narrow(1, i, 1).expect("slice"),
        );
        assert_close(&a, &b, &format!("position {i}"));
    }
    let mut s3 = m.session(1);
    let last = m
        .forward(
            &mut s3,
            std::slice::from_ref(&toks),
            ForwardOptions::default(),
        )
        .expect("last");
    let want = whole
        .narrow(1, toks.len() - 1, 1)
        .and_then(|t| t.squeeze(1))
        .expect("slice");
    assert_close(&last, &want, "last position");
    // `Logits::None` returns the final-norm output of every position, chunked or not.
    let mut s4 = m.session(1);
    let hidden = m
        .forward(
            &mut s4,
            std::slice::from_ref(&toks),
            ForwardOptions::default().logits(Logits::None),
        )
        .expect("hidden");
    assert_eq!(hidden.dims(), &[1, toks.len(), m.config().hidden]);
}

/// Each row of a left-padded batch gives the logits of its unbatched run, in prefill and
/// in the decode steps after it.
fn batched_rows_match_unbatched(model: &Model) {
    let prompts = vec![
        chat(model, "What is the capital of France?"),
        chat(model, "Hi"),
        chat(model, "Write a haiku about the sea and the wind at night."),
    ];
    assert!(prompts[0].len() != prompts[1].len() && prompts[1].len() != prompts[2].len());
    let next: Vec<u32> = vec![100, 200, 300];
    let mut s = model.session(3);
    let batched = model
        .forward(&mut s, &prompts, ForwardOptions::default())
        .expect("batch");
    assert_eq!(batched.dims(), &[3, model.config().vocab]);
    let step: Vec<Vec<u32>> = next.iter().map(|&t| vec![t]).collect();
    let batched2 = model
        .forward(&mut s, &step, ForwardOptions::default())
        .expect("decode");
    for (r, p) in prompts.iter().enumerate() {
        let mut s1 = model.session(1);
        let single = model
            .forward(&mut s1, std::slice::from_ref(p), ForwardOptions::default())
            .expect("single");
        let row = batched.narrow(0, r, 1).expect("row");
        assert_close(&row, &single, &format!("row {r} prefill"));
        let single2 = model
            .forward(&mut s1, &[vec![next[r]]], ForwardOptions::default())
            .expect("step");
        assert_close(
            &batched2.narrow(0, r, 1).expect("row"),
            &single2,
            &format!("row {r} decode"),
        );
    }
}

#[test]
fn smollm_batched_rows_match_unbatched() {
    batched_rows_match_unbatched(smollm());
}

#[test]
fn qwen_batched_rows_match_unbatched() {
    batched_rows_match_unbatched(qwen());
}

/// A shared prefix computed once in a one-row session and forked into a batch gives each
/// row the logits of feeding prefix + its own tokens to a fresh session, in the ragged
/// opening call (rows padded after the prefix) and in the decode step after it, with an
/// intervention applied in both the prefix and the continuation; a `LastN` capture sees
/// the continuation's last positions.
fn forked_rows_match_unforked(model: &Model) {
    let prompts = [
        chat(model, "What is the capital of France?"),
        chat(model, "Hi"),
        chat(model, "Write a haiku about the sea and the wind at night."),
    ];
    let shared = prompts
        .iter()
        .map(|p| {
            p.iter()
                .zip(&prompts[0])
                .take_while(|(a, b)| a == b)
                .count()
        })
        .min()
        .expect("three prompts");
    assert!(shared >= 3, "the chat template gives a shared prefix");
    let prefix = prompts[0][..shared].to_vec();
    let tails: Vec<Vec<u32>> = prompts.iter().map(|p| p[shared..].to_vec()).collect();
    assert!(
        tails[0].len() != tails[1].len(),
        "the opening call is ragged"
    );
    let hidden = model.config().hidden;
    let dir: Vec<f32> = (0..hidden).map(|i| ((i * 7 % 13) as f32) - 6.0).collect();
    let ablate = || Ablation::new(&dir, model.device()).expect("ablation");
    let next: Vec<Vec<u32>> = vec![vec![100], vec![200], vec![300]];

    let mut p = model.session(1);
    let mut hook = ablate();
    model
        .forward(
            &mut p,
            std::slice::from_ref(&prefix),
            ForwardOptions::default()
                .with_hooks(Some(&mut hook))
                .logits(Logits::None),
        )
        .expect("prefix");
    let mut s = p.fork(3, 0).expect("fork");
    assert_eq!((s.batch(), s.len(), s.pad_start()), (3, shared, shared));
    let forked = model
        .forward(
            &mut s,
            &tails,
            ForwardOptions::default().with_hooks(Some(&mut hook)),
        )
        .expect("ragged continuation");
    let forked2 = model
        .forward(
            &mut s,
            &next,
            ForwardOptions::default().with_hooks(Some(&mut hook)),
        )
        .expect("decode");
    for (r, full) in prompts.iter().enumerate() {
        let mut s1 = model.session(1);
        let mut h1 = ablate();
        let single = model
            .forward(
                &mut s1,
                std::slice::from_ref(full),
                ForwardOptions::default().with_hooks(Some(&mut h1)),
            )
            .expect("single");
        assert_close(
            &forked.narrow(0, r, 1).expect("row"),
            &single,
            &format!("forked row {r}"),
        );
        let single2 = model
            .forward(
                &mut s1,
                &next[r..=r],
                ForwardOptions::default().with_hooks(Some(&mut h1)),
            )
            .expect("step");
        assert_close(
            &forked2.narrow(0, r, 1).expect("row"),
            &single2,
            &format!("forked row {r} decode"),
        );
    }

    // Means of the last 2 positions: prefix without the (read-only) capture, tails with it.
    let point = HookPoint::ResidPre(model.config().n_layer / 2);
    let mut cap = MeanCapture::new(vec![point], 2);
    let mut p = model.session(1);
    model
        .forward(
            &mut p,
            std::slice::from_ref(&prefix),
            ForwardOptions::default().logits(Logits::None),
        )
        .expect("prefix");
    let mut s = p.fork(3, 0).expect("fork");
    model
        .forward(
            &mut s,
            &tails,
            ForwardOptions::default().with_hooks(Some(&mut cap)),
        )
        .expect("capture");
    assert_eq!(cap.count(), 3);
    let mut single = MeanCapture::new(vec![point], 2);
    for full in &prompts {
        let mut s1 = model.session(1);
        model
            .forward(
                &mut s1,
                std::slice::from_ref(full),
                ForwardOptions::default().with_hooks(Some(&mut single)),
            )
            .expect("capture");
    }
    for (pa, pb) in cap.means()[0].iter().zip(&single.means()[0]) {
        let dot: f64 = pa.iter().zip(pb).map(|(x, y)| x * y).sum();
        let na: f64 = pa.iter().map(|x| x * x).sum::<f64>().sqrt();
        let nb: f64 = pb.iter().map(|x| x * x).sum::<f64>().sqrt();
        let cos = dot / (na * nb);
        assert!(cos > 0.9999, "captured means agree: cos {cos}");
    }

    // A second ragged call, or forking a batch, is refused.
    let err = model.forward(&mut s, &tails, ForwardOptions::default());
    assert!(matches!(err, Err(Error::InvalidArgument(_))), "{err:?}");
    assert!(matches!(s.fork(2, 0), Err(Error::InvalidArgument(_))));
}

/// Dropping rows from a left-padded batch (as the lab does when a row finishes) keeps
/// every remaining row's cache, padding and logits; bad row lists are refused.
#[test]
fn retained_rows_keep_their_state() {
    let model = smollm();
    let prompts = vec![
        chat(model, "What is the capital of France?"),
        chat(model, "Hi"),
        chat(model, "Write a haiku about the sea and the wind at night."),
    ];
    let mut s = model.session(3);
    model
        .forward(&mut s, &prompts, ForwardOptions::default())
        .expect("prefill");
    assert!(s.retain_rows(&[0, 0]).is_err());
    assert!(s.retain_rows(&[3]).is_err());
    assert!(s.retain_rows(&[]).is_err());
    s.retain_rows(&[2, 1]).expect("retain");
    assert_eq!(s.batch(), 2);
    let kept = model
        .forward(&mut s, &[vec![100], vec![200]], ForwardOptions::default())
        .expect("decode");
    for (k, (r, t)) in [(2usize, 100u32), (1, 200)].into_iter().enumerate() {
        let mut s1 = model.session(1);
        model
            .forward(&mut s1, &prompts[r..=r], ForwardOptions::default())
            .expect("single");
        let single = model
            .forward(&mut s1, &[vec![t]], ForwardOptions::default())
            .expect("step");
        assert_close(
            &kept.narrow(0, k, 1).expect("row"),
            &single,
            &format!("kept row {r}"),
        );
    }
}

#[test]
fn smollm_forked_rows_match_unforked() {
    forked_rows_match_unforked(smollm());
}

#[test]
fn qwen_forked_rows_match_unforked() {
    forked_rows_match_unforked(qwen());
}

/// Decoding token by token with the KV cache gives the logits of one prefill over the
/// whole sequence (Logits::All).
#[test]
fn kv_cache_decode_matches_full_prefill() {
    let m = smollm();
    let toks = chat(m, "Count from one to five.");
    let mut s = m.session(1);
    let all = m
        .forward(
            &mut s,
            std::slice::from_ref(&toks),
            ForwardOptions::default().logits(Logits::All),
        )
        .expect("all");
    assert_eq!(all.dims(), &[1, toks.len(), m.config().vocab]);
    let split = toks.len() - 4;
    let mut s = m.session(1);
    m.forward(&mut s, &[toks[..split].to_vec()], ForwardOptions::default())
        .expect("prefix");
    for i in split..toks.len() {
        let l = m
            .forward(&mut s, &[vec![toks[i]]], ForwardOptions::default())
            .expect("step");
        let want = all
            .narrow(1, i, 1)
            .and_then(|t| t.squeeze(1))
            .expect("slice");
        assert_close(&l, &want, &format!("position {i}"));
    }
    assert_eq!(s.len(), toks.len());
}

#[test]
fn bad_calls_are_errors_and_leave_the_session_usable() {
    let m = smollm();
    let ctx = m.config().context_length;
    let mut s = m.session(1);
    let long = vec![1u32; ctx + 1];
    let e = m
        .forward(&mut s, &[long], ForwardOptions::default())
        .expect_err("too long");
    assert!(
        matches!(e, Error::ContextOverflow { tokens, context } if tokens == ctx + 1 && context == ctx),
        "{e:?}"
    );
    assert!(s.is_empty());
    let e = m
        .forward(&mut s, &[vec![u32::MAX]], ForwardOptions::default())
        .expect_err("bad id");
    assert!(matches!(e, Error::InvalidArgument(_)), "{e:?}");
    let e = m
        .forward(&mut s, &[vec![1], vec![2]], ForwardOptions::default())
        .expect_err("rows");
    assert!(matches!(e, Error::InvalidArgument(_)), "{e:?}");
    let mut s2 = m.session(2);
    let e = m
        .forward(&mut s2, &[vec![1, 2], vec![]], ForwardOptions::default())
        .expect_err("empty row");
    assert!(matches!(e, Error::InvalidArgument(_)), "{e:?}");
    // Ragged later calls are refused.
    m.forward(&mut s2, &[vec![1, 2], vec![3]], ForwardOptions::default())
        .expect("prefill");
    let e = m
        .forward(&mut s2, &[vec![1, 2], vec![3]], ForwardOptions::default())
        .expect_err("ragged");
    assert!(matches!(e, Error::InvalidArgument(_)), "{e:?}");
    assert_eq!(s2.len(), 2);
    // Generation past the context is refused up front.
    let e = generate(
        m,
        &mut s,
        &vec![1u32; ctx + 5],
        &GenerateOptions::default(),
        None,
        &mut |_| ControlFlow::Continue(()),
    )
    .expect_err("overflow");
    assert!(matches!(e, Error::ContextOverflow { .. }));
}

#[test]
fn greedy_generation_is_deterministic_and_sensible() {
    let m = smollm();
    let prompt = chat(m, "What is the capital of France?");
    let o = GenerateOptions {
        max_tokens: 24,
        ..Default::default()
    };
    let mut streamed = String::new();
    let mut s = m.session(1);
    let g1 = generate(m, &mut s, &prompt, &o, None, &mut |t| {
        streamed.push_str(t);
        ControlFlow::Continue(())
    })
    .expect("generate");
    assert_eq!(streamed, g1.text, "the stream adds up to the text");
    assert!(!g1.text.trim().is_empty());
    assert!(!g1.tokens.is_empty() && g1.tokens.len() <= 24);
    assert_eq!(g1.prompt_tokens, prompt.len());
    assert!(g1.timings.prefill_tok_s() > 0.0);
    let mut s = m.session(1);
    let g2 = generate(m, &mut s, &prompt, &o, None, &mut |_| {
        ControlFlow::Continue(())
    })
    .expect("again");
    assert_eq!(g1.tokens, g2.tokens);
    // The batch gives each prompt what it gets alone, up to a near-tie where the batch
    // shape's rounding noise may pick the other token.
    let other = chat(m, "Name a colour.");
    let batch = generate_batch(m, &[other.clone(), prompt.clone()], &o, None).expect("batch");
    let mut s = m.session(1);
    let alone = generate(m, &mut s, &other, &o, None, &mut |_| {
        ControlFlow::Continue(())
    })
    .expect("other");
    for (b, (p, a)) in batch
        .iter()
        .zip([(&other, &alone.tokens), (&prompt, &g1.tokens)])
    {
        let k = b.tokens.iter().zip(a).take_while(|(x, y)| x == y).count();
        if k < a.len().min(b.tokens.len()) {
            let mut s = m.session(1);
            let mut ctx = p.clone();
            ctx.extend_from_slice(&a[..k]);
            let l = m
                .forward(&mut s, &[ctx], ForwardOptions::default())
                .expect("logits");
            let v = l
                .flatten_all()
                .and_then(|t| t.to_vec1::<f32>())
                .expect("vec");
            let (x, y) = (v[a[k] as usize], v[b.tokens[k] as usize]);
            assert!(
                (x - y).abs() < 1.0,
                "diverged at {k} although the logits differ by {}",
                x - y
            );
        } else {
            assert_eq!(b.text, m.tokenizer().decode(a).expect("decode"));
        }
    }
}

#[test]
fn stop_strings_max_tokens_cancel_and_seeds() {
    let m = smollm();
    let prompt = chat(m, "What is the capital of France?");
    let base = GenerateOptions {
        max_tokens: 24,
        ..Default::default()
    };
    let mut s = m.session(1);
    let full = generate(m, &mut s, &prompt, &base, None, &mut |_| {
        ControlFlow::Continue(())
    })
    .expect("full");
    // A stop string taken from the middle of the text: cut before it, never streamed.
    let words: Vec<&str> = full.text.split_whitespace().collect();
    assert!(words.len() >= 4, "{:?}", full.text);
    let stop = format!("{} {}", words[2], words[3]);
    let at = full.text.find(&stop).expect("present");
    let o = GenerateOptions {
        stop: vec![stop.clone()],
        ..base.clone()
    };
    let mut streamed = String::new();
    let mut s = m.session(1);
    let g = generate(m, &mut s, &prompt, &o, None, &mut |t| {
        streamed.push_str(t);
        ControlFlow::Continue(())
    })
    .expect("stop");
    assert_eq!(g.stop_reason, StopReason::StopString);
    assert_eq!(g.text, full.text[..at]);
    assert_eq!(streamed, g.text);
    // Max tokens.
    let o = GenerateOptions {
        max_tokens: 3,
        ..base.clone()
    };
    let mut s = m.session(1);
    let g = generate(m, &mut s, &prompt, &o, None, &mut |_| {
        ControlFlow::Continue(())
    })
    .expect("max");
    assert_eq!((g.tokens.len(), g.stop_reason), (3, StopReason::MaxTokens));
    assert_eq!(g.tokens[..], full.tokens[..3]);
    // Cancel from the callback.
    let mut s = m.session(1);
    let g = generate(m, &mut s, &prompt, &base, None, &mut |_| {
        ControlFlow::Break(())
    })
    .expect("cancel");
    assert_eq!(g.stop_reason, StopReason::Cancelled);
    // Seeded sampling is reproducible.
    let o = GenerateOptions {
        max_tokens: 16,
        sampling: SamplingParams {
            temperature: 1.2,
            top_k: 50,
            top_p: 0.95,
            seed: 7,
        },
        stop: vec![],
        ..GenerateOptions::default()
    };
    let run = |o: &GenerateOptions| {
        let mut s = m.session(1);
        generate(m, &mut s, &prompt, o, None, &mut |_| {
            ControlFlow::Continue(())
        })
        .expect("sample")
        .tokens
    };
    assert_eq!(run(&o), run(&o));
}

/// Ablation removes the direction at every point, prompt and generated tokens alike.
#[test]
fn ablation_zeroes_the_direction_everywhere() {
    let m = smollm();
    let h = m.config().hidden;
    let dir: Vec<f32> = (0..h).map(|i| ((i * 37 % 11) as f32 - 5.0) / 3.0).collect();
    let d = Ablation::new(&dir, m.device())
        .expect("direction")
        .direction()
        .clone();
    let d3 = d.reshape((1, 1, h)).expect("reshape");
    let proj = |t: &Tensor| -> f32 {
        t.broadcast_mul(&d3)
            .and_then(|x| x.sum(2))
            .and_then(|x| x.abs())
            .and_then(|x| x.max_all())
            .and_then(|x| x.to_scalar::<f32>())
            .expect("projection")
    };
    let points: Vec<HookPoint> = vec![
        HookPoint::ResidPre(0),
        HookPoint::ResidPre(7),
        HookPoint::AttnOut(3),
        HookPoint::MlpOut(12),
        HookPoint::ResidPre(m.config().n_layer),
    ];
    let prompt = chat(m, "Tell me a story.");
    let run = |ablate: bool| -> RawCapture {
        let mut list = HookList(Vec::new());
        if ablate {
            list.0.push(Box::new(
                Ablation::new(&dir, m.device()).expect("direction"),
            ));
        }
        let mut raw = RawCapture::new(points.clone(), Positions::All);
        let mut chain = Chain(&mut list, &mut raw);
        let mut s = m.session(1);
        generate(
            m,
            &mut s,
            &prompt,
            &GenerateOptions {
                max_tokens: 3,
                ..Default::default()
            },
            Some(&mut chain),
            &mut |_| ControlFlow::Continue(()),
        )
        .expect("generate");
        raw
    };
    let plain = run(false);
    let plain_max = plain
        .captured()
        .iter()
        .map(|(_, t)| proj(t))
        .fold(0f32, f32::max);
    assert!(
        plain_max > 0.1,
        "the plain run has no component along d ({plain_max})"
    );
    let ablated = run(true);
    // Prefill plus two decode steps at every point.
    assert_eq!(ablated.captured().len(), points.len() * 3);
    for (p, t) in ablated.captured() {
        let c = proj(t);
        assert!(
            c < 1e-4 * scale(t).max(1.0),
            "{p:?}: component {c} left along d"
        );
    }
}

/// Applies two hooks in order (used to read a capture after an intervention).
struct Chain<'a>(&'a mut HookList, &'a mut RawCapture);

impl overseer_lm::Hook for Chain<'_> {
    fn wants(&self, p: HookPoint) -> bool {
        self.0.wants(p) || self.1.wants(p)
    }
    fn call(
        &mut self,
        p: HookPoint,
        x: &Tensor,
        cx: &overseer_lm::HookContext<'_>,
    ) -> overseer_lm::Result<Option<Tensor>> {
        let y = if self.0.wants(p) {
            self.0.call(p, x, cx)?
        } else {
            None
        };
        let cur = y.as_ref().unwrap_or(x);
        if self.1.wants(p) {
            self.1.call(p, cur, cx)?;
        }
        Ok(y)
    }
}

/// SmolLM2 with the matmul kernels capped at AVX2: every call rounds alike, however
/// many rows it has (with AVX-512 VNNI, calls of 16 rows or more round differently from
/// smaller ones, so a batched pass and a single-prompt pass could differ in the last
/// digits for reasons that have nothing to do with hooks or padding).
fn smollm_row_invariant() -> &'static Model {
    static M: OnceLock<Model> = OnceLock::new();
    M.get_or_init(|| {
        let opts = LoadOptions {
            kernel_level: Some(overseer_kernels::Level::Avx2),
            ..LoadOptions::default()
        };
        Model::load(&model_path("SmolLM2-135M-Instruct.Q4_1.gguf"), &opts).expect("SmolLM2 loads")
    })
}

/// MeanCapture over a padded batch equals the mean of per-prompt raw captures, and an
/// activation addition at the captured point shifts the means by exactly coef·v.
#[test]
fn mean_capture_and_activation_addition() {
    let m = smollm_row_invariant();
    let h = m.config().hidden;
    let prompts = vec![
        chat(m, "How do I bake bread?"),
        chat(m, "Hello there"),
        chat(m, "Explain photosynthesis in one sentence, please."),
    ];
    let points = vec![
        HookPoint::ResidPre(0),
        HookPoint::ResidPre(5),
        HookPoint::MlpOut(9),
        HookPoint::FinalNorm,
    ];
    let last_n = 3;
    let mut mean = MeanCapture::new(points.clone(), last_n);
    let mut s = m.session(prompts.len());
    m.forward(
        &mut s,
        &prompts,
        ForwardOptions::default().with_hooks(Some(&mut mean)),
    )
    .expect("batch");
    // A decode step is not counted.
    m.forward(
        &mut s,
        &[vec![5], vec![5], vec![5]],
        ForwardOptions::default().with_hooks(Some(&mut mean)),
    )
    .expect("decode");
    assert_eq!(mean.count(), 3);
    let means = mean.means();
    assert_eq!(
        (means.len(), means[0].len(), means[0][0].len()),
        (points.len(), last_n, h)
    );

    let mut sum = vec![vec![vec![0f64; h]; last_n]; points.len()];
    for p in &prompts {
        let mut raw = RawCapture::new(points.clone(), Positions::LastN(last_n));
        let mut s = m.session(1);
        m.forward(
            &mut s,
            std::slice::from_ref(p),
            ForwardOptions::default().with_hooks(Some(&mut raw)),
        )
        .expect("single");
        for (pi, point) in points.iter().enumerate() {
            let t = raw.at(*point);
            assert_eq!(t.len(), 1);
            let v = t[0]
                .squeeze(0)
                .and_then(|x| x.to_dtype(DType::F64))
                .and_then(|x| x.to_vec2::<f64>())
                .expect("vec");
            for (pos, row) in v.iter().enumerate() {
                for (j, x) in row.iter().enumerate() {
                    sum[pi][pos][j] += x / prompts.len() as f64;
                }
            }
        }
    }
    for (pi, point) in points.iter().enumerate() {
        let scale = sum[pi]
            .iter()
            .flatten()
            .fold(0f64, |a, x| a.max(x.abs()))
            .max(1.0);
        let err = means[pi]
            .iter()
            .flatten()
            .zip(sum[pi].iter().flatten())
            .fold(0f64, |a, (x, y)| a.max((x - y).abs()));
        assert!(
            err <= 1e-3 * scale,
            "{point:?}: batched mean differs by {err}"
        );
    }

    // Addition at ResidPre(5), captured at the same point after it.
    let v: Vec<f32> = (0..h).map(|i| (i as f32 * 0.01).sin()).collect();
    let coef = 4.0;
    let add = ActivationAddition::new(HookPoint::ResidPre(5), &v, coef, Positions::All, m.device())
        .expect("add");
    let mut list = HookList(vec![Box::new(add)]);
    let mut mean2 = RawCapture::new(
        vec![HookPoint::ResidPre(5), HookPoint::FinalNorm],
        Positions::LastN(last_n),
    );
    let mut plain = RawCapture::new(
        vec![HookPoint::ResidPre(5), HookPoint::FinalNorm],
        Positions::LastN(last_n),
    );
    let p = &prompts[0];
    let mut s = m.session(1);
    m.forward(
        &mut s,
        std::slice::from_ref(p),
        ForwardOptions::default().with_hooks(Some(&mut plain)),
    )
    .expect("plain");
    let mut chain = Chain(&mut list, &mut mean2);
    let mut s = m.session(1);
    m.forward(
        &mut s,
        std::slice::from_ref(p),
        ForwardOptions::default().with_hooks(Some(&mut chain)),
    )
    .expect("steered");
    let a = plain.at(HookPoint::ResidPre(5))[0].clone();
    let b = mean2.at(HookPoint::ResidPre(5))[0].clone();
    let vt = (Tensor::new(v.as_slice(), m.device()).expect("v") * coef).expect("scaled");
    let shift = (b - a).and_then(|d| d.broadcast_sub(&vt)).expect("shift");
    assert!(
        scale(&shift) < 1e-4,
        "shift differs from coef*v by {}",
        scale(&shift)
    );
    // ...and it changes what comes after.
    let d = max_abs_diff(
        &plain.at(HookPoint::FinalNorm)[0].clone(),
        &mean2.at(HookPoint::FinalNorm)[0].clone(),
    );
    assert!(d > 1e-2, "steering had no downstream effect ({d})");
}

/// Starting at layer L from the unmodified model's `ResidPre(L)` gives the logits of a
/// full pass whose intervention changes nothing below L (activation addition at L), in
/// a padded batch and in a batch forked from a shared prefix; the session then refuses
/// calls that would need the layers it skipped.
#[test]
fn forward_from_a_captured_layer_equals_the_full_pass() {
    let m = smollm();
    let h = m.config().hidden;
    let layer = 7;
    let point = HookPoint::ResidPre(layer);
    let v: Vec<f32> = (0..h).map(|i| (i as f32 * 0.03).cos()).collect();
    let add = || ActivationAddition::new(point, &v, 3.0, Positions::All, m.device()).expect("hook");
    let prompts = vec![
        chat(m, "How do I bake bread?"),
        chat(m, "Hello there"),
        chat(m, "Explain photosynthesis in one sentence, please."),
    ];
    let captured = |s: &mut overseer_lm::Session, rows: &[Vec<u32>]| -> Tensor {
        let mut raw = RawCapture::new(vec![point], Positions::All);
        m.forward(
            s,
            rows,
            ForwardOptions::default().with_hooks(Some(&mut raw)),
        )
        .expect("capture pass");
        raw.at(point)[0].clone()
    };

    // A padded batch.
    let mut hook = add();
    let mut s = m.session(prompts.len());
    let full = m
        .forward(
            &mut s,
            &prompts,
            ForwardOptions::default().with_hooks(Some(&mut hook)),
        )
        .expect("full pass");
    let resid = captured(&mut m.session(prompts.len()), &prompts);
    let from = overseer_lm::Resume { layer, resid };
    let mut s = m.session(prompts.len());
    let resumed = m
        .forward_from(
            &mut s,
            &prompts,
            &from,
            ForwardOptions::default().with_hooks(Some(&mut hook)),
        )
        .expect("resumed pass");
    assert_eq!(s.first_layer(), layer);
    assert!(max_abs_diff(&full, &resumed) <= 1e-5, "padded batch");
    // Without the intervention the layers below L are what changed: not equal.
    let plain = m
        .forward(
            &mut m.session(prompts.len()),
            &prompts,
            ForwardOptions::default(),
        )
        .expect("plain");
    assert!(max_abs_diff(&plain, &resumed) > 1e-2);

    // The skipped layers' cache is empty: a plain call on the session is refused and
    // leaves it as it was.
    let len = s.len();
    let next = vec![vec![5u32]; prompts.len()];
    assert!(matches!(
        m.forward(&mut s, &next, ForwardOptions::default()),
        Err(Error::InvalidArgument(_))
    ));
    assert_eq!(s.len(), len);

    // A shared prefix resumed once and forked into the batch.
    let n = 5;
    let prefix = prompts[0][..n].to_vec();
    let tails: Vec<Vec<u32>> = prompts.iter().map(|p| p[n..].to_vec()).collect();
    let mut p = m.session(1);
    m.forward(
        &mut p,
        std::slice::from_ref(&prefix),
        ForwardOptions::default()
            .with_hooks(Some(&mut hook))
            .logits(Logits::None),
    )
    .expect("prefix");
    let mut s = p.fork(prompts.len(), 0).expect("fork");
    let full = m
        .forward(
            &mut s,
            &tails,
            ForwardOptions::default().with_hooks(Some(&mut hook)),
        )
        .expect("forked full");
    let mut base = m.session(1);
    let prefix_resid = captured(&mut base, std::slice::from_ref(&prefix));
    let tail_resid = captured(&mut base.fork(prompts.len(), 0).expect("fork"), &tails);
    let mut p = m.session(1);
    let o = ForwardOptions::default()
        .with_hooks(Some(&mut hook))
        .logits(Logits::None);
    m.forward_from(
        &mut p,
        std::slice::from_ref(&prefix),
        &overseer_lm::Resume {
            layer,
            resid: prefix_resid,
        },
        o,
    )
    .expect("prefix resumed");
    let mut s = p.fork(prompts.len(), 0).expect("fork");
    assert_eq!(s.first_layer(), layer);
    let resumed = m
        .forward_from(
            &mut s,
            &tails,
            &overseer_lm::Resume {
                layer,
                resid: tail_resid,
            },
            ForwardOptions::default().with_hooks(Some(&mut hook)),
        )
        .expect("forked resumed");
    assert!(max_abs_diff(&full, &resumed) <= 1e-5, "forked batch");

    // A residual of the wrong shape, or a layer past the last, is an error.
    let wrong = Tensor::zeros((prompts.len(), 2, h), DType::F32, m.device()).expect("zeros");
    let bad = overseer_lm::Resume {
        layer,
        resid: wrong,
    };
    assert!(matches!(
        m.forward_from(
            &mut m.session(prompts.len()),
            &prompts,
            &bad,
            ForwardOptions::default()
        ),
        Err(Error::InvalidArgument(_))
    ));
    let past = overseer_lm::Resume {
        layer: m.config().n_layer + 1,
        resid: from.resid.clone(),
    };
    assert!(matches!(
        m.forward_from(
            &mut m.session(prompts.len()),
            &prompts,
            &past,
            ForwardOptions::default()
        ),
        Err(Error::InvalidArgument(_))
    ));
}

/// With only the last position's logits wanted, the last layer computes queries,
/// attention and MLP for that position alone (keys and values for all): the logits
/// equal the last row of a pass that computes every position, without a hook and
/// under a position-wise one (ablation), and the KV cache it leaves decodes the same.
fn last_position_pass_equals_the_full_pass(m: &Model) {
    let prompts = vec![
        chat(m, "How do I bake bread?"),
        chat(m, "Hello there"),
        chat(m, "Explain photosynthesis in one sentence, please."),
    ];
    let h = m.config().hidden;
    let dir: Vec<f32> = (0..h).map(|i| ((i * 5 % 11) as f32) - 5.0).collect();
    for ablate in [false, true] {
        let mut hook = Ablation::new(&dir, m.device()).expect("direction");
        let mut run = |logits: Logits| {
            let mut s = m.session(prompts.len());
            let o = ForwardOptions::default()
                .logits(logits)
                .with_hooks(if ablate { Some(&mut hook) } else { None });
            let out = m.forward(&mut s, &prompts, o).expect("prompt pass");
            (s, out)
        };
        let (mut s_last, last) = run(Logits::Last);
        let (mut s_all, all) = run(Logits::All);
        let seq = all.dim(1).expect("seq");
        let all_last = all
            .narrow(1, seq - 1, 1)
            .and_then(|t| t.squeeze(1))
            .expect("last row");
        assert_close(&last, &all_last, &format!("ablate={ablate}: last position"));
        let next = vec![vec![5u32]; prompts.len()];
        let mut step = |s: &mut overseer_lm::Session| {
            let o =
                ForwardOptions::default().with_hooks(if ablate { Some(&mut hook) } else { None });
            m.forward(s, &next, o).expect("decode")
        };
        let a = step(&mut s_last);
        let b = step(&mut s_all);
        assert_close(&a, &b, &format!("ablate={ablate}: decode after"));
    }
}

#[test]
fn smollm_last_position_pass_equals_the_full_pass() {
    last_position_pass_equals_the_full_pass(smollm());
}

#[test]
fn qwen_last_position_pass_equals_the_full_pass() {
    last_position_pass_equals_the_full_pass(qwen());
}
