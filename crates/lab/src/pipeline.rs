//! The whole refusal-direction method as one resumable run (`overseer refusal run`).
//!
//! Stages, each checkpointed under `OUT/state/` (see `state`): prompts (sampling and
//! the refusal-score filter), means (difference-in-means candidates), scores (bypass /
//! induce / KL per candidate, one line each), select (+ addition coefficient search),
//! eval (greedy completions per condition), cost (cross-entropy and KL). Then
//! `direction.safetensors`, `report.json`, `report.md` and the plots are written.

use std::path::{Path, PathBuf};
use std::time::Instant;

use overseer_lm::{Ablation, ActivationAddition, HookPoint, Model, Positions};
use serde::{Deserialize, Serialize};

use crate::data::{Split, load_prompts, sample, split_path};
use crate::direction::{Candidates, Direction};
use crate::metric::{is_refusal, kl_divergence, mean, refusal_token_ids};
use crate::report::{CostReport, DataReport, Example, Rates, Report, SelectedReport};
use crate::runner::{LayerInputs, Progress, Runner};

/// Most memory candidate scoring spends on keeping the validation prompts' layer inputs
/// (see `LayerInputs`); above it every induce pass runs all layers.
const MAX_LAYER_INPUT_BYTES: usize = 1 << 30;
use crate::select::{
    CandidateScore, Selected, SelectionConfig, first_pruned_layer, pick_coefficient, select,
};
use crate::state::RunState;
use crate::{Error, Result};

/// Everything that defines a run (recorded in `state/config.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunConfig {
    pub model: PathBuf,
    /// Folder with `harmful_{train,val,test}.json` / `harmless_*.json`.
    pub data_dir: PathBuf,
    /// Own prompt files replacing the shared splits (split train/val/test by seed).
    pub harmful: Option<PathBuf>,
    pub harmless: Option<PathBuf>,
    pub n_train: usize,
    pub n_val: usize,
    pub n_test: usize,
    pub seed: u64,
    /// Prompts per forward batch (not part of the run's identity).
    #[serde(skip)]
    pub batch: usize,
    /// Prompts generated together in the evaluations (see `Runner::gen_batch`). Not part
    /// of the run's identity.
    #[serde(skip)]
    pub gen_batch: usize,
    /// Compute the prompts' shared chat-template prefix once per call (see `Runner`);
    /// off only to measure what it saves. Not part of the run's identity.
    #[serde(skip)]
    pub share_prefix: bool,
    /// Batches run side by side, one thread each (see `Runner::lanes`); 1: one at a
    /// time on every thread. Not part of the run's identity.
    #[serde(skip)]
    pub lanes: usize,
    pub max_new_tokens: usize,
    pub selection: SelectionConfig,
    pub refusal_words: Vec<String>,
    /// Filter train/val prompts by the unmodified model's refusal score.
    pub filter: bool,
    /// Only the last post-instruction position (instead of all of them).
    pub last_position_only: bool,
    /// Score candidates in the pruned last layers too (for the plots; never selected).
    pub score_pruned_layers: bool,
    /// Coefficients tried for activation addition, ascending.
    pub addition_coefs: Vec<f64>,
    pub system_prompt: Option<String>,
    pub n_examples: usize,
}

impl RunConfig {
    /// Defaults of the paper (128/32 prompts per class, seed 42) for `model`.
    pub fn new(model: PathBuf, data_dir: PathBuf) -> Self {
        RunConfig {
            model,
            data_dir,
            harmful: None,
            harmless: None,
            n_train: 128,
            n_val: 32,
            n_test: 64,
            seed: 42,
            batch: 16,
            gen_batch: 64,
            share_prefix: true,
            lanes: 1,
            max_new_tokens: 256,
            selection: SelectionConfig::default(),
            refusal_words: crate::metric::DEFAULT_REFUSAL_WORDS
                .iter()
                .map(|s| s.to_string())
                .collect(),
            filter: true,
            last_position_only: false,
            score_pruned_layers: false,
            addition_coefs: vec![1.0, 1.5, 2.0, 3.0, 4.0],
            system_prompt: None,
            n_examples: 3,
        }
    }
}

