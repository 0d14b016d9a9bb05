//! `overseer refusal ...`: the refusal-direction lab (find, test and remove a chat
//! model's refusal direction). The method lives in `overseer-lab`; this module parses
//! arguments, loads the model, draws progress bars and prints results.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use overseer_lab as lab;
use overseer_lm::{LoadOptions, Model};

use crate::settings::{DeviceChoice, Global, QWEN_FILE};

#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Run the whole refusal-direction pipeline (resumable) and write a report.
    Run(RunArgs),
    /// Generate greedily under an intervention and judge refusals.
    Eval(EvalArgs),
    /// Write a copy of the model with the direction projected out of its weights.
    Orthogonalize(OrthoArgs),
    /// Write the direction as a llama.cpp control vector GGUF.
    ExportControlVector(CvArgs),
}

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// GGUF chat model [default: the Qwen2.5-Coder-0.5B model in the models folder].
    #[arg(long)]
    model: Option<PathBuf>,
    /// Output directory (direction.safetensors, report.json, report.md, plots, state/).
    #[arg(long)]
    out: PathBuf,
    /// Train prompts per class (after filtering).
    #[arg(long, default_value_t = 128)]
    n_train: usize,
    /// Validation prompts per class (after filtering).
    #[arg(long, default_value_t = 32)]
    n_val: usize,
    /// Test prompts per class for the evaluation.
    #[arg(long, default_value_t = 64)]
    n_test: usize,
    /// Own harmful prompts (JSON/JSONL/text), split into train/val/test by seed.
    #[arg(long)]
    harmful: Option<PathBuf>,
    /// Own harmless prompts (JSON/JSONL/text), split into train/val/test by seed.
    #[arg(long)]
    harmless: Option<PathBuf>,
    /// Folder with harmful_{train,val,test}.json and harmless_*.json
    /// [default: ../shared/data/refusal].
    #[arg(long)]
    data: Option<PathBuf>,
    /// Prompts per forward batch.
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Prompts generated together in the evaluations (rows that finish leave the batch).
    #[arg(long, default_value_t = 64)]
    gen_batch: usize,
    /// Prompt batches run side by side, one thread each [default: one lane per worker
    /// thread on a CPU with at most 4 of them, else 1].
    #[arg(long, env = "OVERSEER_LANES")]
    lanes: Option<usize>,
    /// Feed every prompt whole instead of computing the chat template's shared prefix
    /// once per pass (same results; for measuring what the sharing saves).
    #[arg(long)]
    no_shared_prefix: bool,
    /// Tokens generated per completion in the evaluation (greedy).
    #[arg(long, default_value_t = 256)]
    max_new_tokens: usize,
    /// Random seed for sampling prompts.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Fraction of the last layers never selected.
    #[arg(long, default_value_t = 0.2)]
    prune_layers: f64,
    /// Maximum KL divergence under ablation for a selectable candidate.
    #[arg(long, default_value_t = 0.1)]
    kl_threshold: f64,
    /// The induce score must exceed this for a selectable candidate.
    #[arg(long, default_value_t = 0.0)]
    induce_threshold: f64,
    /// Fail instead of relaxing the filters when no candidate passes them.
    #[arg(long)]
    strict: bool,
    /// Do not filter train/val prompts by the unmodified model's refusal score.
    #[arg(long)]
    no_filter: bool,
    /// Only use the last post-instruction position.
    #[arg(long)]
    last_position_only: bool,
    /// Also score candidates in the pruned last layers (plots only).
    #[arg(long)]
    score_pruned_layers: bool,
    /// Words whose tokens form the refusal-token set (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "I,As,Sorry")]
    refusal_words: Vec<String>,
    /// Addition coefficients tried (ascending; the first with induce > threshold wins).
    #[arg(long, value_delimiter = ',', default_value = "1,1.5,2,3,4")]
    addition_coefs: Vec<f64>,
    /// System prompt (none by default).
    #[arg(long)]
    system: Option<String>,
    /// Remove earlier checkpoints in OUT and start over.
    #[arg(long)]
    restart: bool,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum InterventionArg {
    None,
    Ablate,
    Add,
    Subtract,
}

