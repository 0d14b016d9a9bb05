//! Kernel tests: every format at every level this CPU supports against the scalar
//! dequantize + f32 dot reference, on random blocks and odd shapes.

use crate::quant::{self, Q8Block, Q8KBlock};
use crate::{GgmlDType, Level, QMatrix};
use half::f16;

/// xorshift64*: deterministic test data without a dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn f32(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }
    fn normal(&mut self) -> f32 {
        // Sum of uniforms: good enough, and gives occasional larger values.
        (0..4).map(|_| self.f32()).sum::<f32>() * 1.7 - 3.4
    }
}

/// `n` deterministic pseudo-random values, uniform in `[-scale/2, scale/2)` (xorshift);
/// the test data of the AMX and logit-reduction tests.
pub(crate) fn uniform(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * scale
        })
        .collect()
}

fn put_f16(b: &mut [u8], at: usize, v: f32) {
    b[at..at + 2].copy_from_slice(&f16::from_f32(v).to_le_bytes());
}

/// Random bytes for one block with valid, modest f16 scale fields.
fn random_block(dtype: GgmlDType, rng: &mut Rng) -> Vec<u8> {
    let ts = dtype.type_size();
    let mut b: Vec<u8> = (0..ts).map(|_| rng.next() as u8).collect();
    let mut scale = |b: &mut [u8], at: usize, lo: f32| put_f16(b, at, lo + rng.f32() * 0.02);
    match dtype {
        GgmlDType::F32 => b.copy_from_slice(&rng.normal().to_le_bytes()),
        GgmlDType::F16 => put_f16(&mut b, 0, rng.normal()),
        GgmlDType::Q4_0 | GgmlDType::Q5_0 | GgmlDType::Q8_0 => scale(&mut b, 0, 0.001),
        GgmlDType::Q4_1 | GgmlDType::Q5_1 => {
            scale(&mut b, 0, 0.001);
            scale(&mut b, 2, -0.02);
        }
        GgmlDType::Q4K | GgmlDType::Q5K => {
            scale(&mut b, 0, 0.0001);
            scale(&mut b, 2, 0.0001);
        }
        GgmlDType::Q6K => scale(&mut b, 208, 0.0001),
    }
    b
}

fn random_matrix(dtype: GgmlDType, rows: usize, cols: usize, rng: &mut Rng) -> QMatrix {
    let nb = rows * cols / dtype.block_size();
    let bytes: Vec<u8> = (0..nb).flat_map(|_| random_block(dtype, rng)).collect();
    QMatrix::from_ggml(dtype, rows, cols, bytes).expect("valid shape")
}

fn dequant(w: &QMatrix) -> Vec<f32> {
    let mut out = vec![0f32; w.rows() * w.cols()];
    for (i, o) in out.chunks_mut(w.cols()).enumerate() {
        w.dequantize_row(i, o).expect("row in range");
    }
    out
}

/// Activations as the kernels see them: quantized then decoded again.
fn requantized(dtype: GgmlDType, x: &[f32]) -> Vec<f32> {
    match dtype {
        GgmlDType::F32 | GgmlDType::F16 => x.to_vec(),
        d if d.is_k_quant() => {
            let mut q = vec![Q8KBlock::default(); x.len() / 256];
            quant::quantize_q8k(x, &mut q);
            q.iter()
                .flat_map(|b| b.qs.map(|v| v as f32 * b.d))
                .collect()
        }
        _ => {
            let mut q = vec![Q8Block::default(); x.len() / 32];
            quant::quantize_q8(
                x,
                &mut q,
                matches!(dtype, GgmlDType::Q4_1 | GgmlDType::Q5_1),
            );
            q.iter()
                .flat_map(|b| b.qs.map(|v| v as f32 * b.d))
                .collect()
        }
    }
}

