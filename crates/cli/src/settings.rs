//! Settings shared by every command, and the one place where environment
//! variables and defaults are resolved. Documented in `docs/CONFIGURATION.md`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// File name of the fast default model (llama architecture), used by tests.
#[allow(dead_code)]
pub const SMOLLM2_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
/// File name of the better default model (qwen2 architecture).
pub const QWEN_FILE: &str = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf";
/// Folder name of the default embedding model.
pub const MINILM_DIR: &str = "all-minilm-l6-v2";

/// Options accepted by every command.
#[derive(clap::Args, Debug, Clone)]
pub struct Global {
    /// Data directory holding the index and lab runs [env: OVERSEER_DATA_DIR]
    /// [default: the user's data dir + /overseer].
    #[arg(long, global = true, env = "OVERSEER_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Folder with the fetched models [env: OVERSEER_MODELS_DIR] [default: ./models,
    /// else the models/ folder of the checkout the binary was built in].
    #[arg(long, global = true, env = "OVERSEER_MODELS_DIR")]
    pub models_dir: Option<PathBuf>,
    /// Worker threads for model and embedding work [env: OVERSEER_THREADS] [default: all cores].
    #[arg(long, global = true, env = "OVERSEER_THREADS")]
    pub threads: Option<usize>,
    /// Where the chat model runs: `cpu`, `cuda` or `cuda:N` (GPU N; needs a build with
    /// `--features cuda`, see scripts/build-cuda) [env: OVERSEER_DEVICE] [default: cpu].
    #[arg(long, global = true, env = "OVERSEER_DEVICE", value_parser = parse_device)]
    pub device: Option<DeviceChoice>,
    /// More log output on stderr (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

impl Global {
    /// The data directory, created if missing.
    pub fn data_dir(&self) -> Result<PathBuf> {
        let dir = match &self.data_dir {
            Some(d) => d.clone(),
            None => dirs::data_dir()
                .context("no user data directory on this system; pass --data-dir")?
                .join("overseer"),
        };
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create data directory {}", dir.display()))?;
        Ok(dir)
    }

    /// The models folder: `--models-dir`, else `./models`, else the checkout's `models/`.
    pub fn models_dir(&self) -> PathBuf {
        if let Some(d) = &self.models_dir {
            return d.clone();
        }
        let local = PathBuf::from("models");
        if local.is_dir() {
            return local;
        }
        let checkout = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models");
        if checkout.is_dir() {
            return checkout;
        }
        local
    }

    /// Resolve a model argument: an explicit path, else `OVERSEER_MODEL`, else the
    /// named default file in the models folder.
    pub fn model_path(&self, explicit: Option<&Path>, default_file: &str) -> Result<PathBuf> {
        let path = match explicit {
            Some(p) => p.to_path_buf(),
            None => match std::env::var_os("OVERSEER_MODEL") {
                Some(p) => PathBuf::from(p),
                None => self.models_dir().join(default_file),
            },
        };
        if !path.exists() {
            if explicit.is_none() {
                bail!(
                    "default model {} not found; run scripts/fetch-models or pass --model PATH",
                    path.display()
                );
            }
            bail!("model file {} does not exist", path.display());
        }
        Ok(path)
    }

    /// The embedding model folder.
    pub fn embedder_dir(&self) -> Result<PathBuf> {
        let dir = match std::env::var_os("OVERSEER_EMBEDDER") {
            Some(p) => PathBuf::from(p),
            None => self.models_dir().join(MINILM_DIR),
        };
        if !dir.join("model.safetensors").exists() {
            bail!(
                "embedding model not found in {}; run scripts/fetch-models",
                dir.display()
            );
        }
        Ok(dir)
    }

    /// Threads to use (at least 1).
    pub fn threads(&self) -> usize {
        self.threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
            .max(1)
    }

    /// How to load a chat model: `--device` (CPU by default) and `--threads`.
    ///
    /// Errors: `cuda` asked of a build without CUDA support, or a GPU that cannot be
    /// opened.
    pub fn load_options(&self) -> Result<overseer_lm::LoadOptions> {
        let threads = Some(self.threads());
        Ok(match self.device.unwrap_or(DeviceChoice::Cpu) {
            DeviceChoice::Cpu => overseer_lm::LoadOptions::cpu(threads),
            DeviceChoice::Cuda(n) => overseer_lm::LoadOptions {
                threads,
                // One line: candle appends a backtrace to driver errors when
                // RUST_BACKTRACE is set.
                ..overseer_lm::LoadOptions::cuda(n).map_err(|e| {
                    let msg = e.to_string();
                    anyhow::anyhow!(
                        "cannot use --device cuda:{n}: {}",
                        msg.lines().next().unwrap_or_default()
                    )
                })?
            },
        })
    }
}

/// A `--device` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceChoice {
    Cpu,
    /// CUDA GPU by ordinal.
    Cuda(usize),
}

/// Parse `cpu`, `cuda` (GPU 0) or `cuda:N`.
fn parse_device(s: &str) -> std::result::Result<DeviceChoice, String> {
    let s = s.trim().to_ascii_lowercase();
    match s.as_str() {
        "cpu" => Ok(DeviceChoice::Cpu),
        "cuda" | "gpu" => Ok(DeviceChoice::Cuda(0)),
        _ => match s.strip_prefix("cuda:") {
            Some(n) => n
                .parse()
                .map(DeviceChoice::Cuda)
                .map_err(|_| format!("bad GPU number in '{s}' (expected cuda:N)")),
            None => Err(format!(
                "unknown device '{s}' (expected cpu, cuda or cuda:N)"
            )),
        },
    }
}

/// Logs go to stderr; stdout is reserved for results.
/// Process-wide switches of the runtime, read from the environment once at start-up
/// (before any model or embedder work) and handed to the libraries, which read no
/// environment themselves. Documented in docs/CONFIGURATION.md.
pub fn apply_runtime_switches() {
    let set = |k: &str| std::env::var_os(k).is_some_and(|v| v != "0" && !v.is_empty());
    if std::env::var_os("OVERSEER_KERNELS_SCALAR").is_some() {
        overseer_kernels::Level::set_cap(overseer_kernels::Level::Scalar);
    } else if std::env::var_os("OVERSEER_KERNELS_AVX2").is_some() {
        overseer_kernels::Level::set_cap(overseer_kernels::Level::Avx2);
    }
    if std::env::var_os("OVERSEER_AMX").is_some_and(|v| v == "0") {
        overseer_kernels::Bf16Matrix::set_enabled(false);
    }
    overseer_lm::set_kernel_attention_default(set("OVERSEER_KERNEL_ATTENTION"));
    overseer_lm::set_cuda_fast_mmq(set("OVERSEER_CUDA_FAST_MMQ"));
}

pub fn init_logging(g: &Global) {
    let default = match g.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_values_parse() {
        assert_eq!(parse_device("cpu"), Ok(DeviceChoice::Cpu));
        assert_eq!(parse_device("CUDA"), Ok(DeviceChoice::Cuda(0)));
        assert_eq!(parse_device("cuda:3"), Ok(DeviceChoice::Cuda(3)));
        assert!(parse_device("cuda:x").is_err());
        assert!(parse_device("metal").is_err());
    }
}
