//! Choosing one direction among the (layer, position) candidates, on plain numbers.
//!
//! Arditi et al.'s rule: drop candidates in the last `prune_layer_fraction` of layers,
//! with KL above `kl_threshold`, with an induce score at or below `induce_threshold`,
//! or with any NaN score; among the rest pick the lowest bypass score. When nothing
//! survives (it happens on small models, where adding `r` does not lift the refusal
//! score above 0), the rule is relaxed in a fixed, recorded order: first the induce
//! filter is dropped, then the KL filter. `strict` turns relaxation off.

use serde::{Deserialize, Deserializer, Serialize};

/// Read an f64 that JSON wrote as `null` (NaN) back as NaN.
pub(crate) fn nan_null<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// Scores of one candidate direction on the validation prompts.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CandidateScore {
    pub layer: usize,
    /// Negative offset from the end of the prompt (−1 = last token).
    pub position: i64,
    /// Mean refusal score on harmful prompts with the direction ablated (lower = better).
    #[serde(deserialize_with = "nan_null")]
    pub bypass: f64,
    /// Mean refusal score on harmless prompts with `r` added at its layer (higher = better).
    #[serde(deserialize_with = "nan_null")]
    pub induce: f64,
    /// Mean KL(baseline ‖ ablated) of the next-token distribution on harmless prompts.
    #[serde(deserialize_with = "nan_null")]
    pub kl: f64,
}

/// Selection thresholds (all exposed as CLI flags).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SelectionConfig {
    /// Fraction of the last layers never selected (paper: 0.2).
    pub prune_layer_fraction: f64,
    /// Maximum KL under ablation (paper: 0.1).
    pub kl_threshold: f64,
    /// Induce score must exceed this (paper: 0).
    pub induce_threshold: f64,
    /// Never relax the filters; fail instead when nothing passes.
    pub strict: bool,
}

impl Default for SelectionConfig {
    fn default() -> Self {
        SelectionConfig {
            prune_layer_fraction: 0.2,
            kl_threshold: 0.1,
            induce_threshold: 0.0,
            strict: false,
        }
    }
}

/// Why a candidate was not eligible.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rejection {
    LateLayer,
    Nan,
    Kl,
    Induce,
}

/// The outcome of selection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Selected {
    /// The chosen candidate, `None` when nothing passed (strict mode) .
    pub chosen: Option<CandidateScore>,
    /// Per candidate (same order as the input), the first filter it failed under the
    /// paper's full rule, `None` if it passed.
    pub rejections: Vec<Option<Rejection>>,
    /// Filters dropped to get a choice (`"induce"`, `"kl"`), empty when the paper's
    /// rule selected directly.
    pub relaxed: Vec<String>,
    /// Candidates that passed the paper's full rule.
    pub n_passed: usize,
}

/// First layer index that is pruned: `floor(n_layer · (1 − fraction))`.
///
/// A small epsilon absorbs float error so that e.g. 30 layers with fraction 0.9 keep
/// 3 layers (`1.0 − 0.9` is `0.0999…` in f64, which would otherwise floor to 2).
pub fn first_pruned_layer(n_layer: usize, fraction: f64) -> usize {
    ((n_layer as f64) * (1.0 - fraction) + 1e-9)
        .floor()
        .clamp(0.0, n_layer as f64) as usize
}

fn rejection(
    c: &CandidateScore,
    n_layer: usize,
    cfg: &SelectionConfig,
    use_kl: bool,
    use_induce: bool,
) -> Option<Rejection> {
    if c.layer >= first_pruned_layer(n_layer, cfg.prune_layer_fraction) {
        return Some(Rejection::LateLayer);
    }
    if c.bypass.is_nan() || c.kl.is_nan() || c.induce.is_nan() {
        return Some(Rejection::Nan);
    }
    if use_kl && c.kl > cfg.kl_threshold {
        return Some(Rejection::Kl);
    }
    if use_induce && c.induce <= cfg.induce_threshold {
        return Some(Rejection::Induce);
    }
    None
}

