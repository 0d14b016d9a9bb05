//! Retrieval evaluation on BEIR-format files: queries JSONL (`{"_id","text"}`) and
//! qrels TSV (`query-id<TAB>corpus-id<TAB>score`, header line). Metrics: nDCG@10
//! (graded gains, log2 discount), MRR@10, Recall@1/10/100.
//!
//! A negative score marks a document as *excluded* for that query: it is removed from
//! the ranking before scoring (neither relevant nor a miss). Known-item sets use it for
//! the record the query was cut from (`eval/retrieval/known_item.py`).

use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{Error, Fusion, Index, Mode, Result, SearchRequest};

/// One query.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Query {
    #[serde(rename = "_id")]
    pub id: String,
    pub text: String,
}

/// Relevance judgements: query id -> (doc id -> grade). Grade > 0: relevant;
/// grade < 0: excluded from the ranking (see the module docs). Grade 0 is not stored.
pub type Qrels = HashMap<String, HashMap<String, f64>>;

/// Mean metrics over the judged queries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    #[serde(rename = "ndcg@10")]
    pub ndcg10: f64,
    #[serde(rename = "mrr@10")]
    pub mrr10: f64,
    #[serde(rename = "recall@1")]
    pub recall1: f64,
    #[serde(rename = "recall@10")]
    pub recall10: f64,
    #[serde(rename = "recall@100")]
    pub recall100: f64,
    /// Queries scored (queries with at least one relevant document).
    pub queries: usize,
    /// Search latency per query (embedding included), milliseconds.
    #[serde(default)]
    pub latency_ms_p50: f64,
    #[serde(default)]
    pub latency_ms_p99: f64,
}

/// Read BEIR queries. A malformed line is an error naming the line.
pub fn read_queries(path: &Path) -> Result<Vec<Query>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io("read", path, e))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        #[derive(Deserialize)]
        struct Raw {
            #[serde(rename = "_id")]
            id: serde_json::Value,
            text: String,
        }
        let raw: Raw = serde_json::from_str(line).map_err(|e| Error::EvalInput {
            path: path.to_path_buf(),
            line: i + 1,
            reason: format!("expected {{\"_id\", \"text\"}}: {e}"),
        })?;
        let id = match raw.id {
            serde_json::Value::String(s) => s,
            other => other.to_string(),
        };
        out.push(Query { id, text: raw.text });
    }
    Ok(out)
}

/// Read BEIR qrels (TSV with a header line). Grade 0 rows are dropped (not relevant);
/// negative grades are kept as exclusions.
pub fn read_qrels(path: &Path) -> Result<Qrels> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io("read", path, e))?;
    let mut q: Qrels = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let cols: Vec<&str> = line.split('\t').map(str::trim).collect();
        if line.trim().is_empty() {
            continue;
        }
        if i == 0
            && cols
                .first()
                .is_some_and(|c| c.eq_ignore_ascii_case("query-id"))
        {
            continue;
        }
        let bad = |reason: String| Error::EvalInput {
            path: path.to_path_buf(),
            line: i + 1,
            reason,
        };
        if cols.len() < 3 {
            return Err(bad("expected query-id<TAB>corpus-id<TAB>score".into()));
        }
        let grade: f64 = cols[2]
            .parse()
            .map_err(|_| bad(format!("bad score {:?}", cols[2])))?;
        if grade != 0.0 {
            q.entry(cols[0].to_string())
                .or_default()
                .insert(cols[1].to_string(), grade);
        }
    }
    Ok(q)
}

/// Number of documents `rel` excludes from the ranking (grade < 0).
fn excluded(rel: &HashMap<String, f64>) -> usize {
    rel.values().filter(|g| **g < 0.0).count()
}