fn check(dtype: GgmlDType, n: usize, k: usize, m: usize, seed: u64) {
    let mut rng = Rng(seed);
    let w = random_matrix(dtype, n, k, &mut rng);
    let x: Vec<f32> = (0..m * k).map(|_| rng.normal()).collect();
    let wd = dequant(&w);
    let xq: Vec<f32> = x.chunks(k).flat_map(|r| requantized(dtype, r)).collect();
    for level in Level::supported() {
        let mut y = vec![f32::NAN; m * n];
        w.matmul_with(level, &x, &mut y).expect("shapes fit");
        for r in 0..m {
            for c in 0..n {
                let wr = &wd[c * k..(c + 1) * k];
                let (xr, xqr) = (&x[r * k..(r + 1) * k], &xq[r * k..(r + 1) * k]);
                let exact: f64 = wr.iter().zip(xqr).map(|(a, b)| *a as f64 * *b as f64).sum();
                let mag: f64 = wr
                    .iter()
                    .zip(xqr)
                    .map(|(a, b)| (*a as f64 * *b as f64).abs())
                    .sum();
                let got = y[r * n + c] as f64;
                // Q4_1/Q5_1: the activation sum `s` is rounded to f16 as llama.cpp's Q8_1
                // does; the offset term `m * s` (|m| <= the block's max |w|) carries that
                // rounding (half an ulp: 2^-11 relative).
                let f16_sum: f64 = if matches!(dtype, GgmlDType::Q4_1 | GgmlDType::Q5_1) {
                    wr.chunks(32)
                        .zip(xqr.chunks(32))
                        .map(|(wb, xb)| {
                            let wmax = wb.iter().fold(0f64, |a, v| a.max(v.abs() as f64));
                            let sum: f64 = xb.iter().map(|v| *v as f64).sum();
                            wmax * sum.abs() * 2f64.powi(-11)
                        })
                        .sum()
                } else {
                    0.0
                };
                assert!(
                    (got - exact).abs() <= 2e-5 * mag + f16_sum + 1e-6,
                    "{dtype:?} {level:?} n={n} k={k} m={m} [{r},{c}]: {got} vs {exact} (mag {mag})"
                );
                // Against the unquantized activations: within the Q8 rounding bound.
                let full: f64 = wr.iter().zip(xr).map(|(a, b)| *a as f64 * *b as f64).sum();
                let bs = if dtype.is_k_quant() { 256 } else { 32 };
                let bound: f64 = (0..k / bs)
                    .map(|b| {
                        let s = b * bs..(b + 1) * bs;
                        let amax = xr[s.clone()].iter().fold(0f32, |a, v| a.max(v.abs())) as f64;
                        let wabs: f64 = wr[s].iter().map(|v| v.abs() as f64).sum();
                        wabs * amax / 127.0 * 0.51
                    })
                    .sum();
                let bound = if matches!(dtype, GgmlDType::F32 | GgmlDType::F16) {
                    0.0
                } else {
                    bound
                };
                assert!(
                    (got - full).abs() <= bound + 2e-5 * mag + 1e-4,
                    "{dtype:?} {level:?} [{r},{c}]: {got} vs f32 {full}, bound {bound}"
                );
            }
        }
    }
}

#[test]
fn every_format_every_level_matches_reference() {
    for (i, dtype) in GgmlDType::ALL.into_iter().enumerate() {
        let k = if dtype.is_k_quant() { 512 } else { 96 };
        // n not a multiple of any tile, m covering the 4-row groups and a remainder.
        for (j, &(n, m)) in [(37, 1), (5, 6), (70, 9)].iter().enumerate() {
            check(dtype, n, k, m, 1 + (i * 10 + j) as u64);
        }
    }
}

#[test]
fn larger_matrix_uses_threads_and_matches() {
    check(GgmlDType::Q5_0, 300, 896, 3, 99);
    check(GgmlDType::Q6K, 130, 1024, 5, 98);
}

#[test]
fn supported_levels_include_the_detected_one() {
    let s = Level::supported();
    assert!(s.contains(&Level::Scalar));
    assert!(s.contains(&Level::detect()));
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        assert!(
            s.contains(&Level::Avx2),
            "AVX2 CPU must test the AVX2 kernels"
        );
    }
}