#[derive(clap::Args, Debug)]
pub struct EvalArgs {
    #[arg(long)]
    model: Option<PathBuf>,
    /// Run directory (or direction.safetensors).
    #[arg(long)]
    direction: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "none")]
    intervention: InterventionArg,
    /// Prompts: JSON list of {"instruction"}, JSONL, or one prompt per line.
    #[arg(long)]
    prompts: PathBuf,
    /// Use at most this many prompts.
    #[arg(long)]
    limit: Option<usize>,
    /// Coefficient for add/subtract.
    #[arg(long, default_value_t = 1.0)]
    coef: f64,
    #[arg(long, default_value_t = 256)]
    max_new_tokens: usize,
    /// Prompts per batch of the first-token pass.
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Prompts generated together (rows that finish leave the batch).
    #[arg(long, default_value_t = 64)]
    gen_batch: usize,
    /// Prompt batches run side by side, one thread each [default: one lane per worker
    /// thread on a CPU with at most 4 of them, else 1].
    #[arg(long, env = "OVERSEER_LANES")]
    lanes: Option<usize>,
    #[arg(long, value_delimiter = ',', default_value = "I,As,Sorry")]
    refusal_words: Vec<String>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args, Debug)]
pub struct OrthoArgs {
    #[arg(long)]
    model: Option<PathBuf>,
    #[arg(long)]
    direction: PathBuf,
    /// Output GGUF (e.g. M-abliterated.gguf).
    #[arg(long)]
    out: PathBuf,
    /// Store edited tensors as F16 instead of F32.
    #[arg(long)]
    f16: bool,
}

#[derive(clap::Args, Debug)]
pub struct CvArgs {
    #[arg(long)]
    direction: PathBuf,
    #[arg(long)]
    out: PathBuf,
    /// Multiplier on r (positive induces refusal, negative suppresses it).
    #[arg(long, default_value_t = 1.0, allow_hyphen_values = true)]
    coef: f32,
}

/// indicatif bars on stderr, one per stage.
struct Bars(Mutex<Option<ProgressBar>>);

impl lab::Progress for Bars {
    fn start(&self, stage: &str, total: u64) {
        let bar = ProgressBar::new(total);
        bar.set_style(
            ProgressStyle::with_template(
                "{msg:>22} [{bar:30}] {pos}/{len} {elapsed_precise} eta {eta}",
            )
            .expect("static template")
            .progress_chars("=> "),
        );
        bar.set_message(stage.to_string());
        if let Ok(mut b) = self.0.lock()
            && let Some(old) = b.replace(bar)
        {
            old.finish_and_clear();
        }
    }
    fn advance(&self, n: u64) {
        if let Ok(b) = self.0.lock()
            && let Some(b) = b.as_ref()
        {
            b.inc(n);
        }
    }
    fn finish(&self) {
        if let Ok(mut b) = self.0.lock()
            && let Some(b) = b.take()
        {
            b.finish();
        }
    }
}

/// Rows from which a matmul of the lab runs in f32 (see `LoadOptions::f32_gemm_rows`).
const LAB_F32_GEMM_ROWS: usize = 128;
/// Rows from which a matmul of the lab runs on AMX bf16 tiles where the CPU has them
/// (`LoadOptions::amx_rows`): at 4 rows AMX is already 1.2–3x the 8-bit kernels
/// (`amx_bench`), so batched decoding uses it too.
const LAB_AMX_ROWS: usize = 4;

fn load_model(g: &Global, model: Option<&Path>) -> Result<(PathBuf, Model)> {
    let path = g.model_path(model, QWEN_FILE)?;
    // The lab's batched prompt passes (hundreds of token rows per call) run on AMX
    // where the CPU has it, else as f32 GEMMs; decode steps of fewer than 4 rows (and,
    // without AMX, every call under 128 rows) keep the 8-bit kernels.
    // Attention reads the f16 KV cache in place (18% faster generation of the default
    // 64 x 256-token evaluation, 48.6 -> 39.8 s); the lab's numerics are already off
    // llama.cpp's (bf16 or f32 matmuls), so the llama.cpp agreement that keeps chat on
    // candle's attention does not apply.
    let opts = LoadOptions {
        f32_gemm_rows: Some(LAB_F32_GEMM_ROWS),
        amx_rows: Some(LAB_AMX_ROWS),
        kernel_attention: true,
        ..g.load_options()?
    };
    let m = Model::load(&path, &opts).with_context(|| format!("cannot load {}", path.display()))?;
    Ok((path, m))
}

