//! Writes the generated seed files: tiny but complete GGUF models (a llama with F32
//! weights, a qwen2 with Q8_0 weights and attention biases), each with a byte-level BPE
//! tokenizer and a ChatML template, and a one-page PDF with a text layer.
//!
//! `cargo run -p overseer-fuzz --example seeds` (the other seeds are hand-written).

#![allow(clippy::unwrap_used)]

use std::path::Path;

use overseer_lm::candle_core::quantized::gguf_file::{self, Value};
use overseer_lm::candle_core::quantized::{GgmlDType, QTensor};
use overseer_lm::candle_core::{DType, Device, Tensor};

/// GPT-2's byte alphabet: the character each byte is stored as.
fn byte_char(b: u8) -> char {
    let printable = |b: u8| (b'!'..=b'~').contains(&b) || (0xa1..=0xac).contains(&b) || b >= 0xae;
    if printable(b) {
        char::from(b)
    } else {
        let n = (0..b).filter(|&x| !printable(x)).count() as u32;
        char::from_u32(0x100 + n).unwrap()
    }
}

fn tokenizer_meta() -> (Vec<(String, Value)>, usize) {
    let mut tokens: Vec<String> = (0..=255u8).map(|b| byte_char(b).to_string()).collect();
    let mut types = vec![1i32; 256];
    let sp = byte_char(b' ');
    let merges = [
        ("t", "h"),
        ("th", "e"),
        (&*sp.to_string(), "the"),
        ("i", "n"),
        (&*sp.to_string(), "a"),
        ("e", "r"),
    ];
    let merge_texts: Vec<String> = merges.iter().map(|(a, b)| format!("{a} {b}")).collect();
    for (a, b) in merges {
        tokens.push(format!("{a}{b}"));
        types.push(1);
    }
    for c in ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] {
        tokens.push(c.to_string());
        types.push(3);
    }
    let n = tokens.len();
    let strs = |v: Vec<String>| Value::Array(v.into_iter().map(Value::String).collect());
    let meta = vec![
        ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
        ("tokenizer.ggml.pre".into(), Value::String("smollm".into())),
        ("tokenizer.ggml.tokens".into(), strs(tokens)),
        (
            "tokenizer.ggml.token_type".into(),
            Value::Array(types.into_iter().map(Value::I32).collect()),
        ),
        ("tokenizer.ggml.merges".into(), strs(merge_texts)),
        (
            "tokenizer.ggml.bos_token_id".into(),
            Value::U32(n as u32 - 2),
        ),
        (
            "tokenizer.ggml.eos_token_id".into(),
            Value::U32(n as u32 - 1),
        ),
        ("tokenizer.ggml.add_bos_token".into(), Value::Bool(false)),
        (
            "tokenizer.chat_template".into(),
            Value::String(overseer_lm::CHATML_TEMPLATE.into()),
        ),
    ];
    (meta, n)
}