#[test]
fn hand_built_blocks_decode_to_known_values() {
    // Q4_0: d = 0.5, byte 0x3A -> element 0 = (0xA - 8) * 0.5 = 1, element 16 = (3 - 8) * 0.5.
    let mut b = vec![0u8; 18];
    put_f16(&mut b, 0, 0.5);
    b[2] = 0x3A;
    let mut o = vec![0f32; 32];
    quant::dequantize_row(GgmlDType::Q4_0, &b, &mut o);
    assert_eq!((o[0], o[16], o[1]), (1.0, -2.5, -4.0));

    // Q5_0: high bit of element 0 and 17 set in qh.
    let mut b = vec![0u8; 22];
    put_f16(&mut b, 0, 1.0);
    b[2..6].copy_from_slice(&(1u32 | 1 << 17).to_le_bytes());
    b[6] = 0x21;
    b[7] = 0x40;
    quant::dequantize_row(GgmlDType::Q5_0, &b, &mut o);
    assert_eq!(
        (o[0], o[16], o[17], o[1]),
        (1.0, -14.0, 4.0 - 16.0 + 16.0, -16.0)
    );

    // Q4_1: x = d * q + m.
    let mut b = vec![0u8; 20];
    put_f16(&mut b, 0, 2.0);
    put_f16(&mut b, 2, -1.0);
    b[4] = 0xF3;
    quant::dequantize_row(GgmlDType::Q4_1, &b, &mut o);
    assert_eq!((o[0], o[16]), (5.0, 29.0));

    // Q6_K: element 0 = d * sc[0] * ((ql&15 | (qh&3)<<4) - 32).
    let mut b = vec![0u8; 210];
    put_f16(&mut b, 208, 0.25);
    b[0] = 0x05;
    b[128] = 0x02;
    b[192] = 4;
    let mut o = vec![0f32; 256];
    quant::dequantize_row(GgmlDType::Q6K, &b, &mut o);
    assert_eq!(o[0], 0.25 * 4.0 * ((5 | 2 << 4) - 32) as f32);

    // Q4_K: sub-block 0 scale 3, min 2 (6-bit), d 1, dmin 0.5.
    let mut b = vec![0u8; 144];
    put_f16(&mut b, 0, 1.0);
    put_f16(&mut b, 2, 0.5);
    b[4] = 3;
    b[8] = 2;
    b[16] = 0x07;
    quant::dequantize_row(GgmlDType::Q4K, &b, &mut o);
    assert_eq!(o[0], 3.0 * 7.0 - 0.5 * 2.0);
}

#[test]
fn bad_shapes_are_errors() {
    assert!(QMatrix::from_ggml(GgmlDType::Q4_0, 2, 33, vec![0u8; 36]).is_err());
    assert!(QMatrix::from_ggml(GgmlDType::Q4_0, 2, 32, vec![0u8; 35]).is_err());
    let w = QMatrix::from_ggml(GgmlDType::Q4_0, 2, 32, vec![0u8; 36]).expect("valid");
    let mut y = vec![0f32; 3];
    assert!(w.matmul(&[0.0; 32], &mut y).is_err());
    assert!(w.dequantize_row(2, &mut [0.0; 32]).is_err());
    assert!(GgmlDType::from_ggml_id(99).is_err());
    assert_eq!(GgmlDType::from_ggml_id(6).expect("Q5_0"), GgmlDType::Q5_0);
}

#[test]
fn quantized_activations_round_trip_closely() {
    let mut rng = Rng(7);
    let x: Vec<f32> = (0..512).map(|_| rng.normal()).collect();
    for dtype in [GgmlDType::Q8_0, GgmlDType::Q6K] {
        let xq = requantized(dtype, &x);
        let amax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
        for (a, b) in x.iter().zip(&xq) {
            assert!(
                (a - b).abs() <= amax / 127.0 * 0.51 + 1e-3 * amax,
                "{a} vs {b}"
            );
        }
    }
}

