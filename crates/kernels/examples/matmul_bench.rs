//! Micro-benchmark of `QMatrix::matmul` on model-shaped matrices:
//! `cargo run --release -p overseer-kernels --example matmul_bench [threads]`.
//! Prints decode (m = 1) bandwidth and prefill (m = 64, the model's prefill chunk, and
//! m = 256) throughput per format. `OVERSEER_KERNELS_AVX2=1` caps the SIMD level at AVX2.

use overseer_kernels::{GgmlDType, Level, QMatrix};
use std::time::Instant;

fn matrix(dtype: GgmlDType, rows: usize, cols: usize) -> QMatrix {
    let ts = dtype.type_size();
    let nb = rows * cols / dtype.block_size();
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut bytes = Vec::with_capacity(nb * ts);
    for _ in 0..nb {
        let start = bytes.len();
        for _ in 0..ts {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            bytes.push(state as u8);
        }
        // Keep the f16 scale fields finite (0x2000 ~ 0.0078).
        let at = if dtype == GgmlDType::Q6K {
            start + 208
        } else {
            start
        };
        bytes[at] = 0;
        bytes[at + 1] = 0x20;
        if matches!(
            dtype,
            GgmlDType::Q4_1 | GgmlDType::Q5_1 | GgmlDType::Q4K | GgmlDType::Q5K
        ) {
            bytes[at + 2] = 0;
            bytes[at + 3] = 0x20;
        }
    }
    QMatrix::from_ggml(dtype, rows, cols, bytes).expect("valid shape")
}

/// CPU time of this thread in seconds (robust against a loaded machine).
fn cpu_time() -> f64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .next()
                .and_then(|v| v.parse::<f64>().ok())
        })
        .map_or(0.0, |ns| ns * 1e-9)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    // The runtime switches the `overseer` binary reads (docs/CONFIGURATION.md).
    if std::env::var_os("OVERSEER_KERNELS_AVX2").is_some() {
        overseer_kernels::Level::set_cap(overseer_kernels::Level::Avx2);
    }
    if std::env::var_os("OVERSEER_AMX").is_some_and(|v| v == "0") {
        overseer_kernels::Bf16Matrix::set_enabled(false);
    }
    let threads: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .expect("pool");
    let level = std::env::args().nth(2).map_or(Level::detect(), |s| {
        if s == "scalar" {
            Level::Scalar
        } else {
            Level::detect()
        }
    });
    let cases = [
        ("qwen gate/up Q5_0", GgmlDType::Q5_0, 4864, 896),
        ("qwen down Q6_K", GgmlDType::Q6K, 896, 4864),
        ("qwen down Q4_K", GgmlDType::Q4K, 896, 4864),
        ("qwen q/o Q5_0", GgmlDType::Q5_0, 896, 896),
        ("qwen lm_head Q8_0", GgmlDType::Q8_0, 151936, 896),
        ("smol ffn Q4_1", GgmlDType::Q4_1, 1536, 576),
        ("smol attn Q4_1", GgmlDType::Q4_1, 576, 576),
        ("smol lm_head Q8_0", GgmlDType::Q8_0, 49152, 576),
        ("Q4_0 4864x896", GgmlDType::Q4_0, 4864, 896),
        ("Q5_1 4864x896", GgmlDType::Q5_1, 4864, 896),
        ("Q5_K 896x4864", GgmlDType::Q5K, 896, 4864),
    ];
    println!("level {level:?}, {threads} threads");
    for (name, dtype, n, k) in cases {
        let w = matrix(dtype, n, k);
        let bytes = w.bytes().len() as f64;
        for m in [1usize, 64, 256] {
            if m > 1 && n > 40_000 {
                continue;
            }
            let x: Vec<f32> = (0..m * k)
                .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
                .collect();
            let mut y = vec![0f32; m * n];
            let (reps, inner) = if m == 1 { (7, 40) } else { (3, 4096 / m) };
            let mut times = Vec::new();
            w.matmul_with(level, &x, &mut y).expect("shapes fit");
            for _ in 0..reps {
                let (t, c) = (Instant::now(), cpu_time());
                for _ in 0..inner {
                    w.matmul_with(level, &x, &mut y).expect("shapes fit");
                }
                // One thread runs inline on this thread: its CPU time excludes time
                // stolen by other processes (schedstat is tick-granular, so only for
                // long runs).
                let dt = if threads == 1 && m > 1 {
                    cpu_time() - c
                } else {
                    t.elapsed().as_secs_f64()
                };
                times.push(dt / inner as f64);
            }
            // Decode: the fastest rep (least disturbed by other processes).
            let t = if m == 1 {
                times.iter().copied().fold(f64::INFINITY, f64::min)
            } else {
                median(times)
            };
            if m == 1 {
                println!(
                    "{name:22} m=1   {:8.1} us  {:6.1} GB/s",
                    t * 1e6,
                    bytes / t / 1e9
                );
            } else {
                println!(
                    "{name:22} m={m} {:8.2} ms  {:6.1} GMAC/s",
                    t * 1e3,
                    (m * n * k) as f64 / t / 1e9
                );
            }
        }
    }
}