/// Most worker threads for which refusal commands run one lane per thread by default.
/// Measured on 2 cores only (docs/BENCHMARKS.md, "Refusal lab"); with many cores one
/// lane per core would also run candle's element-wise ops on one thread per pass.
const MAX_AUTO_LANES: usize = 4;

/// Side-by-side batches (`overseer_lab` lanes) for a refusal command: `--lanes`, else
/// one per worker thread on a CPU with at most [`MAX_AUTO_LANES`] threads, else 1. A GPU
/// runs one pass at a time.
fn lanes(g: &Global, asked: Option<usize>) -> usize {
    if !matches!(g.device, None | Some(DeviceChoice::Cpu)) {
        return 1;
    }
    match asked {
        Some(n) => n.max(1),
        None if g.threads() <= MAX_AUTO_LANES => g.threads(),
        None => 1,
    }
}

/// Settings that must be made before any thread starts: with more than one lane,
/// candle's element-wise ops run on the calling lane's thread (`CANDLE_NUM_THREADS=1`,
/// unless the user set it). Its barrier pool serves one caller at a time, so lanes
/// sharing it would queue on its lock.
///
/// # Safety
/// Must be called while the process has a single thread (it sets an environment
/// variable).
pub unsafe fn prepare(g: &Global, c: &Command) {
    let asked = match c {
        Command::Run(a) => a.lanes,
        Command::Eval(a) => a.lanes,
        Command::Orthogonalize(_) | Command::ExportControlVector(_) => return,
    };
    if lanes(g, asked) > 1 && std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        // SAFETY: the caller guarantees no other thread exists.
        unsafe { std::env::set_var("CANDLE_NUM_THREADS", "1") };
    }
}

