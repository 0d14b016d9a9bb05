//! AMX bf16 matmul against the 8-bit kernels on Qwen2.5-0.5B-shaped matrices:
//! `cargo run --release -p overseer-kernels --example amx_bench [threads]`.
//! Prints the median wall time of each (rows m, n × k) product and GMAC/s.

use overseer_kernels::{Bf16Matrix, GgmlDType, QMatrix};
use std::time::Instant;

fn q8(rows: usize, cols: usize) -> QMatrix {
    let dtype = GgmlDType::Q8_0;
    let (ts, nb) = (dtype.type_size(), rows * cols / dtype.block_size());
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
        bytes[start] = 0;
        bytes[start + 1] = 0x20;
    }
    QMatrix::from_ggml(dtype, rows, cols, bytes).expect("valid shape")
}

fn time(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut v: Vec<f64> = (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .collect();
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
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("thread pool");
    println!(
        "AMX available: {}; {threads} threads",
        Bf16Matrix::available()
    );
    println!(
        "{:>5} {:>6} {:>6} {:>12} {:>12} {:>8}",
        "m", "n", "k", "int8 GMAC/s", "amx GMAC/s", "ratio"
    );
    for (n, k) in [(4864, 896), (896, 4864), (896, 896), (128, 896)] {
        let w = q8(n, k);
        let b = pool.install(|| Bf16Matrix::from_qmatrix(&w)).expect("pack");
        for m in [1, 4, 16, 64, 320] {
            let x: Vec<f32> = (0..m * k)
                .map(|i| ((i % 97) as f32 - 48.0) * 0.01)
                .collect();
            let mut y = vec![0f32; m * n];
            let reps = (2e9 / (m * n * k) as f64).clamp(5.0, 200.0) as usize;
            let t8 = pool.install(|| time(reps, || w.matmul(&x, &mut y).expect("shapes")));
            let ta = if Bf16Matrix::available() {
                pool.install(|| time(reps, || b.matmul(&x, &mut y).expect("shapes")))
            } else {
                f64::NAN
            };
            let g = (m * n * k) as f64 / 1e9;
            println!(
                "{m:>5} {n:>6} {k:>6} {:>12.1} {:>12.1} {:>7.2}x",
                g / t8,
                g / ta,
                t8 / ta
            );
        }
    }
}
