//! The `overseer` binary: argument parsing, settings and one module per command.
//! All user-facing errors pass through `anyhow` here and end as one line on stderr
//! with a non-zero exit code.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cmd;
mod settings;

/// overseer: a local-first research workbench for AI safety.
#[derive(Parser)]
#[command(name = "overseer", version, about, propagate_version = true)]
struct Cli {
    #[command(flatten)]
    global: settings::Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate a completion for one prompt with a local GGUF model.
    Generate(cmd::generate::Args),
    /// Talk to a local GGUF model (interactive, streaming, multi-turn).
    Chat(cmd::chat::Args),
    /// Inspect model files.
    #[command(subcommand)]
    Model(cmd::model::Command),
    /// Benchmarks: model prefill/decode speed (default) or embedding throughput.
    Bench(cmd::bench::Args),
    /// Ingest documents (ARD JSONL, markdown, HTML, PDF, text) into the index.
    Ingest(cmd::ingest::Args),
    /// Search the literature index.
    Search(cmd::search::Args),
    /// Remove documents from the literature index by id.
    Remove(cmd::remove::Args),
    /// Ask a question answered from the literature, with citations.
    Ask(cmd::ask::Args),
    /// A newsletter of new work, grouped by the research agenda's 18 challenges.
    Digest(Box<cmd::digest::Args>),
    /// Evaluations: retrieval quality, answer grounding and digest classification.
    #[command(subcommand)]
    Eval(cmd::eval::Command),
    /// The refusal-direction lab.
    #[command(subcommand)]
    Refusal(cmd::refusal::Command),
    /// Serve the web app and HTTP API.
    Serve(cmd::serve::Args),
}

fn main() -> ExitCode {
    // candle asks for its thread count on every CPU matmul, and without RAYON_NUM_THREADS
    // that means parsing /proc/cpuinfo each time: about 60 times per decoded token, ~6% of
    // decode time in `perf`. Set once here, it is an environment lookup. The value is
    // what rayon's global pool would use anyway (each model runs in its own pool of
    // `--threads`).
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        // SAFETY: the first statement of `main`, before any other thread exists.
        unsafe { std::env::set_var("RAYON_NUM_THREADS", n.to_string()) };
    }
    settings::apply_runtime_switches();
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Serve(_)) {
        // SAFETY: no other thread exists yet.
        unsafe { sigpipe::default() };
    }
    if matches!(
        cli.command,
        Command::Generate(_) | Command::Chat(_) | Command::Bench(_)
    ) {
        alloc::one_arena();
    }
    if let Command::Refusal(c) = &cli.command {
        alloc::keep_large_buffers();
        // SAFETY: no other thread exists yet (logging is not set up, nothing loaded).
        unsafe { cmd::refusal::prepare(&cli.global, c) };
    }
    settings::init_logging(&cli.global);
    let result = match cli.command {
        Command::Generate(a) => cmd::generate::run(&cli.global, a),
        Command::Chat(a) => cmd::chat::run(&cli.global, a),
        Command::Model(c) => cmd::model::run(&cli.global, c),
        Command::Bench(a) => cmd::bench::run(&cli.global, a),
        Command::Ingest(a) => cmd::ingest::run(&cli.global, a),
        Command::Search(a) => cmd::search::run(&cli.global, a),
        Command::Remove(a) => cmd::remove::run(&cli.global, a),
        Command::Ask(a) => cmd::ask::run(&cli.global, a),
        Command::Digest(a) => cmd::digest::run(&cli.global, *a),
        Command::Eval(c) => cmd::eval::run(&cli.global, c),
        Command::Refusal(c) => cmd::refusal::run(&cli.global, c),
        Command::Serve(a) => cmd::serve::run(&cli.global, a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the error and its causes.
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Output piped into a reader that quits early (`overseer model info --json | head`):
/// Rust ignores SIGPIPE, so the next write to stdout fails and `println!` panics.
/// The commands restore the default action and end quietly, as other command-line
/// tools do. The server keeps SIGPIPE ignored (a client closing its connection must
/// not end it).
mod sigpipe {
    #[cfg(unix)]
    unsafe extern "C" {
        fn signal(signum: std::ffi::c_int, handler: usize) -> usize;
    }

    /// Restore SIGPIPE's default action.
    ///
    /// # Safety
    /// Call before other threads exist (it changes the process's signal disposition).
    pub(crate) unsafe fn default() {
        #[cfg(unix)]
        {
            const SIGPIPE: std::ffi::c_int = 13;
            const SIG_DFL: usize = 0;
            // SAFETY: the caller guarantees no other thread runs; SIG_DFL is valid.
            unsafe { signal(SIGPIPE, SIG_DFL) };
        }
    }
}

/// glibc allocator settings for the model commands.
///
/// Peak resident memory of a model run is the mapped GGUF file plus a little: the KV
/// cache, activations, and what the heap keeps. glibc gives every thread that allocates
/// its own arena (the forward pass runs on the model's worker threads, loading on the
/// main thread), and memory freed in one arena is never reused by another or returned
/// to the OS while the arena's top is in use: the tokenizer and GGUF metadata freed
/// after loading stayed resident beside the arenas the forward pass grew. One arena
/// lets the forward pass reuse that memory (measured: several MB less peak RSS on
/// SmolLM2, no change in speed: the forward pass makes few, large allocations).
/// The libc crate is not a dependency of this binary for two calls, so they are
/// declared here.
pub(crate) mod alloc {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    unsafe extern "C" {
        fn mallopt(param: std::ffi::c_int, value: std::ffi::c_int) -> std::ffi::c_int;
        fn malloc_trim(pad: usize) -> std::ffi::c_int;
    }

    /// glibc's `M_ARENA_MAX`.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    const M_ARENA_MAX: std::ffi::c_int = -8;

    /// Make every thread share the main arena (unless `MALLOC_ARENA_MAX` is set).
    pub fn one_arena() {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
            // SAFETY: `mallopt` only changes allocator tunables; called before the
            // program starts any thread that allocates.
            unsafe { mallopt(M_ARENA_MAX, 1) };
        }
    }

    /// glibc's `M_TRIM_THRESHOLD` and `M_MMAP_THRESHOLD`.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    const M_TRIM_THRESHOLD: std::ffi::c_int = -1;
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    const M_MMAP_THRESHOLD: std::ffi::c_int = -3;

    /// Keep freed buffers of up to 256 MiB in the heap for reuse (the lab's batched
    /// passes allocate and free megabytes per matmul). By default glibc maps such
    /// buffers afresh or trims them back to the OS, and the kernel zeroes every page on
    /// the next touch: 15% of a prompt pass's samples were `clear_page_erms`, and this
    /// setting took that pass from 1.50 to 1.29 s (Qwen2.5-0.5B, 32 prompts, AMX). The
    /// cost is a resident high-water mark: memory freed stays with the process.
    pub fn keep_large_buffers() {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: `mallopt` only changes allocator tunables; called before the program
        // starts any thread that allocates.
        unsafe {
            mallopt(M_MMAP_THRESHOLD, 256 << 20);
            mallopt(M_TRIM_THRESHOLD, 1 << 30);
        }
    }

    /// Return freed heap pages to the OS (e.g. after loading a model, which parses and
    /// then drops megabytes of metadata).
    pub fn trim() {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: `malloc_trim` is thread-safe and only releases free memory.
        unsafe {
            malloc_trim(0)
        };
    }
}