/// What every candidate direction of a run is scored on.
struct ScoringSet<'a> {
    /// Harmful validation prompts (bypass score).
    harmful: &'a [Vec<u32>],
    /// Harmless validation prompts (KL and induce score).
    harmless: &'a [Vec<u32>],
    /// The unmodified model's last-position logits on `harmless` (the KL baseline).
    base: &'a [Vec<f32>],
    /// Their captured layer inputs, when kept: induce passes start at their layer.
    inputs: Option<&'a LayerInputs>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct PromptSets {
    harmful_train: Vec<String>,
    harmless_train: Vec<String>,
    harmful_val: Vec<String>,
    harmless_val: Vec<String>,
    harmful_test: Vec<String>,
    harmless_test: Vec<String>,
    data: DataReport,
    #[serde(deserialize_with = "crate::select::nan_null")]
    baseline_val_harmful: f64,
    #[serde(deserialize_with = "crate::select::nan_null")]
    baseline_val_harmless: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct MeansState {
    positions: Vec<i64>,
    n_layer: usize,
    hidden: usize,
    data: Vec<f32>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct SelectState {
    selected: Selected,
    coef_search: Vec<(f64, f64)>,
    coef: f64,
}

/// One judged completion (also the `overseer refusal eval --json` item).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JudgedCompletion {
    pub instruction: String,
    pub completion: String,
    pub refused: bool,
    pub refusal_score: f64,
    #[serde(skip_serializing)]
    #[serde(default)]
    pub tokens: Vec<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct EvalState {
    items: Vec<JudgedCompletion>,
    tokens: Vec<Vec<u32>>,
}

/// Which intervention to apply.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Intervention {
    None,
    Ablate,
    /// Add `coef · r` at the direction's layer.
    Add(f64),
}

/// `+coef · r` at `ResidPre(layer)`, every position (`overseer chat --steer DIR:coef`).
pub fn steering_hook(
    dir: &Direction,
    coef: f64,
    device: &overseer_lm::candle_core::Device,
) -> Result<ActivationAddition> {
    Ok(ActivationAddition::new(
        HookPoint::ResidPre(dir.layer),
        &dir.vector,
        coef,
        Positions::All,
        device,
    )?)
}

/// Directional ablation of the saved direction everywhere (`overseer chat --ablate DIR`).
pub fn ablation_hook(
    dir: &Direction,
    device: &overseer_lm::candle_core::Device,
) -> Result<Ablation> {
    Ok(Ablation::new(&dir.vector, device)?)
}

/// Generate greedily for `instructions` under an intervention and judge each completion.
pub fn evaluate(
    runner: &Runner<'_>,
    instructions: &[String],
    hook: Option<&mut dyn overseer_lm::Hook>,
    max_new: usize,
    progress: &dyn Progress,
) -> Result<Vec<JudgedCompletion>> {
    let prompts = runner.encode_all(instructions)?;
    progress.start("generate", prompts.len() as u64);
    let comps = runner.generate(&prompts, max_new, hook, progress)?;
    progress.finish();
    Ok(instructions
        .iter()
        .zip(comps)
        .map(|(i, c)| JudgedCompletion {
            instruction: i.clone(),
            refused: is_refusal(&c.text),
            completion: c.text,
            refusal_score: c.first_score,
            tokens: c.tokens,
        })
        .collect())
}

/// Fraction of refused completions and the mean first-token refusal score.
pub fn summarize(items: &[JudgedCompletion]) -> (f64, f64) {
    let rate = items.iter().filter(|c| c.refused).count() as f64 / items.len().max(1) as f64;
    let scores: Vec<f64> = items.iter().map(|c| c.refusal_score).collect();
    (rate, mean(&scores))
}

fn stage<T>(
    timings: &mut Vec<(String, f64)>,
    name: &str,
    f: impl FnOnce() -> Result<T>,
) -> Result<T> {
    let t = Instant::now();
    let r = f()?;
    timings.push((name.to_string(), t.elapsed().as_secs_f64()));
    Ok(r)
}

