//! A tiny deterministic mutator for the stable smoke test: xorshift64* randomness,
//! bit flips, byte inserts and deletes, interesting integers, splices of two inputs.
//! libFuzzer does this much better; this only has to find shallow regressions quickly
//! and the same way on every run.

/// xorshift64* generator.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }
}

const INTERESTING: &[u64] = &[
    0,
    1,
    0x7f,
    0x80,
    0xff,
    0x7fff,
    0xffff,
    0x7fff_ffff,
    0xffff_ffff,
    0x1_0000_0000,
    0x7fff_ffff_ffff_ffff,
    u64::MAX,
];

/// Bytes that mean something to one of the parsers.
const TOKENS: &[&[u8]] = &[
    b"<|im_start|>",
    b"<|im_end|>",
    b"<|endoftext|>",
    b"\n# ",
    b"<html>",
    b"</div>",
    b"<script>",
    b"{\"text\":\"",
    b"\"}",
    b"\xff\xfe",
    b"\xe2\x80\x8b",
    b"%PDF-1.4",
    b"stream",
    b"&k=",
    b"\\u0000",
];

/// One mutation of `input`, in place; `other` is spliced in sometimes.
pub fn mutate(rng: &mut Rng, input: &mut Vec<u8>, other: &[u8]) {
    let n = input.len();
    match rng.below(8) {
        0 if n > 0 => {
            let i = rng.below(n);
            input[i] ^= 1 << rng.below(8);
        }
        1 if n > 0 => {
            let i = rng.below(n);
            input[i] = rng.next_u64() as u8;
        }
        2 => {
            let i = rng.below(n + 1);
            let k = 1 + rng.below(8);
            for _ in 0..k {
                input.insert(i, rng.next_u64() as u8);
            }
        }
        3 if n > 0 => {
            let i = rng.below(n);
            let k = (1 + rng.below(16)).min(n - i);
            input.drain(i..i + k);
        }
        4 if n > 0 => {
            // An interesting integer of 1, 2, 4 or 8 bytes, little-endian.
            let width = 1 << rng.below(4);
            let v = INTERESTING[rng.below(INTERESTING.len())].to_le_bytes();
            let i = rng.below(n);
            for (j, b) in v.iter().take(width).enumerate() {
                if let Some(x) = input.get_mut(i + j) {
                    *x = *b;
                }
            }
        }
        5 if !other.is_empty() => {
            // Splice: a prefix of this input, then a suffix of the other.
            let a = rng.below(n + 1);
            let b = rng.below(other.len());
            input.truncate(a);
            input.extend_from_slice(&other[b..]);
        }
        6 if n > 0 => {
            // Duplicate a block (repetition stresses parsers' loops).
            let i = rng.below(n);
            let k = (1 + rng.below(64)).min(n - i);
            let block = input[i..i + k].to_vec();
            let at = rng.below(n + 1);
            input.splice(at..at, block);
        }
        _ => {
            let t = TOKENS[rng.below(TOKENS.len())];
            let at = rng.below(n + 1);
            input.splice(at..at, t.iter().copied());
        }
    }
}
