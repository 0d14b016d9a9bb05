//! GGUF outputs of the lab: weight orthogonalization (an "abliterated" model any GGUF
//! runtime loads) and llama.cpp control vectors.
//!
//! Orthogonalization makes plain inference equal directional ablation: every weight
//! that writes into the residual stream has the unit direction `d` projected out of
//! its output (hidden) dimension — the token embedding (`E ← E − (E d) dᵀ`), each
//! layer's attention output and MLP down projection (`W ← W − d (dᵀ W)`, and their
//! biases if present). The edited tensors are dequantized and written as F32 (default,
//! keeps the edit exact) or F16; every other tensor is copied byte for byte with its
//! original quantization, and all metadata is kept. When the model ties its LM head to
//! the embedding (no `output.weight`), the ORIGINAL embedding is also written as
//! `output.weight`, so the head is unchanged and only the residual stream is edited.
//!
//! Control vectors follow llama.cpp's loader (`common_control_vector_load_one` and
//! `llama_adapter_cvec`): 1-D F32 tensors `direction.<k>`, `k ≥ 1`, where
//! `direction.k` is added to the output of block `k` (0-based), i.e. to the input of
//! block `k + 1`. Our `ResidPre(l)` is therefore written as `direction.<l − 1>`, and
//! directions at `ResidPre(0)` or `ResidPre(1)` cannot be expressed.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use overseer_lm::candle_core::quantized::{GgmlDType, QTensor, gguf_file};
use overseer_lm::candle_core::{Device, Tensor};

use crate::{Error, Result};

/// How edited tensors are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EditedDType {
    #[default]
    F32,
    F16,
}

/// What [`orthogonalize`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct OrthoSummary {
    pub out: PathBuf,
    /// Names of the tensors that were edited.
    pub edited: Vec<String>,
    /// Whether `output.weight` was added because the embedding was tied.
    pub added_output: bool,
    pub copied: usize,
}

fn gguf_err(path: &Path) -> impl Fn(String) -> Error + '_ {
    move |message| Error::Gguf {
        path: path.to_path_buf(),
        message,
    }
}