/// Per-query metrics for a ranked list of document ids. Documents `rel` grades below 0
/// are removed from `ranked` first; only grades above 0 count as relevant.
pub fn score_one(ranked: &[String], rel: &HashMap<String, f64>) -> Metrics {
    let ranked: Vec<&String> = ranked
        .iter()
        .filter(|id| rel.get(*id).is_none_or(|g| *g >= 0.0))
        .collect();
    let rel: HashMap<&String, f64> = rel
        .iter()
        .filter(|(_, g)| **g > 0.0)
        .map(|(d, g)| (d, *g))
        .collect();
    let mut dcg = 0.0;
    let mut rr = 0.0;
    for (i, id) in ranked.iter().take(10).enumerate() {
        if let Some(&g) = rel.get(*id) {
            dcg += (2f64.powf(g) - 1.0) / ((i + 2) as f64).log2();
            if rr == 0.0 {
                rr = 1.0 / (i + 1) as f64;
            }
        }
    }
    let mut grades: Vec<f64> = rel.values().copied().collect();
    grades.sort_by(|a, b| b.total_cmp(a));
    let idcg: f64 = grades
        .iter()
        .take(10)
        .enumerate()
        .map(|(i, g)| (2f64.powf(*g) - 1.0) / ((i + 2) as f64).log2())
        .sum();
    let recall = |n: usize| {
        let found = ranked
            .iter()
            .take(n)
            .filter(|id| rel.contains_key(*id))
            .count();
        found as f64 / rel.len().max(1) as f64
    };
    Metrics {
        ndcg10: if idcg > 0.0 { dcg / idcg } else { 0.0 },
        mrr10: rr,
        recall1: recall(1),
        recall10: recall(10),
        recall100: recall(100),
        queries: 1,
        ..Metrics::default()
    }
}

/// How [`evaluate`] searches.
#[derive(Debug, Clone, Copy)]
pub struct EvalOptions {
    pub mode: Mode,
    pub fusion: Fusion,
    /// [`SearchRequest::depth`].
    pub depth: usize,
    /// Run every query this many times (at least once) for steadier latency
    /// percentiles; the metrics come from the first run.
    pub repeat: usize,
}

