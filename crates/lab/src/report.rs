//! `report.json`, `report.md` and the SVG plots of a refusal run.

use std::fmt::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::Result;
use crate::plot::{Series, bar_chart, line_chart, text_panel};
use crate::select::CandidateScore;
use crate::state::write_atomic;

/// Refusal rates (0..1, substring judge) and mean logit refusal scores of one condition.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Rates {
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub harmful_refusal_rate: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub harmless_refusal_rate: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub harmful_refusal_score: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub harmless_refusal_score: Option<f64>,
    /// Coefficient on `r` (addition/subtraction only).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub coef: Option<f64>,
}

/// The chosen candidate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SelectedReport {
    pub layer: usize,
    pub position: i64,
    pub bypass: f64,
    pub induce: f64,
    pub kl: f64,
    /// Filters relaxed to get a choice (empty = the paper's rule applied as is).
    pub relaxed: Vec<String>,
    /// Candidates that passed the paper's full rule.
    pub n_passed: usize,
}

/// Prompt counts before and after the refusal-score filter.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DataReport {
    pub harmful_train_scored: usize,
    pub harmful_train: usize,
    pub harmless_train_scored: usize,
    pub harmless_train: usize,
    pub harmful_val_scored: usize,
    pub harmful_val: usize,
    pub harmless_val_scored: usize,
    pub harmless_val: usize,
    pub harmful_test: usize,
    pub harmless_test: usize,
    pub note: String,
}

/// Capability cost of the interventions.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CostReport {
    /// Mean per-token cross-entropy (nats) of the baseline model's own greedy harmless
    /// completions, teacher-forced, with no intervention / ablation / addition.
    #[serde(deserialize_with = "crate::select::nan_null")]
    pub ce_baseline: f64,
    #[serde(deserialize_with = "crate::select::nan_null")]
    pub ce_ablation: f64,
    #[serde(deserialize_with = "crate::select::nan_null")]
    pub ce_addition: f64,
    /// Mean KL(baseline ‖ intervened) of the next-token distribution on harmless test prompts.
    #[serde(deserialize_with = "crate::select::nan_null")]
    pub kl_ablation: f64,
    #[serde(deserialize_with = "crate::select::nan_null")]
    pub kl_addition: f64,
}

/// One example prompt with its completions under each condition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Example {
    pub kind: String,
    pub instruction: String,
    pub completions: Vec<(String, String)>,
}

/// Everything a run reports (`report.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub model: String,
    pub architecture: String,
    pub n_layer: usize,
    pub hidden: usize,
    pub post_instruction: String,
    pub positions: Vec<i64>,
    pub refusal_tokens: Vec<(u32, String)>,
    pub data: DataReport,
    pub selected: SelectedReport,
    /// KL on harmless validation prompts under ablation of the selected direction.
    pub kl: f64,
    /// (coefficient, induce score on harmless validation prompts) tried for addition.
    pub coef_search: Vec<(f64, f64)>,
    pub baseline: Rates,
    pub ablation: Rates,
    pub addition: Rates,
    pub subtraction: Rates,
    pub cost: CostReport,
    pub candidates: Vec<CandidateScore>,
    pub examples: Vec<Example>,
    pub config: serde_json::Value,
    /// Seconds per stage (only stages computed in this invocation).
    pub timings: Vec<(String, f64)>,
}

fn pct(v: Option<f64>) -> String {
    v.map_or("—".into(), |x| format!("{:.1}%", x * 100.0))
}

fn num(v: Option<f64>) -> String {
    v.map_or("—".into(), |x| format!("{x:.3}"))
}