/// Whether a tensor writes into the residual stream and must be orthogonalized.
fn edit_kind(name: &str) -> Option<EditKind> {
    if name == "token_embd.weight" {
        return Some(EditKind::Embedding);
    }
    let rest = name.strip_prefix("blk.")?;
    let (layer, tail) = rest.split_once('.')?;
    layer.parse::<usize>().ok()?;
    match tail {
        "attn_output.weight" | "ffn_down.weight" => Some(EditKind::Output),
        "attn_output.bias" | "ffn_down.bias" => Some(EditKind::Bias),
        _ => None,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EditKind {
    /// (vocab, hidden): rows are token vectors.
    Embedding,
    /// (hidden, in): rows index the output dimension.
    Output,
    /// (hidden,)
    Bias,
}

/// Project the unit direction `d` (hidden) out of a weight's hidden dimension.
fn project_out(w: &Tensor, d: &Tensor, kind: EditKind) -> Result<Tensor> {
    let hidden = d.dim(0)?;
    Ok(match kind {
        EditKind::Embedding => {
            let dcol = d.reshape((hidden, 1))?;
            let coef = w.matmul(&dcol)?; // (vocab, 1)
            (w - coef.matmul(&dcol.t()?)?)?
        }
        EditKind::Output => {
            let drow = d.reshape((1, hidden))?;
            let coef = drow.matmul(w)?; // (1, in)
            (w - drow.t()?.matmul(&coef)?)?
        }
        EditKind::Bias => {
            let dot = (w * d)?.sum_all()?;
            (w - d.broadcast_mul(&dot)?)?
        }
    })
}

/// Write `model` with the unit `direction` orthogonalized out of its weights to `out`.
pub fn orthogonalize(
    model: &Path,
    direction: &[f32],
    out: &Path,
    dtype: EditedDType,
) -> Result<OrthoSummary> {
    rewrite(model, Some(direction), out, dtype)
}

/// The same rewrite as [`orthogonalize`] with no edit: the tensors `orthogonalize`
/// would edit are only dequantized to `dtype`. The control that separates the effect of
/// storing those tensors unquantized from the effect of the edit itself.
pub fn dequantized_copy(model: &Path, out: &Path, dtype: EditedDType) -> Result<OrthoSummary> {
    rewrite(model, None, out, dtype)
}

fn rewrite(
    model: &Path,
    direction: Option<&[f32]>,
    out: &Path,
    dtype: EditedDType,
) -> Result<OrthoSummary> {
    let err = gguf_err(model);
    let mut file = File::open(model).map_err(Error::io(model))?;
    let content = gguf_file::Content::read(&mut file).map_err(|e| err(e.to_string()))?;
    let hidden = gguf_hidden(&content).ok_or_else(|| err("no token_embd.weight".into()))?;
    let ones = vec![1.0f32; hidden];
    let edit = direction.is_some();
    let direction = direction.unwrap_or(&ones);
    let norm = direction
        .iter()
        .map(|&x| f64::from(x) * f64::from(x))
        .sum::<f64>()
        .sqrt();
    if !(norm > 0.0 && norm.is_finite()) {
        return Err(Error::InvalidArgument(
            "direction has zero or non-finite norm".into(),
        ));
    }
    let unit: Vec<f32> = direction
        .iter()
        .map(|&x| (f64::from(x) / norm) as f32)
        .collect();
    let d = Tensor::from_vec(unit.clone(), unit.len(), &Device::Cpu)?;

    let mut names: Vec<(&String, u64)> = content
        .tensor_infos
        .iter()
        .map(|(n, i)| (n, i.offset))
        .collect();
    names.sort_by_key(|(_, o)| *o);
    let tied = !content.tensor_infos.contains_key("output.weight");
    let target = match dtype {
        EditedDType::F32 => GgmlDType::F32,
        EditedDType::F16 => GgmlDType::F16,
    };
    let mut tensors: Vec<(String, QTensor)> = Vec::with_capacity(names.len() + 1);
    let mut edited = Vec::new();
    let mut added_output = false;
    for (name, _) in names {
        let q = content
            .tensor(&mut file, name, &Device::Cpu)
            .map_err(|e| err(format!("tensor {name}: {e}")))?;
        let Some(kind) = edit_kind(name) else {
            tensors.push((name.clone(), q));
            continue;
        };
        let w = q.dequantize(&Device::Cpu)?;
        let last = *w
            .dims()
            .last()
            .expect("a tensor has at least one dimension");
        let hidden_dim = if kind == EditKind::Output {
            w.dim(0)?
        } else {
            last
        };
        if hidden_dim != unit.len() {
            return Err(err(format!(
                "tensor {name} has shape {:?}; the direction has {} elements",
                w.dims(),
                unit.len()
            )));
        }
        let new = if edit { project_out(&w, &d, kind)? } else { w };
        // Biases stay F32: 1-D F16 tensors gain nothing.
        let t = if kind == EditKind::Bias {
            GgmlDType::F32
        } else {
            target
        };
        tensors.push((name.clone(), QTensor::quantize(&new, t)?));
        edited.push(name.clone());
        if kind == EditKind::Embedding && tied {
            tensors.push(("output.weight".into(), q));
            added_output = true;
        }
    }
    if edited.iter().all(|n| n != "token_embd.weight") {
        return Err(err(
            "no token_embd.weight: not a llama/qwen2 style model".into()
        ));
    }

    // Metadata is copied; candle's writer aligns tensor data to 32 bytes, so a
    // different declared alignment is dropped (32 is GGUF's default).
    let mut meta: Vec<(&str, &gguf_file::Value)> = content
        .metadata
        .iter()
        .filter(|(k, v)| {
            k.as_str() != "general.alignment" || matches!(v, gguf_file::Value::U32(32))
        })
        .map(|(k, v)| (k.as_str(), v))
        .collect();
    meta.sort_by_key(|(k, _)| *k);
    let refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    write_gguf(out, &meta, &refs)?;
    Ok(OrthoSummary {
        out: out.to_path_buf(),
        copied: tensors.len() - edited.len() - usize::from(added_output),
        edited,
        added_output,
    })
}

fn write_gguf(
    out: &Path,
    meta: &[(&str, &gguf_file::Value)],
    tensors: &[(&str, &QTensor)],
) -> Result<()> {
    let dir = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(Error::io(dir))?;
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        out.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        std::process::id()
    ));
    {
        let f = File::create(&tmp).map_err(Error::io(&tmp))?;
        let mut w = BufWriter::new(f);
        gguf_file::write(&mut w, meta, tensors).map_err(|e| Error::Gguf {
            path: out.to_path_buf(),
            message: e.to_string(),
        })?;
        std::io::Write::flush(&mut w).map_err(Error::io(&tmp))?;
    }
    std::fs::rename(&tmp, out).map_err(Error::io(out))
}

fn gguf_hidden(c: &gguf_file::Content) -> Option<usize> {
    c.tensor_infos
        .get("token_embd.weight")
        .and_then(|i| i.shape.dims().last().copied())
}

/// Options of [`export_control_vector`].
#[derive(Debug, Clone)]
pub struct ControlVectorOptions {
    /// Multiplier on `r` (1 adds the refusal direction, −1 subtracts it).
    pub coef: f32,
    /// `controlvector.model_hint` (the model's architecture, e.g. `qwen2`).
    pub model_hint: String,
}