/// Evaluate one mode: search each judged query at document level, as `overseer search`
/// does: the @1 and @10 metrics (and the latency) from a k = 10 search, Recall@100 from a
/// k = 100 search. Two searches, because a k = 100 search fuses more candidates
/// ([`SearchRequest::depth`] is a floor, raised to 4·k) and could rank the top 10
/// differently from the k = 10 search a user runs. A query's excluded documents
/// (grade < 0) are searched for too (k raised by their number) and dropped before
/// scoring; a query without a relevant document (grade > 0) is skipped.
pub fn evaluate(
    index: &Index,
    queries: &[Query],
    qrels: &Qrels,
    opts: EvalOptions,
) -> Result<Metrics> {
    let EvalOptions {
        mode,
        fusion,
        depth,
        repeat,
    } = opts;
    let mut sum = Metrics::default();
    let mut lat: Vec<f64> = Vec::with_capacity(queries.len());
    for q in queries {
        let Some(rel) = qrels.get(&q.id) else {
            continue;
        };
        if !rel.values().any(|g| *g > 0.0) {
            continue;
        }
        let extra = excluded(rel);
        let request = |k: usize| {
            let mut req = SearchRequest::new(q.text.clone(), k);
            req.mode = mode;
            req.fusion = fusion;
            req.depth = depth;
            req
        };
        let ids = |req: &SearchRequest| -> Result<Vec<String>> {
            Ok(index.search(req)?.into_iter().map(|h| h.id).collect())
        };
        let top10 = request(10 + extra);
        let t = std::time::Instant::now();
        let ranked10 = ids(&top10)?;
        lat.push(t.elapsed().as_secs_f64() * 1e3);
        for _ in 1..repeat {
            let t = std::time::Instant::now();
            index.search(&top10)?;
            lat.push(t.elapsed().as_secs_f64() * 1e3);
        }
        let m = score_one(&ranked10, rel);
        sum.ndcg10 += m.ndcg10;
        sum.mrr10 += m.mrr10;
        sum.recall1 += m.recall1;
        sum.recall10 += m.recall10;
        sum.recall100 += score_one(&ids(&request(100 + extra))?, rel).recall100;
        sum.queries += 1;
    }
    let n = sum.queries.max(1) as f64;
    lat.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 - 1.0) * p).round() as usize)
            .copied()
            .unwrap_or(0.0)
    };
    Ok(Metrics {
        latency_ms_p50: pct(0.5),
        latency_ms_p99: pct(0.99),
        ndcg10: sum.ndcg10 / n,
        mrr10: sum.mrr10 / n,
        recall1: sum.recall1 / n,
        recall10: sum.recall10 / n,
        recall100: sum.recall100 / n,
        queries: sum.queries,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_by_hand() {
        let rel: HashMap<String, f64> = [("a".to_string(), 1.0), ("b".to_string(), 1.0)].into();
        let ranked: Vec<String> = ["x", "a", "y", "b"].iter().map(|s| s.to_string()).collect();
        let m = score_one(&ranked, &rel);
        let dcg = 1.0 / 3f64.log2() + 1.0 / 5f64.log2();
        let idcg = 1.0 + 1.0 / 3f64.log2();
        assert!((m.ndcg10 - dcg / idcg).abs() < 1e-12);
        assert_eq!((m.mrr10, m.recall1, m.recall10), (0.5, 0.0, 1.0));
        let none = score_one(&[], &rel);
        assert_eq!((none.ndcg10, none.mrr10, none.recall100), (0.0, 0.0, 0.0));
    }

    #[test]
    fn excluded_documents_leave_the_ranking() {
        // "src" (grade -1) is the record the query was cut from: dropping it moves the
        // target from rank 2 to rank 1; it is not counted as relevant either.
        let rel: HashMap<String, f64> = [("t".to_string(), 1.0), ("src".to_string(), -1.0)].into();
        let ranked: Vec<String> = ["src", "t"].iter().map(|s| s.to_string()).collect();
        let m = score_one(&ranked, &rel);
        assert_eq!((m.mrr10, m.recall1, m.ndcg10), (1.0, 1.0, 1.0));
        // Eleven results with the excluded one first still leave ten to score.
        let mut ranked: Vec<String> = (0..10).map(|i| format!("x{i}")).collect();
        ranked.insert(0, "src".into());
        ranked.push("t".into());
        assert_eq!(score_one(&ranked, &rel).recall10, 0.0);
        ranked.remove(10); // x9: now the target is the tenth once "src" is dropped
        let m = score_one(&ranked, &rel);
        assert_eq!((m.recall10, m.mrr10), (1.0, 0.1));
    }

    #[test]
    fn beir_files() {
        let d = tempfile::tempdir().expect("tmp");
        let q = d.path().join("q.jsonl");
        std::fs::write(
            &q,
            "{\"_id\": \"1\", \"text\": \"hello\"}\n{\"_id\": 2, \"text\": \"x\"}\n",
        )
        .expect("w");
        let qs = read_queries(&q).expect("queries");
        assert_eq!(qs[1].id, "2");
        std::fs::write(&q, "{\"_id\": \"1\"}\n").expect("w");
        assert!(read_queries(&q).unwrap_err().to_string().contains(":1:"));
        let r = d.path().join("r.tsv");
        std::fs::write(
            &r,
            "query-id\tcorpus-id\tscore\n1\tdocA\t1\n1\tdocB\t0\n2\tdocC\t2\n2\tdocD\t-1\n",
        )
        .expect("w");
        let qr = read_qrels(&r).expect("qrels");
        assert_eq!(qr["1"].len(), 1);
        assert_eq!(qr["2"]["docC"], 2.0);
        assert_eq!(
            qr["2"]["docD"], -1.0,
            "negative grades are kept as exclusions"
        );
        std::fs::write(&r, "query-id\tcorpus-id\tscore\n1\tdocA\n").expect("w");
        assert!(read_qrels(&r).unwrap_err().to_string().contains(":2:"));
    }
}