/// A model with one layer; `hidden` wide, `heads` heads of which `kv` key/value heads.
fn model(path: &Path, arch: &str, hidden: usize, heads: usize, kv: usize, dtype: GgmlDType) {
    let (mut meta, vocab) = tokenizer_meta();
    let ffn = hidden * 2;
    let hd = hidden / heads;
    for (k, v) in [
        ("block_count", 1u32),
        ("embedding_length", hidden as u32),
        ("feed_forward_length", ffn as u32),
        ("attention.head_count", heads as u32),
        ("attention.head_count_kv", kv as u32),
        ("context_length", 64),
    ] {
        meta.push((format!("{arch}.{k}"), Value::U32(v)));
    }
    meta.push((
        format!("{arch}.attention.layer_norm_rms_epsilon"),
        Value::F32(1e-5),
    ));
    meta.push((format!("{arch}.rope.freq_base"), Value::F32(10_000.0)));
    meta.push(("general.architecture".into(), Value::String(arch.into())));
    meta.push(("general.name".into(), Value::String("fuzz seed".into())));
    meta.push(("general.alignment".into(), Value::U32(32)));
    let mut shapes: Vec<(String, Vec<usize>)> = vec![
        ("token_embd.weight".into(), vec![vocab, hidden]),
        ("output_norm.weight".into(), vec![hidden]),
        ("blk.0.attn_norm.weight".into(), vec![hidden]),
        ("blk.0.attn_q.weight".into(), vec![hidden, hidden]),
        ("blk.0.attn_k.weight".into(), vec![kv * hd, hidden]),
        ("blk.0.attn_v.weight".into(), vec![kv * hd, hidden]),
        ("blk.0.attn_output.weight".into(), vec![hidden, hidden]),
        ("blk.0.ffn_norm.weight".into(), vec![hidden]),
        ("blk.0.ffn_gate.weight".into(), vec![ffn, hidden]),
        ("blk.0.ffn_up.weight".into(), vec![ffn, hidden]),
        ("blk.0.ffn_down.weight".into(), vec![hidden, ffn]),
    ];
    if arch == "qwen2" {
        shapes.push(("blk.0.attn_q.bias".into(), vec![hidden]));
        shapes.push(("blk.0.attn_k.bias".into(), vec![kv * hd]));
        shapes.push(("blk.0.attn_v.bias".into(), vec![kv * hd]));
    }
    let dev = Device::Cpu;
    let tensors: Vec<(String, QTensor)> = shapes
        .into_iter()
        .enumerate()
        .map(|(i, (name, shape))| {
            let n: usize = shape.iter().product();
            let vals: Vec<f32> = (0..n)
                .map(|j| ((i * 31 + j * 7) % 17) as f32 / 17.0 - 0.5)
                .collect();
            let t = Tensor::from_vec(vals, shape.clone(), &dev)
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap();
            let dt = if shape.len() == 1 {
                GgmlDType::F32
            } else {
                dtype
            };
            (name, QTensor::quantize(&t, dt).unwrap())
        })
        .collect();
    let mut f = std::fs::File::create(path).unwrap();
    let m: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let t: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    gguf_file::write(&mut f, &m, &t).unwrap();
}

/// A one-page PDF whose page shows `text` in Helvetica.
fn pdf(text: &str) -> Vec<u8> {
    let content = format!("BT /F1 12 Tf 72 720 Td ({text}) Tj ET");
    let objects = [
        "<< /Type /Catalog /Pages 2 0 R >>".to_string(),
        "<< /Type /Pages /Kids [3 0 R] /Count 1 >>".to_string(),
        "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R /Resources << /Font << /F1 5 0 R >> >> >>".to_string(),
        format!("<< /Length {} >>\nstream\n{content}\nendstream", content.len()),
        "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>".to_string(),
    ];
    let mut out = b"%PDF-1.4\n".to_vec();
    let mut offsets = Vec::new();
    for (i, o) in objects.iter().enumerate() {
        offsets.push(out.len());
        out.extend(format!("{} 0 obj\n{o}\nendobj\n", i + 1).as_bytes());
    }
    let xref = out.len();
    out.extend(format!("xref\n0 {}\n0000000000 65535 f \n", objects.len() + 1).as_bytes());
    for o in offsets {
        out.extend(format!("{o:010} 00000 n \n").as_bytes());
    }
    out.extend(
        format!(
            "trailer\n<< /Size {} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n",
            objects.len() + 1
        )
        .as_bytes(),
    );
    out
}

fn main() {
    let seeds = Path::new(overseer_fuzz::SEEDS_DIR);
    let gguf = seeds.join("gguf");
    std::fs::create_dir_all(&gguf).unwrap();
    model(
        &gguf.join("llama-f32.gguf"),
        "llama",
        8,
        2,
        1,
        GgmlDType::F32,
    );
    model(
        &gguf.join("qwen2-q8_0.gguf"),
        "qwen2",
        32,
        4,
        2,
        GgmlDType::Q8_0,
    );
    let ingest = seeds.join("ingest");
    std::fs::create_dir_all(&ingest).unwrap();
    // Selector byte 3: the PDF reader.
    let mut p = vec![3u8];
    p.extend(pdf(
        "Gradient hacking is when a model shapes its own training signal.",
    ));
    std::fs::write(ingest.join("pdf"), p).unwrap();
}
