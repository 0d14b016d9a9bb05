//! `direction.safetensors`: every candidate direction of a run and the chosen one,
//! with the metadata needed to use it later (model, layer, position, hidden size).
//!
//! Layout: tensor `direction` (hidden) is the chosen difference-in-means vector `r`
//! (not normalised; ablation normalises it, addition uses it as is); tensor
//! `candidates` (positions, layers, hidden) holds `r` for every (post-instruction
//! position, layer). String metadata: `format`, `model`, `layer`, `position`,
//! `n_layer`, `hidden`, `positions` (comma-separated negative offsets) and any
//! extra keys the run adds. Positions count from the end of the prompt: −1 is the
//! last post-instruction token. `layer` names the hook point `ResidPre(layer)`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors, tensor::TensorView};

use crate::pipeline::{Intervention, ablation_hook, steering_hook};
use crate::{Error, Result};

/// File name inside a run directory.
pub const DIRECTION_FILE: &str = "direction.safetensors";
const FORMAT: &str = "overseer-refusal-direction/1";

/// Difference-in-means vectors for every (position, layer).
#[derive(Debug, Clone, PartialEq)]
pub struct Candidates {
    /// Negative offsets from the end of the prompt, e.g. `[-5, ..., -1]`.
    pub positions: Vec<i64>,
    pub n_layer: usize,
    pub hidden: usize,
    /// Row-major `(positions, n_layer, hidden)`.
    pub data: Vec<f32>,
}

impl Candidates {
    /// The vector at position index `p` (into `positions`) and layer `l`.
    pub fn get(&self, p: usize, l: usize) -> &[f32] {
        let start = (p * self.n_layer + l) * self.hidden;
        &self.data[start..start + self.hidden]
    }
}

/// A refusal direction and where it was found.
#[derive(Debug, Clone, PartialEq)]
pub struct Direction {
    pub model: String,
    /// The direction lives at `ResidPre(layer)`.
    pub layer: usize,
    /// Negative offset of the post-instruction position (−1 = last prompt token).
    pub position: i64,
    pub n_layer: usize,
    /// `r = mean(harmful) − mean(harmless)`, unnormalised.
    pub vector: Vec<f32>,
    pub candidates: Option<Candidates>,
    /// Extra string metadata (kept on save/load).
    pub extra: BTreeMap<String, String>,
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn f32_from(view: &TensorView<'_>) -> Option<Vec<f32>> {
    if view.dtype() != Dtype::F32 {
        return None;
    }
    Some(
        view.data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
    )
}

/// `dir/direction.safetensors` if `path` is a directory, else `path` itself.
pub fn direction_path(path: &Path) -> PathBuf {
    if path.is_dir() {
        path.join(DIRECTION_FILE)
    } else {
        path.to_path_buf()
    }
}

impl Direction {
    /// The runtime hook that applies intervention `iv` with this direction to `model`
    /// (`None` for [`Intervention::None`]), after checking that the direction fits the
    /// model: the same hidden size, a layer the model has. The one way a front end (the
    /// CLI's chat and eval, the server's steering) turns a saved direction into a hook.
    ///
    /// Errors: `DirectionMismatch` when the direction was made for another model.
    pub fn hook(
        &self,
        model: &overseer_lm::Model,
        iv: Intervention,
    ) -> Result<Option<Box<dyn overseer_lm::Hook>>> {
        let (model_hidden, n_layer) = (model.config().hidden, model.config().n_layer);
        let other_depth = self.n_layer != 0 && self.n_layer != n_layer;
        if self.hidden() != model_hidden || self.layer >= n_layer || other_depth {
            return Err(Error::DirectionMismatch {
                hidden: self.hidden(),
                layer: self.layer,
                model_hidden,
                n_layer,
            });
        }
        Ok(match iv {
            Intervention::None => None,
            Intervention::Ablate => Some(Box::new(ablation_hook(self, model.device())?)),
            Intervention::Add(c) => Some(Box::new(steering_hook(self, c, model.device())?)),
        })
    }

    /// Hidden size.
    pub fn hidden(&self) -> usize {
        self.vector.len()
    }

    /// The unit vector `r / ‖r‖` (f64 norm).
    pub fn unit(&self) -> Vec<f32> {
        let n = self
            .vector
            .iter()
            .map(|&x| f64::from(x) * f64::from(x))
            .sum::<f64>()
            .sqrt();
        self.vector
            .iter()
            .map(|&x| (f64::from(x) / n) as f32)
            .collect()
    }

    /// Write to `path` (a directory gets `direction.safetensors`), atomically.
    pub fn save(&self, path: &Path) -> Result<PathBuf> {
        let path = if path.is_dir() || path.extension().is_none() {
            std::fs::create_dir_all(path).map_err(Error::io(path))?;
            path.join(DIRECTION_FILE)
        } else {
            path.to_path_buf()
        };
        let mut meta: HashMap<String, String> = self
            .extra
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        meta.insert("format".into(), FORMAT.into());
        meta.insert("model".into(), self.model.clone());
        meta.insert("layer".into(), self.layer.to_string());
        meta.insert("position".into(), self.position.to_string());
        meta.insert("n_layer".into(), self.n_layer.to_string());
        meta.insert("hidden".into(), self.hidden().to_string());
        let dir_bytes = f32_bytes(&self.vector);
        let cand_bytes = self.candidates.as_ref().map(|c| f32_bytes(&c.data));
        let mut tensors: Vec<(String, TensorView<'_>)> = vec![(
            "direction".into(),
            TensorView::new(Dtype::F32, vec![self.hidden()], &dir_bytes)
                .expect("shape matches data by construction"),
        )];
        if let (Some(c), Some(bytes)) = (&self.candidates, &cand_bytes) {
            let positions: Vec<String> = c.positions.iter().map(i64::to_string).collect();
            meta.insert("positions".into(), positions.join(","));
            tensors.push((
                "candidates".into(),
                TensorView::new(
                    Dtype::F32,
                    vec![c.positions.len(), c.n_layer, c.hidden],
                    bytes,
                )
                .map_err(|e| Error::InvalidArgument(format!("candidates: {e}")))?,
            ));
        }
        let bytes =
            safetensors::serialize(tensors, Some(meta)).map_err(|e| Error::BadDirection {
                path: path.clone(),
                message: e.to_string(),
            })?;
        crate::state::write_atomic(&path, &bytes)?;
        Ok(path)
    }