/// Apply the selection rule (see the module docs).
pub fn select(cands: &[CandidateScore], n_layer: usize, cfg: &SelectionConfig) -> Selected {
    let rejections: Vec<Option<Rejection>> = cands
        .iter()
        .map(|c| rejection(c, n_layer, cfg, true, true))
        .collect();
    let n_passed = rejections.iter().filter(|r| r.is_none()).count();
    let stages: &[(bool, bool, &[&str])] = if cfg.strict {
        &[(true, true, &[])]
    } else {
        &[
            (true, true, &[]),
            (true, false, &["induce"]),
            (false, false, &["induce", "kl"]),
        ]
    };
    for &(use_kl, use_induce, relaxed) in stages {
        let best = cands
            .iter()
            .filter(|c| rejection(c, n_layer, cfg, use_kl, use_induce).is_none())
            .min_by(|a, b| a.bypass.total_cmp(&b.bypass));
        if let Some(best) = best {
            return Selected {
                chosen: Some(*best),
                rejections,
                relaxed: relaxed.iter().map(|s| s.to_string()).collect(),
                n_passed,
            };
        }
    }
    Selected {
        chosen: None,
        rejections,
        relaxed: Vec::new(),
        n_passed,
    }
}

/// Pick an addition coefficient: the smallest tried coefficient whose induce score
/// exceeds `threshold`, else the one with the highest induce score. `scores` are
/// `(coef, induce score)` pairs; NaN scores are ignored. `None` if all are NaN.
pub fn pick_coefficient(scores: &[(f64, f64)], threshold: f64) -> Option<(f64, f64)> {
    let mut valid: Vec<(f64, f64)> = scores
        .iter()
        .copied()
        .filter(|(_, s)| !s.is_nan())
        .collect();
    valid.sort_by(|a, b| a.0.total_cmp(&b.0));
    valid
        .iter()
        .copied()
        .find(|(_, s)| *s > threshold)
        .or_else(|| valid.iter().copied().max_by(|a, b| a.1.total_cmp(&b.1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(layer: usize, bypass: f64, induce: f64, kl: f64) -> CandidateScore {
        CandidateScore {
            layer,
            position: -1,
            bypass,
            induce,
            kl,
        }
    }

    #[test]
    fn paper_rule_picks_lowest_bypass_among_eligible() {
        let n_layer = 10; // layers 8 and 9 are pruned
        let cands = [
            c(2, -1.0, 0.5, 0.05),
            c(4, -3.0, 0.5, 0.05),
            c(5, -9.0, 0.5, 0.50),  // KL too high
            c(6, -8.0, -0.1, 0.05), // induce too low
            c(7, f64::NAN, 0.5, 0.0),
            c(8, -20.0, 1.0, 0.0), // late layer
        ];
        let s = select(&cands, n_layer, &SelectionConfig::default());
        assert_eq!(s.chosen, Some(cands[1]));
        assert!(s.relaxed.is_empty());
        assert_eq!(s.n_passed, 2);
        assert_eq!(
            s.rejections,
            vec![
                None,
                None,
                Some(Rejection::Kl),
                Some(Rejection::Induce),
                Some(Rejection::Nan),
                Some(Rejection::LateLayer)
            ]
        );
    }

    #[test]
    fn relaxation_is_ordered_and_recorded() {
        let cands = [c(1, -2.0, -0.3, 0.05), c(2, -4.0, -0.2, 0.2)];
        let s = select(&cands, 10, &SelectionConfig::default());
        assert_eq!(s.chosen, Some(cands[0]));
        assert_eq!(s.relaxed, vec!["induce"]);
        assert_eq!(s.n_passed, 0);
        let cands = [c(1, -2.0, -0.3, 0.5), c(2, -4.0, -0.2, 0.2)];
        let s = select(&cands, 10, &SelectionConfig::default());
        assert_eq!(s.chosen, Some(cands[1]));
        assert_eq!(s.relaxed, vec!["induce", "kl"]);
        let strict = SelectionConfig {
            strict: true,
            ..Default::default()
        };
        assert_eq!(select(&cands, 10, &strict).chosen, None);
    }

    #[test]
    fn pruning_boundary() {
        assert_eq!(first_pruned_layer(24, 0.2), 19);
        assert_eq!(first_pruned_layer(30, 0.2), 24);
        assert_eq!(first_pruned_layer(10, 0.0), 10);
        assert_eq!(first_pruned_layer(30, 0.9), 3);
        assert_eq!(first_pruned_layer(24, 1.0), 0);
    }

    #[test]
    fn coefficient_search() {
        let s = [(2.0, 0.4), (1.0, -0.2), (3.0, 1.0), (1.5, f64::NAN)];
        assert_eq!(pick_coefficient(&s, 0.0), Some((2.0, 0.4)));
        let s = [(1.0, -0.5), (2.0, -0.1), (3.0, -0.3)];
        assert_eq!(pick_coefficient(&s, 0.0), Some((2.0, -0.1)));
        assert_eq!(pick_coefficient(&[(1.0, f64::NAN)], 0.0), None);
    }
}