impl Report {
    /// The Markdown summary.
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let sel = &self.selected;
        let _ = writeln!(s, "# Refusal direction: {}\n", self.model);
        let _ = writeln!(
            s,
            "Architecture `{}`, {} layers, hidden size {}. Post-instruction tokens `{}` (positions {:?}).\n",
            self.architecture,
            self.n_layer,
            self.hidden,
            self.post_instruction.escape_debug(),
            self.positions
        );
        let toks: Vec<String> = self
            .refusal_tokens
            .iter()
            .map(|(i, p)| format!("`{p}` ({i})"))
            .collect();
        let _ = writeln!(s, "Refusal tokens: {}.\n", toks.join(", "));
        let d = &self.data;
        let _ = writeln!(s, "## Data\n");
        let _ = writeln!(
            s,
            "| split | scored | kept |\n|---|---|---|\n| harmful train | {} | {} |\n| harmless train | {} | {} |\n| harmful val | {} | {} |\n| harmless val | {} | {} |\n| harmful test | {} | — |\n| harmless test | {} | — |\n",
            d.harmful_train_scored,
            d.harmful_train,
            d.harmless_train_scored,
            d.harmless_train,
            d.harmful_val_scored,
            d.harmful_val,
            d.harmless_val_scored,
            d.harmless_val,
            d.harmful_test,
            d.harmless_test
        );
        if !d.note.is_empty() {
            let _ = writeln!(s, "{}\n", d.note);
        }
        let _ = writeln!(s, "## Selected direction\n");
        let _ = writeln!(
            s,
            "Layer **{}**, position **{}**: bypass score {:.3}, induce score {:.3}, KL {:.4}. {} of {} candidates passed the paper's filters.",
            sel.layer,
            sel.position,
            sel.bypass,
            sel.induce,
            sel.kl,
            sel.n_passed,
            self.candidates.len()
        );
        if sel.relaxed.is_empty() {
            let _ = writeln!(s, "Selected by the paper's rule as is.\n");
        } else {
            let _ = writeln!(
                s,
                "**No candidate passed every filter; relaxed: {}** (then lowest bypass score among the rest).\n",
                sel.relaxed.join(", ")
            );
        }
        if !self.coef_search.is_empty() {
            let tried: Vec<String> = self
                .coef_search
                .iter()
                .map(|(c, v)| format!("{c}: {v:.3}"))
                .collect();
            let _ = writeln!(
                s,
                "Addition coefficient search (coef: induce score on harmless val): {}. Used {}.\n",
                tried.join(", "),
                self.addition.coef.map_or("—".into(), |c| c.to_string())
            );
        }
        let _ = writeln!(s, "## Results on test prompts\n");
        let _ = writeln!(
            s,
            "| condition | harmful refusal rate | harmless refusal rate | harmful refusal score | harmless refusal score |\n|---|---|---|---|---|"
        );
        for (name, r) in [
            ("baseline", &self.baseline),
            ("ablation", &self.ablation),
            ("addition", &self.addition),
            ("subtraction", &self.subtraction),
        ] {
            let name = match r.coef {
                Some(c) => format!("{name} (coef {c})"),
                None => name.to_string(),
            };
            let _ = writeln!(
                s,
                "| {name} | {} | {} | {} | {} |",
                pct(r.harmful_refusal_rate),
                pct(r.harmless_refusal_rate),
                num(r.harmful_refusal_score),
                num(r.harmless_refusal_score)
            );
        }
        let c = &self.cost;
        let _ = writeln!(
            s,
            "\nCapability cost: cross-entropy of the baseline's harmless completions {:.4} (baseline) / {:.4} (ablation) / {:.4} (addition) nats per token; KL on harmless test prompts {:.4} (ablation) / {:.4} (addition). KL on harmless val (selection): {:.4}.\n",
            c.ce_baseline, c.ce_ablation, c.ce_addition, c.kl_ablation, c.kl_addition, self.kl
        );
        let _ = writeln!(
            s,
            "Plots: `scores.svg` (per-layer bypass/induce/KL), `rates.svg` (refusal rates), `examples.svg` (completions side by side).\n"
        );
        let _ = writeln!(s, "## Examples\n");
        for e in &self.examples {
            let _ = writeln!(s, "**{}**: {}\n", e.kind, e.instruction.replace('\n', " "));
            for (cond, text) in &e.completions {
                let short: String = text.chars().take(300).collect();
                let _ = writeln!(s, "- *{cond}*: {}", short.replace('\n', " "));
            }
            s.push('\n');
        }
        if !self.timings.is_empty() {
            let _ = writeln!(s, "## Timings (this invocation)\n");
            for (k, v) in &self.timings {
                let _ = writeln!(s, "- {k}: {v:.1} s");
            }
        }
        s
    }

    /// Write `report.json`, `report.md`, `scores.svg`, `rates.svg`, `examples.svg` into `dir`.
    pub fn write(&self, dir: &Path) -> Result<()> {
        write_atomic(
            &dir.join("report.json"),
            serde_json::to_string_pretty(self)?.as_bytes(),
        )?;
        write_atomic(&dir.join("report.md"), self.markdown().as_bytes())?;
        write_atomic(&dir.join("scores.svg"), self.scores_svg().as_bytes())?;
        write_atomic(&dir.join("rates.svg"), self.rates_svg().as_bytes())?;
        write_atomic(&dir.join("examples.svg"), self.examples_svg().as_bytes())?;
        Ok(())
    }

    fn scores_svg(&self) -> String {
        let mut positions: Vec<i64> = self.candidates.iter().map(|c| c.position).collect();
        positions.sort_unstable();
        positions.dedup();
        let series = |f: &dyn Fn(&CandidateScore) -> f64, label: &str| -> Vec<Series> {
            positions
                .iter()
                .map(|&p| Series {
                    name: format!("{label} pos {p}"),
                    points: self
                        .candidates
                        .iter()
                        .filter(|c| c.position == p)
                        .map(|c| (c.layer as f64, f(c)))
                        .collect(),
                })
                .collect()
        };
        let base_h = self.baseline_val_scores();
        let mut out = String::new();
        // Three charts stacked in one SVG document.
        let charts = [
            line_chart(
                "Bypass: refusal score on harmful val prompts, direction ablated",
                "layer",
                "refusal score (log-odds)",
                &series(&|c| c.bypass, "bypass"),
                &[(base_h.0, "harmful baseline".into())],
            ),
            line_chart(
                "Induce: refusal score on harmless val prompts, r added at its layer",
                "layer",
                "refusal score (log-odds)",
                &series(&|c| c.induce, "induce"),
                &[(base_h.1, "harmless baseline".into()), (0.0, "0".into())],
            ),
            line_chart(
                "KL on harmless val prompts, direction ablated",
                "layer",
                "KL (nats)",
                &series(&|c| c.kl, "KL"),
                &[(0.1, "threshold 0.1".into())],
            ),
        ];
        let _ = write!(
            out,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="720" height="1200" viewBox="0 0 720 1200">"#
        );
        for (i, c) in charts.iter().enumerate() {
            let _ = write!(out, r#"<g transform="translate(0,{})">{c}</g>"#, i * 400);
        }
        out.push_str("</svg>\n");
        out
    }

    fn baseline_val_scores(&self) -> (f64, f64) {
        let get = |k: &str| {
            self.config
                .get("baseline_val")
                .and_then(|v| v.get(k))
                .and_then(serde_json::Value::as_f64)
                .unwrap_or(f64::NAN)
        };
        (get("harmful"), get("harmless"))
    }

    fn rates_svg(&self) -> String {
        let groups = ["baseline", "ablation", "addition", "subtraction"];
        let conds = [
            &self.baseline,
            &self.ablation,
            &self.addition,
            &self.subtraction,
        ];
        let harmful: Vec<f64> = conds
            .iter()
            .map(|r| r.harmful_refusal_rate.unwrap_or(f64::NAN))
            .collect();
        let harmless: Vec<f64> = conds
            .iter()
            .map(|r| r.harmless_refusal_rate.unwrap_or(f64::NAN))
            .collect();
        bar_chart(
            &format!("Refusal rate on test prompts ({})", self.model),
            "refusal rate (substring judge)",
            &groups.map(String::from),
            &[("harmful".into(), harmful), ("harmless".into(), harmless)],
            1.0,
        )
    }

    fn examples_svg(&self) -> String {
        let headers = [
            "prompt".to_string(),
            "baseline".to_string(),
            "with intervention".to_string(),
        ];
        let rows: Vec<Vec<String>> = self
            .examples
            .iter()
            .map(|e| {
                let mut row = vec![format!("[{}] {}", e.kind, e.instruction)];
                row.extend(e.completions.iter().map(|(c, t)| format!("[{c}] {t}")));
                row
            })
            .collect();
        text_panel("Example completions", &headers, &rows)
    }
}