    /// Read a direction written by [`Direction::save`] from a run directory or file.
    pub fn load(path: &Path) -> Result<Direction> {
        let path = direction_path(path);
        let bad = |message: String| Error::BadDirection {
            path: path.clone(),
            message,
        };
        let bytes = std::fs::read(&path).map_err(Error::io(&path))?;
        let st = SafeTensors::deserialize(&bytes).map_err(|e| bad(e.to_string()))?;
        let (_, header) = SafeTensors::read_metadata(&bytes).map_err(|e| bad(e.to_string()))?;
        let meta = header.metadata().clone().unwrap_or_default();
        if meta.get("format").map(String::as_str) != Some(FORMAT) {
            return Err(bad(format!(
                "not an overseer direction file (format {FORMAT:?} expected)"
            )));
        }
        let get = |k: &str| {
            meta.get(k)
                .ok_or_else(|| bad(format!("metadata {k:?} missing")))
        };
        let num = |k: &str| -> Result<i64> {
            get(k)?
                .parse::<i64>()
                .map_err(|_| bad(format!("metadata {k:?} is not an integer")))
        };
        let layer = usize::try_from(num("layer")?).map_err(|_| bad("negative layer".into()))?;
        let n_layer =
            usize::try_from(num("n_layer")?).map_err(|_| bad("negative n_layer".into()))?;
        let position = num("position")?;
        let view = st.tensor("direction").map_err(|e| bad(e.to_string()))?;
        let vector = f32_from(&view).ok_or_else(|| bad("direction is not f32".into()))?;
        if vector.is_empty() || vector.iter().any(|x| !x.is_finite()) {
            return Err(bad("direction is empty or not finite".into()));
        }
        let candidates = match st.tensor("candidates") {
            Ok(v) => {
                let shape = v.shape().to_vec();
                if shape.len() != 3 || shape[2] != vector.len() {
                    return Err(bad(format!("candidates have shape {shape:?}")));
                }
                let positions: Vec<i64> = get("positions")?
                    .split(',')
                    .map(|s| s.parse::<i64>())
                    .collect::<Result<_, _>>()
                    .map_err(|_| bad("metadata \"positions\" is malformed".into()))?;
                if positions.len() != shape[0] {
                    return Err(bad("positions do not match candidates".into()));
                }
                Some(Candidates {
                    positions,
                    n_layer: shape[1],
                    hidden: shape[2],
                    data: f32_from(&v).ok_or_else(|| bad("candidates are not f32".into()))?,
                })
            }
            Err(_) => None,
        };
        let reserved = [
            "format",
            "model",
            "layer",
            "position",
            "n_layer",
            "hidden",
            "positions",
        ];
        let extra = meta
            .iter()
            .filter(|(k, _)| !reserved.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Ok(Direction {
            model: get("model")?.clone(),
            layer,
            position,
            n_layer,
            vector,
            candidates,
            extra,
        })
    }
}

/// Load the direction of a run directory (or a `direction.safetensors` path).
pub fn load_direction(path: &Path) -> Result<Direction> {
    Direction::load(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Direction {
        let cands = Candidates {
            positions: vec![-2, -1],
            n_layer: 3,
            hidden: 4,
            data: (0..24).map(|i| i as f32 * 0.5 - 3.0).collect(),
        };
        Direction {
            model: "m.gguf".into(),
            layer: 2,
            position: -1,
            n_layer: 3,
            vector: cands.get(1, 2).to_vec(),
            candidates: Some(cands),
            extra: BTreeMap::from([("seed".to_string(), "42".to_string())]),
        }
    }

    #[test]
    fn roundtrip_with_metadata() {
        let dir = tempfile::tempdir().unwrap();
        let d = sample();
        let path = d.save(dir.path()).unwrap();
        assert!(path.ends_with(DIRECTION_FILE));
        let back = load_direction(dir.path()).unwrap();
        assert_eq!(back, d);
        assert_eq!(
            back.candidates.as_ref().unwrap().get(1, 2),
            d.vector.as_slice()
        );
        let u = back.unit();
        let n: f32 = u.iter().map(|x| x * x).sum();
        assert!((n - 1.0).abs() < 1e-6);
    }

    #[test]
    fn truncated_or_foreign_files_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = sample().save(dir.path()).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
        assert!(matches!(
            Direction::load(&path),
            Err(Error::BadDirection { .. })
        ));
        std::fs::write(&path, b"not safetensors").unwrap();
        assert!(Direction::load(&path).is_err());
        assert!(matches!(
            Direction::load(&dir.path().join("missing")),
            Err(Error::Io { .. })
        ));
    }
}