/// The refusal-direction pipeline on a loaded model.
pub struct RefusalRun<'a> {
    pub model: &'a Model,
    pub config: RunConfig,
    pub out: PathBuf,
    /// Remove earlier checkpoints first.
    pub restart: bool,
}

impl RefusalRun<'_> {
    fn runner(&self) -> Result<Runner<'_>> {
        let ids = refusal_token_ids(self.model.tokenizer().tokens(), &self.config.refusal_words);
        if ids.is_empty() {
            return Err(Error::NoRefusalTokens(self.config.refusal_words.clone()));
        }
        Ok(Runner {
            model: self.model,
            batch: self.config.batch.max(1),
            gen_batch: self.config.gen_batch.max(1),
            refusal_ids: ids,
            system_prompt: self.config.system_prompt.clone(),
            share_prefix: self.config.share_prefix,
            lanes: self.config.lanes.max(1),
        })
    }

    fn splits(&self) -> Result<[Vec<String>; 6]> {
        let c = &self.config;
        let s = c.seed;
        let load_split = |harmful: bool, own: &Option<PathBuf>| -> Result<[Vec<String>; 3]> {
            match own {
                Some(p) => {
                    // One file: a seeded shuffle split into train / val / test.
                    let all = sample(&load_prompts(p)?, usize::MAX, s);
                    let n = all.len();
                    let test_n = (n / 5).max(1).min(n);
                    let val_n = (n / 5).max(1).min(n - test_n);
                    let test = all[..test_n].to_vec();
                    let val = all[test_n..test_n + val_n].to_vec();
                    let train = all[test_n + val_n..].to_vec();
                    Ok([train, val, test])
                }
                None => Ok([
                    load_prompts(&split_path(&c.data_dir, harmful, Split::Train))?,
                    load_prompts(&split_path(&c.data_dir, harmful, Split::Val))?,
                    load_prompts(&split_path(&c.data_dir, harmful, Split::Test))?,
                ]),
            }
        };
        let [ht, hv, hx] = load_split(true, &c.harmful)?;
        let [lt, lv, lx] = load_split(false, &c.harmless)?;
        Ok([ht, lt, hv, lv, hx, lx])
    }

    /// Score prompts in seeded order, keeping the first `n` that pass `keep`.
    fn filtered(
        &self,
        runner: &Runner<'_>,
        pool: &[String],
        n: usize,
        harmful: bool,
        progress: &dyn Progress,
    ) -> Result<(Vec<String>, usize)> {
        let order = sample(pool, usize::MAX, self.config.seed);
        if !self.config.filter {
            return Ok((order.into_iter().take(n).collect(), 0));
        }
        let mut kept = Vec::new();
        let mut scored = 0;
        let chunk = (runner.batch * 2).max(n / 2).max(1);
        progress.start(
            if harmful {
                "filter harmful"
            } else {
                "filter harmless"
            },
            n as u64,
        );
        for part in order.chunks(chunk) {
            if kept.len() >= n {
                break;
            }
            let enc = runner.encode_all(part)?;
            let scores = runner.refusal_scores(&enc, None, &crate::runner::NoProgress)?;
            scored += part.len();
            for (p, sc) in part.iter().zip(scores) {
                let pass = if harmful { sc > 0.0 } else { sc < 0.0 };
                if pass && kept.len() < n {
                    kept.push(p.clone());
                    progress.advance(1);
                }
            }
        }
        progress.finish();
        Ok((kept, scored))
    }

    fn prompts(&self, runner: &Runner<'_>, progress: &dyn Progress) -> Result<PromptSets> {
        let c = &self.config;
        let [ht, lt, hv, lv, hx, lx] = self.splits()?;
        let mut notes = Vec::new();
        let mut pick = |pool: &[String],
                        n: usize,
                        harmful: bool,
                        what: &str|
         -> Result<(Vec<String>, usize)> {
            let (kept, scored) = self.filtered(runner, pool, n, harmful, progress)?;
            const MIN: usize = 4;
            if kept.len() < MIN.min(n) {
                notes.push(format!(
                    "Only {} {what} prompts passed the refusal-score filter (of {scored} scored); the filter was skipped for this split.",
                    kept.len()
                ));
                return Ok((sample(pool, n, c.seed), scored));
            }
            if kept.len() < n {
                notes.push(format!(
                    "{what}: only {} of {scored} prompts passed the refusal-score filter (wanted {n}); the run uses those {}.",
                    kept.len(),
                    kept.len()
                ));
            }
            Ok((kept, scored))
        };
        let (harmful_train, hts) = pick(&ht, c.n_train, true, "harmful train")?;
        let (harmless_train, lts) = pick(&lt, c.n_train, false, "harmless train")?;
        let (harmful_val, hvs) = pick(&hv, c.n_val, true, "harmful val")?;
        let (harmless_val, lvs) = pick(&lv, c.n_val, false, "harmless val")?;
        let harmful_test = sample(&hx, c.n_test, c.seed);
        let harmless_test = sample(&lx, c.n_test, c.seed);
        let base_h = runner.refusal_scores(
            &runner.encode_all(&harmful_val)?,
            None,
            &crate::runner::NoProgress,
        )?;
        let base_l = runner.refusal_scores(
            &runner.encode_all(&harmless_val)?,
            None,
            &crate::runner::NoProgress,
        )?;
        let data = DataReport {
            harmful_train_scored: hts,
            harmful_train: harmful_train.len(),
            harmless_train_scored: lts,
            harmless_train: harmless_train.len(),
            harmful_val_scored: hvs,
            harmful_val: harmful_val.len(),
            harmless_val_scored: lvs,
            harmless_val: harmless_val.len(),
            harmful_test: harmful_test.len(),
            harmless_test: harmless_test.len(),
            note: if c.filter {
                format!(
                    "Filter: prompts are scored in a seeded order over the whole split and the first ones that pass are kept (harmful: score > 0, harmless: score < 0). {}",
                    notes.join(" ")
                )
            } else {
                "No refusal-score filter (--no-filter).".into()
            },
        };
        Ok(PromptSets {
            harmful_train,
            harmless_train,
            harmful_val,
            harmless_val,
            harmful_test,
            harmless_test,
            data,
            baseline_val_harmful: mean(&base_h),
            baseline_val_harmless: mean(&base_l),
        })
    }

    fn means(
        &self,
        runner: &Runner<'_>,
        p: &PromptSets,
        progress: &dyn Progress,
    ) -> Result<MeansState> {
        let post = self.model.chat_template().post_instruction()?;
        let post_ids = self.model.tokenizer().encode(&post, false)?;
        let n_all = post_ids.len().max(1);
        let harmful = runner.encode_all(&p.harmful_train)?;
        let harmless = runner.encode_all(&p.harmless_train)?;
        for t in harmful.iter().chain(&harmless) {
            if !t.ends_with(&post_ids) {
                tracing::warn!("a rendered prompt does not end with the post-instruction tokens");
                break;
            }
        }
        let n = n_all.min(
            harmful
                .iter()
                .chain(&harmless)
                .map(Vec::len)
                .min()
                .unwrap_or(1),
        );
        progress.start("activations", (harmful.len() + harmless.len()) as u64);
        let mh = runner.means(&harmful, n, progress)?;
        let ml = runner.means(&harmless, n, progress)?;
        progress.finish();
        let cfg = self.model.config();
        let mut positions: Vec<i64> = (1..=n as i64).rev().map(|k| -k).collect();
        let mut data: Vec<f32> = mh.iter().zip(&ml).map(|(a, b)| (a - b) as f32).collect();
        if self.config.last_position_only {
            let stride = cfg.n_layer * cfg.hidden;
            data = data[(n - 1) * stride..].to_vec();
            positions = vec![-1];
        }
        Ok(MeansState {
            positions,
            n_layer: cfg.n_layer,
            hidden: cfg.hidden,
            data,
        })
    }

    /// Run (or resume) the pipeline and write everything to `self.out`.
    pub fn run(&self, progress: &dyn Progress) -> Result<Report> {
        let state = RunState::open(&self.out, &self.config, self.restart)?;
        let runner = self.runner()?;
        let mut timings = Vec::new();
        let cfg = self.model.config();

        let prompts: PromptSets = match state.load("prompts.json")? {
            Some(p) => p,
            None => {
                let p = stage(&mut timings, "prompts+filter", || {
                    self.prompts(&runner, progress)
                })?;
                state.save("prompts.json", &p)?;
                p
            }
        };
        let means: MeansState = match state.load("means.json")? {
            Some(m) => m,
            None => {
                let m = stage(&mut timings, "activations", || {
                    self.means(&runner, &prompts, progress)
                })?;
                state.save("means.json", &m)?;
                m
            }
        };
        let cands = Candidates {
            positions: means.positions.clone(),
            n_layer: means.n_layer,
            hidden: means.hidden,
            data: means.data.clone(),
        };

        // Candidate scores, one jsonl line per candidate.
        let (scores, layer_inputs) = stage(&mut timings, "candidate scores", || {
            self.score_candidates(&runner, &prompts, &cands, &state, progress)
        })?;

        let mk_dir = |layer: usize, pos_idx: usize| Direction {
            model: self.model_name(),
            layer,
            position: cands.positions[pos_idx],
            n_layer: cfg.n_layer,
            vector: cands.get(pos_idx, layer).to_vec(),
            candidates: Some(cands.clone()),
            extra: [
                (
                    "architecture".to_string(),
                    self.model.config().architecture.gguf_name().to_string(),
                ),
                ("seed".to_string(), self.config.seed.to_string()),
            ]
            .into_iter()
            .collect(),
        };
        let sel: SelectState = match state.load("select.json")? {
            Some(s) => s,
            None => {
                let s = stage(&mut timings, "selection", || {
                    let selected = select(&scores, cfg.n_layer, &self.config.selection);
                    let Some(ch) = selected.chosen else {
                        return Err(Error::NothingLeft(
                            "no candidate direction passed the selection filters (--strict)".into(),
                        ));
                    };
                    let pi = cands
                        .positions
                        .iter()
                        .position(|&p| p == ch.position)
                        .expect("scored from these positions");
                    let dir = mk_dir(ch.layer, pi);
                    let enc = runner.encode_all(&prompts.harmless_val)?;
                    let mut coef_search = Vec::new();
                    progress.start(
                        "coefficient search",
                        self.config.addition_coefs.len() as u64,
                    );
                    // The candidates' captured layer inputs are those of these prompts.
                    let inputs = layer_inputs.as_ref().filter(|i| i.upto() >= ch.layer);
                    for &coef in &self.config.addition_coefs {
                        let mut h = steering_hook(&dir, coef, self.model.device())?;
                        let np = crate::runner::NoProgress;
                        let sc = mean(&match inputs {
                            Some(i) => {
                                runner.refusal_scores_from(i, ch.layer, Some(&mut h), &np)?
                            }
                            None => runner.refusal_scores(&enc, Some(&mut h), &np)?,
                        });
                        coef_search.push((coef, sc));
                        progress.advance(1);
                        if sc > self.config.selection.induce_threshold {
                            break;
                        }
                    }
                    progress.finish();
                    let coef =
                        pick_coefficient(&coef_search, self.config.selection.induce_threshold)
                            .map_or(1.0, |(c, _)| c);
                    Ok(SelectState {
                        selected,
                        coef_search,
                        coef,
                    })
                })?;
                state.save("select.json", &s)?;
                s
            }
        };
        let ch = sel.selected.chosen.expect("saved only with a choice");
        let pi = cands
            .positions
            .iter()
            .position(|&p| p == ch.position)
            .expect("scored from these positions");
        let dir = mk_dir(ch.layer, pi);
        dir.save(&self.out)?;

        // Evaluation on test prompts.
        let conditions: [(&str, bool, Intervention); 6] = [
            ("baseline_harmful", true, Intervention::None),
            ("baseline_harmless", false, Intervention::None),
            ("ablation_harmful", true, Intervention::Ablate),
            ("ablation_harmless", false, Intervention::Ablate),
            ("addition_harmless", false, Intervention::Add(sel.coef)),
            ("subtraction_harmful", true, Intervention::Add(-1.0)),
        ];
        let test_set = |harmful: bool| -> &[String] {
            if harmful {
                &prompts.harmful_test
            } else {
                &prompts.harmless_test
            }
        };
        let mut evals = std::collections::BTreeMap::new();
        let mut todo = Vec::new();
        for (name, harmful, iv) in conditions {
            match state.load::<EvalState>(&format!("eval_{name}.json"))? {
                Some(e) => {
                    evals.insert(name, e);
                }
                None => todo.push((name, harmful, iv)),
            }
        }
        // Conditions under the same intervention generate in one call (harmful and
        // harmless prompts together): on two lanes each lane then decodes 64 rows, not
        // 32. (Each condition whole on its own lane measured slower: 212 s against 195 s
        // for the default run's evaluations.) Each condition is still saved on its own,
        // so a killed run resumes per condition.
        while let Some(&(_, _, iv)) = todo.first() {
            let (group, rest): (Vec<_>, Vec<_>) = todo.into_iter().partition(|c| c.2 == iv);
            todo = rest;
            let names: Vec<&str> = group.iter().map(|c| c.0).collect();
            let sets: Vec<&[String]> = group.iter().map(|c| test_set(c.1)).collect();
            let all: Vec<String> = sets.concat();
            let items = stage(&mut timings, &format!("eval {}", names.join("+")), || {
                let mut hook = dir.hook(self.model, iv)?;
                evaluate(
                    &runner,
                    &all,
                    crate::runner::boxed(&mut hook),
                    self.config.max_new_tokens,
                    progress,
                )
            })?;
            let mut items = items.into_iter();
            for (name, set) in names.into_iter().zip(sets) {
                let items: Vec<JudgedCompletion> = items.by_ref().take(set.len()).collect();
                let tokens = items.iter().map(|c| c.tokens.clone()).collect();
                let e = EvalState { items, tokens };
                state.save(&format!("eval_{name}.json"), &e)?;
                evals.insert(name, e);
            }
        }

        let cost: CostReport = match state.load("cost.json")? {
            Some(c) => c,
            None => {
                let c = stage(&mut timings, "capability cost", || {
                    self.cost(
                        &runner,
                        &dir,
                        sel.coef,
                        &prompts,
                        &evals["baseline_harmless"],
                        progress,
                    )
                })?;
                state.save("cost.json", &c)?;
                c
            }
        };

        let rate = |k: &str| summarize(&evals[k].items);
        let (bh, bhs) = rate("baseline_harmful");
        let (bl, bls) = rate("baseline_harmless");
        let (ah, ahs) = rate("ablation_harmful");
        let (al, als) = rate("ablation_harmless");
        let (dl, dls) = rate("addition_harmless");
        let (sh, shs) = rate("subtraction_harmful");
        let examples = self.examples(&evals);
        let post = self.model.chat_template().post_instruction()?;
        let mut config_json = serde_json::to_value(&self.config)?;
        config_json["baseline_val"] = serde_json::json!({
            "harmful": prompts.baseline_val_harmful,
            "harmless": prompts.baseline_val_harmless,
        });
        let report = Report {
            model: self.model_name(),
            architecture: cfg.architecture.gguf_name().to_string(),
            n_layer: cfg.n_layer,
            hidden: cfg.hidden,
            post_instruction: post,
            positions: cands.positions.clone(),
            refusal_tokens: runner
                .refusal_ids
                .iter()
                .map(|&i| {
                    (
                        i,
                        self.model.tokenizer().token_to_piece(i).unwrap_or_default(),
                    )
                })
                .collect(),
            data: prompts.data.clone(),
            selected: SelectedReport {
                layer: ch.layer,
                position: ch.position,
                bypass: ch.bypass,
                induce: ch.induce,
                kl: ch.kl,
                relaxed: sel.selected.relaxed.clone(),
                n_passed: sel.selected.n_passed,
            },
            kl: ch.kl,
            coef_search: sel.coef_search.clone(),
            baseline: Rates {
                harmful_refusal_rate: Some(bh),
                harmless_refusal_rate: Some(bl),
                harmful_refusal_score: Some(bhs),
                harmless_refusal_score: Some(bls),
                coef: None,
            },
            ablation: Rates {
                harmful_refusal_rate: Some(ah),
                harmless_refusal_rate: Some(al),
                harmful_refusal_score: Some(ahs),
                harmless_refusal_score: Some(als),
                coef: None,
            },
            addition: Rates {
                harmless_refusal_rate: Some(dl),
                harmless_refusal_score: Some(dls),
                coef: Some(sel.coef),
                ..Default::default()
            },
            subtraction: Rates {
                harmful_refusal_rate: Some(sh),
                harmful_refusal_score: Some(shs),
                coef: Some(-1.0),
                ..Default::default()
            },
            cost,
            candidates: scores,
            examples,
            config: config_json,
            timings,
        };
        report.write(&self.out)?;
        Ok(report)
    }

    fn model_name(&self) -> String {
        self.config.model.file_name().map_or_else(
            || self.config.model.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        )
    }

    fn score_candidates(
        &self,
        runner: &Runner<'_>,
        p: &PromptSets,
        cands: &Candidates,
        state: &RunState,
        progress: &dyn Progress,
    ) -> Result<(Vec<CandidateScore>, Option<LayerInputs>)> {
        let cfg = self.model.config();
        let last_layer = if self.config.score_pruned_layers {
            cfg.n_layer
        } else {
            first_pruned_layer(cfg.n_layer, self.config.selection.prune_layer_fraction)
        };
        let mut done: Vec<CandidateScore> = state.load_lines("scores.jsonl")?;
        let todo: Vec<(usize, usize)> = (0..last_layer)
            .flat_map(|l| (0..cands.positions.len()).map(move |pi| (l, pi)))
            .filter(|&(l, pi)| {
                !done
                    .iter()
                    .any(|c| c.layer == l && c.position == cands.positions[pi])
            })
            .collect();
        if todo.is_empty() {
            return Ok((sorted(done), None));
        }
        let harmful = runner.encode_all(&p.harmful_val)?;
        let harmless = runner.encode_all(&p.harmless_val)?;
        // Activation addition at layer l leaves layers 0..l as they were: keep the
        // unmodified inputs of every candidate layer once, and start each induce pass
        // at its layer (same logits, less work), unless that would take too much memory.
        let upto = todo.iter().map(|&(l, _)| l).max().unwrap_or(0);
        let inputs =
            if LayerInputs::estimate_bytes(&harmless, cfg.hidden, upto) <= MAX_LAYER_INPUT_BYTES {
                Some(runner.layer_inputs(&harmless, upto)?)
            } else {
                tracing::info!("layer inputs too large to keep; induce passes run every layer");
                None
            };
        let base = match &inputs {
            Some(i) => i.logits.clone(),
            None => runner.last_logits(&harmless, None, &crate::runner::NoProgress)?,
        };
        progress.start("candidate directions", todo.len() as u64);
        let set = ScoringSet {
            harmful: &harmful,
            harmless: &harmless,
            base: &base,
            inputs: inputs.as_ref(),
        };
        // One candidate at a time, each of its passes spread over the runner's lanes.
        // (Whole candidates side by side, one per lane, measured no faster: 198 s
        // against 194 s for the default run's candidate stage.)
        for (l, pi) in todo {
            let c = self.score_candidate(runner, &set, l, cands.positions[pi], cands.get(pi, l))?;
            state.append_line("scores.jsonl", &c)?;
            done.push(c);
            progress.advance(1);
        }
        progress.finish();
        Ok((sorted(done), inputs))
    }

    /// Bypass, induce and KL of one candidate direction `r` (layer `layer`, position
    /// `position`). A zero direction (layer 0 at a post-instruction position sees the
    /// same token in every prompt, so r is exactly zero there) is not a direction:
    /// scored NaN.
    fn score_candidate(
        &self,
        runner: &Runner<'_>,
        set: &ScoringSet<'_>,
        layer: usize,
        position: i64,
        r: &[f32],
    ) -> Result<CandidateScore> {
        let np = crate::runner::NoProgress;
        let norm: f64 = r
            .iter()
            .map(|&x| f64::from(x) * f64::from(x))
            .sum::<f64>()
            .sqrt();
        // Also catches a NaN norm.
        if norm.is_nan() || norm <= 1e-6 {
            return Ok(CandidateScore {
                layer,
                position,
                bypass: f64::NAN,
                induce: f64::NAN,
                kl: f64::NAN,
            });
        }
        let mut abl = Ablation::new(r, self.model.device())?;
        let bypass = mean(&runner.refusal_scores(set.harmful, Some(&mut abl), &np)?);
        let ablated = runner.last_logits(set.harmless, Some(&mut abl), &np)?;
        let kls: Vec<f64> = set
            .base
            .iter()
            .zip(&ablated)
            .map(|(a, b)| kl_divergence(a, b))
            .collect();
        let mut add = ActivationAddition::new(
            HookPoint::ResidPre(layer),
            r,
            1.0,
            Positions::All,
            self.model.device(),
        )?;
        let induce = mean(&match set.inputs {
            Some(i) => runner.refusal_scores_from(i, layer, Some(&mut add), &np)?,
            None => runner.refusal_scores(set.harmless, Some(&mut add), &np)?,
        });
        Ok(CandidateScore {
            layer,
            position,
            bypass,
            induce,
            kl: mean(&kls),
        })
    }

    fn cost(
        &self,
        runner: &Runner<'_>,
        dir: &Direction,
        coef: f64,
        p: &PromptSets,
        base: &EvalState,
        progress: &dyn Progress,
    ) -> Result<CostReport> {
        let prompts = runner.encode_all(&p.harmless_test)?;
        let np = crate::runner::NoProgress;
        progress.start("capability cost", 3 * prompts.len() as u64);
        let mut ce = Vec::new();
        for iv in [
            Intervention::None,
            Intervention::Ablate,
            Intervention::Add(coef),
        ] {
            let mut h = dir.hook(self.model, iv)?;
            ce.push(runner.cross_entropy(
                &prompts,
                &base.tokens,
                crate::runner::boxed(&mut h),
                progress,
            )?);
        }
        progress.finish();
        let b = runner.last_logits(&prompts, None, &np)?;
        let mut kl = Vec::new();
        for iv in [Intervention::Ablate, Intervention::Add(coef)] {
            let mut h = dir.hook(self.model, iv)?;
            let x = runner.last_logits(&prompts, crate::runner::boxed(&mut h), &np)?;
            let v: Vec<f64> = b.iter().zip(&x).map(|(a, c)| kl_divergence(a, c)).collect();
            kl.push(mean(&v));
        }
        Ok(CostReport {
            ce_baseline: ce[0],
            ce_ablation: ce[1],
            ce_addition: ce[2],
            kl_ablation: kl[0],
            kl_addition: kl[1],
        })
    }

    fn examples(&self, evals: &std::collections::BTreeMap<&str, EvalState>) -> Vec<Example> {
        let n = self.config.n_examples;
        let mut out = Vec::new();
        for (kind, base, other) in [
            ("harmful", "baseline_harmful", "ablation_harmful"),
            ("harmless", "baseline_harmless", "addition_harmless"),
        ] {
            for (b, o) in evals[base].items.iter().zip(&evals[other].items).take(n) {
                out.push(Example {
                    kind: kind.to_string(),
                    instruction: b.instruction.clone(),
                    completions: vec![
                        ("baseline".to_string(), b.completion.clone()),
                        (
                            other.split('_').next().unwrap_or(other).to_string(),
                            o.completion.clone(),
                        ),
                    ],
                });
            }
        }
        out
    }
}

fn sorted(mut v: Vec<CandidateScore>) -> Vec<CandidateScore> {
    v.sort_by_key(|c| (c.layer, c.position));
    v
}

/// The default data folder: `../shared/data/refusal` next to a checkout.
pub fn default_data_dir(checkout: &Path) -> PathBuf {
    checkout
        .join("../shared/data")
        .join(crate::data::DEFAULT_DATA_SUBDIR)
}