#[test]
fn tiled_prefill_kernels_match_reference_on_many_chunks() {
    // m >= 4 takes the register-tiled path at AVX2; n large enough for several
    // chunks on several threads, odd so the last row pair is a single row.
    for (i, dtype) in [
        GgmlDType::Q4_0,
        GgmlDType::Q4_1,
        GgmlDType::Q5_0,
        GgmlDType::Q5_1,
        GgmlDType::Q8_0,
    ]
    .into_iter()
    .enumerate()
    {
        check(dtype, 203, 256, 11, 40 + i as u64);
    }
}

#[test]
fn many_row_kernels_match_reference_every_format() {
    // m >= 16 takes the VNNI path where the CPU has it (groups of sixteen activation
    // rows): a full group, a partial last group, several groups; n odd so every weight
    // row tile width (4, 2, 1) runs, and large enough for several chunks and threads.
    for (i, dtype) in GgmlDType::ALL.into_iter().enumerate() {
        let k = if dtype.is_k_quant() { 512 } else { 160 };
        for (j, &(n, m)) in [(7, 16), (45, 37), (131, 70)].iter().enumerate() {
            check(dtype, n, k, m, 200 + (i * 10 + j) as u64);
        }
    }
    check(GgmlDType::Q5_0, 301, 896, 64, 250);
    check(GgmlDType::Q4K, 67, 1280, 33, 251);
    check(GgmlDType::Q6K, 67, 1280, 33, 252);
}

#[cfg(target_arch = "x86_64")]
#[test]
fn simd_activation_quantizers_equal_scalar() {
    if !Level::supported().contains(&Level::Avx2) {
        return;
    }
    let mut rng = Rng(11);
    let mut x: Vec<f32> = (0..4096).map(|_| rng.normal()).collect();
    // Ties at .5 after scaling, an all-zero block, a negative extreme first.
    x[..32]
        .iter_mut()
        .enumerate()
        .for_each(|(i, v)| *v = (i as f32 - 15.5) / 2.0);
    x[256..288].fill(0.0);
    x[512..768].fill(0.0);
    x[600] = -3.0;
    x[601] = 3.0;
    for f16_sum in [false, true] {
        let mut a = vec![Q8Block::default(); x.len() / 32];
        let mut b = a.clone();
        quant::quantize_q8(&x, &mut a, f16_sum);
        // SAFETY: the CPU supports AVX2 (checked above).
        unsafe { crate::avx2::quantize_q8(&x, &mut b, f16_sum) };
        for (p, q) in a.iter().zip(&b) {
            assert_eq!(
                (p.qs, p.d.to_bits(), p.s.to_bits()),
                (q.qs, q.d.to_bits(), q.s.to_bits())
            );
        }
    }
    let mut a = vec![Q8KBlock::default(); x.len() / 256];
    let mut b = a.clone();
    quant::quantize_q8k(&x, &mut a);
    // SAFETY: as above.
    unsafe { crate::avx2::quantize_q8k(&x, &mut b) };
    for (p, q) in a.iter().zip(&b) {
        assert_eq!(
            (p.qs, p.bsums, p.d.to_bits()),
            (q.qs, q.bsums, q.d.to_bits())
        );
    }
}

#[test]
fn concurrent_matmuls_from_many_threads_agree() {
    // The kernel pool serves one job at a time; callers racing for it must still get
    // exact, identical answers (the loser runs inline).
    let mut rng = Rng(5);
    let w = random_matrix(GgmlDType::Q4_1, 257, 512, &mut rng);
    let x: Vec<f32> = (0..3 * 512).map(|_| rng.normal()).collect();
    let mut want = vec![0f32; 3 * 257];
    w.matmul(&x, &mut want).expect("shapes fit");
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(4)
        .build()
        .expect("a rayon pool");
    pool.install(|| {
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..50 {
                        let mut y = vec![0f32; 3 * 257];
                        w.matmul(&x, &mut y).expect("shapes fit");
                        assert_eq!(y, want);
                    }
                });
            }
        });
    });
}