/// Write `coef · vector` (a `ResidPre(layer)` direction of a model with `n_layer`
/// layers) as a llama.cpp control vector. Returns the tensor name written.
pub fn export_control_vector(
    vector: &[f32],
    layer: usize,
    n_layer: usize,
    opts: &ControlVectorOptions,
    out: &Path,
) -> Result<String> {
    if layer < 2 || layer > n_layer {
        return Err(Error::InvalidArgument(format!(
            "a direction at the input of layer {layer} cannot be a llama.cpp control vector \
             (it adds to the output of blocks 1..{}, i.e. to layer inputs 2..={n_layer})",
            n_layer.saturating_sub(1)
        )));
    }
    let scaled: Vec<f32> = vector.iter().map(|&x| x * opts.coef).collect();
    let t = Tensor::from_vec(scaled, vector.len(), &Device::Cpu)?;
    let q = QTensor::quantize(&t, GgmlDType::F32)?;
    let name = format!("direction.{}", layer - 1);
    let arch = gguf_file::Value::String("controlvector".into());
    let hint = gguf_file::Value::String(opts.model_hint.clone());
    let count = gguf_file::Value::U32(1);
    let meta = [
        ("general.architecture", &arch),
        ("controlvector.model_hint", &hint),
        ("controlvector.layer_count", &count),
    ];
    write_gguf(out, &meta, &[(name.as_str(), &q)])?;
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn projection_removes_the_direction() {
        let dev = Device::Cpu;
        let d = Tensor::new(&[0.6f32, 0.8], &dev).unwrap();
        // Output-style weight (hidden=2, in=3): dᵀ W' must be 0.
        let w = Tensor::new(&[[1.0f32, 2.0, 3.0], [4.0, 5.0, 6.0]], &dev).unwrap();
        let w2 = project_out(&w, &d, EditKind::Output).unwrap();
        let dw: Vec<f32> = d
            .unsqueeze(0)
            .unwrap()
            .matmul(&w2)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert!(dw.iter().all(|x| x.abs() < 1e-5), "{dw:?}");
        // Embedding-style (vocab=3, hidden=2): E' d must be 0, and the orthogonal part stays.
        let e = Tensor::new(&[[1.0f32, 0.0], [0.0, 1.0], [0.8, -0.6]], &dev).unwrap();
        let e2 = project_out(&e, &d, EditKind::Embedding).unwrap();
        let ed: Vec<f32> = e2
            .matmul(&d.unsqueeze(1).unwrap())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert!(ed.iter().all(|x| x.abs() < 1e-5), "{ed:?}");
        let row2: Vec<f32> = e2.get(2).unwrap().to_vec1().unwrap();
        assert!((row2[0] - 0.8).abs() < 1e-6 && (row2[1] + 0.6).abs() < 1e-6);
        let b = Tensor::new(&[3.0f32, 4.0], &dev).unwrap();
        let b2: Vec<f32> = project_out(&b, &d, EditKind::Bias)
            .unwrap()
            .to_vec1()
            .unwrap();
        assert!((b2[0] * 0.6 + b2[1] * 0.8).abs() < 1e-5);
    }

    #[test]
    fn tensor_name_classes() {
        assert_eq!(edit_kind("token_embd.weight"), Some(EditKind::Embedding));
        assert_eq!(
            edit_kind("blk.3.attn_output.weight"),
            Some(EditKind::Output)
        );
        assert_eq!(edit_kind("blk.12.ffn_down.weight"), Some(EditKind::Output));
        assert_eq!(edit_kind("blk.0.attn_output.bias"), Some(EditKind::Bias));
        assert_eq!(edit_kind("blk.0.ffn_up.weight"), None);
        assert_eq!(edit_kind("output.weight"), None);
        assert_eq!(edit_kind("blk.x.ffn_down.weight"), None);
    }

    #[test]
    fn control_vector_layout() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("cv.gguf");
        let opts = ControlVectorOptions {
            coef: -2.0,
            model_hint: "qwen2".into(),
        };
        let name = export_control_vector(&[1.0, 0.5, -1.0], 5, 24, &opts, &out).unwrap();
        assert_eq!(name, "direction.4");
        let mut f = File::open(&out).unwrap();
        let c = gguf_file::Content::read(&mut f).unwrap();
        assert_eq!(
            c.metadata["general.architecture"].to_string().unwrap(),
            "controlvector"
        );
        assert_eq!(
            c.metadata["controlvector.model_hint"].to_string().unwrap(),
            "qwen2"
        );
        let info = &c.tensor_infos["direction.4"];
        assert_eq!(info.ggml_dtype, GgmlDType::F32);
        assert_eq!(info.shape.dims(), &[3]);
        let t: Vec<f32> = c
            .tensor(&mut f, "direction.4", &Device::Cpu)
            .unwrap()
            .dequantize(&Device::Cpu)
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(t, vec![-2.0, -1.0, 2.0]);
        assert!(export_control_vector(&[1.0], 1, 24, &opts, &out).is_err());
        assert!(export_control_vector(&[1.0], 25, 24, &opts, &out).is_err());
    }
}