fn data_dir(explicit: Option<&Path>) -> PathBuf {
    if let Some(d) = explicit {
        return d.to_path_buf();
    }
    let local = PathBuf::from("../shared/data/refusal");
    if local.is_dir() {
        return local;
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/refusal")
}

pub fn run(g: &Global, c: Command) -> Result<()> {
    match c {
        Command::Run(a) => run_pipeline(g, a),
        Command::Eval(a) => eval(g, a),
        Command::Orthogonalize(a) => {
            let dir = lab::load_direction(&a.direction)?;
            let path = g.model_path(a.model.as_deref(), QWEN_FILE)?;
            let dtype = if a.f16 {
                lab::EditedDType::F16
            } else {
                lab::EditedDType::F32
            };
            let s = lab::orthogonalize(&path, &dir.vector, &a.out, dtype)?;
            eprintln!(
                "wrote {} ({} tensors edited{}, {} copied)",
                s.out.display(),
                s.edited.len(),
                if s.added_output {
                    ", output.weight added for the tied LM head"
                } else {
                    ""
                },
                s.copied
            );
            Ok(())
        }
        Command::ExportControlVector(a) => {
            let dir = lab::load_direction(&a.direction)?;
            let hint = dir
                .extra
                .get("architecture")
                .cloned()
                .unwrap_or_else(|| "llama".into());
            let opts = lab::ControlVectorOptions {
                coef: a.coef,
                model_hint: hint,
            };
            let name =
                lab::export_control_vector(&dir.vector, dir.layer, dir.n_layer, &opts, &a.out)?;
            eprintln!(
                "wrote {} (tensor {name}: coef {} x r at the input of layer {})",
                a.out.display(),
                a.coef,
                dir.layer
            );
            Ok(())
        }
    }
}

fn run_pipeline(g: &Global, a: RunArgs) -> Result<()> {
    if a.n_train == 0 || a.n_val == 0 || a.n_test == 0 {
        bail!("--n-train, --n-val and --n-test must be at least 1");
    }
    let (path, model) = load_model(g, a.model.as_deref())?;
    let mut cfg = lab::RunConfig::new(path, data_dir(a.data.as_deref()));
    cfg.harmful = a.harmful;
    cfg.harmless = a.harmless;
    cfg.n_train = a.n_train;
    cfg.n_val = a.n_val;
    cfg.n_test = a.n_test;
    cfg.seed = a.seed;
    cfg.batch = a.batch.max(1);
    cfg.gen_batch = a.gen_batch.max(1);
    cfg.share_prefix = !a.no_shared_prefix;
    cfg.lanes = lanes(g, a.lanes);
    cfg.max_new_tokens = a.max_new_tokens;
    cfg.selection = lab::SelectionConfig {
        prune_layer_fraction: a.prune_layers,
        kl_threshold: a.kl_threshold,
        induce_threshold: a.induce_threshold,
        strict: a.strict,
    };
    cfg.refusal_words = a.refusal_words;
    cfg.filter = !a.no_filter;
    cfg.last_position_only = a.last_position_only;
    cfg.score_pruned_layers = a.score_pruned_layers;
    cfg.addition_coefs = a.addition_coefs;
    cfg.system_prompt = a.system;
    let run = lab::RefusalRun {
        model: &model,
        config: cfg,
        out: a.out.clone(),
        restart: a.restart,
    };
    let report = run.run(&Bars(Mutex::new(None)))?;
    let pct = |v: Option<f64>| v.map_or("-".into(), |x| format!("{:.0}%", x * 100.0));
    eprintln!(
        "selected layer {} position {}{}; harmful refusal {} -> {} (ablation); harmless refusal {} -> {} (addition, coef {}); KL {:.3}",
        report.selected.layer,
        report.selected.position,
        if report.selected.relaxed.is_empty() {
            String::new()
        } else {
            format!(" (relaxed: {})", report.selected.relaxed.join(", "))
        },
        pct(report.baseline.harmful_refusal_rate),
        pct(report.ablation.harmful_refusal_rate),
        pct(report.baseline.harmless_refusal_rate),
        pct(report.addition.harmless_refusal_rate),
        report.addition.coef.unwrap_or(1.0),
        report.kl
    );
    println!("{}", a.out.join("report.md").display());
    Ok(())
}

fn eval(g: &Global, a: EvalArgs) -> Result<()> {
    let mut prompts = lab::load_prompts(&a.prompts)?;
    if let Some(n) = a.limit {
        prompts.truncate(n);
    }
    let iv = match a.intervention {
        InterventionArg::None => lab::Intervention::None,
        InterventionArg::Ablate => lab::Intervention::Ablate,
        InterventionArg::Add => lab::Intervention::Add(a.coef),
        InterventionArg::Subtract => lab::Intervention::Add(-a.coef),
    };
    let (_, model) = load_model(g, a.model.as_deref())?;
    let mut hook = match (iv, &a.direction) {
        (lab::Intervention::None, _) => None,
        (_, None) => bail!("--intervention {:?} needs --direction DIR", a.intervention),
        (iv, Some(d)) => lab::load_direction(d)?.hook(&model, iv)?,
    };
    let ids = lab::refusal_token_ids(model.tokenizer().tokens(), &a.refusal_words);
    if ids.is_empty() {
        bail!(
            "no refusal tokens for {:?} in this vocabulary",
            a.refusal_words
        );
    }
    let runner = lab::Runner {
        model: &model,
        batch: a.batch.max(1),
        gen_batch: a.gen_batch.max(1),
        refusal_ids: ids,
        system_prompt: None,
        share_prefix: true,
        lanes: lanes(g, a.lanes),
    };
    let items = lab::evaluate(
        &runner,
        &prompts,
        lab::boxed_hook(&mut hook),
        a.max_new_tokens,
        &Bars(Mutex::new(None)),
    )?;
    let (rate, score) = lab::summarize(&items);
    if a.json {
        let out = serde_json::json!({
            "refusal_rate": rate,
            "mean_refusal_score": score,
            "n": items.len(),
            "completions": items,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        for c in &items {
            println!(
                "[{}] {}\n{}\n",
                if c.refused { "refused" } else { "complied" },
                c.instruction,
                c.completion
            );
        }
        println!(
            "refusal rate {:.1}% (n={}), mean refusal score {score:.3}",
            rate * 100.0,
            items.len()
        );
    }
    Ok(())
}
