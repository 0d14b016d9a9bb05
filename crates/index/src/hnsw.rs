//! A hierarchical navigable small-world graph (Malkov & Yashunin) over the rows of
//! the vector matrix, for collections where exact search gets slow (> ~100k chunks).
//! Hand-written because the graph must live beside our own memory-mapped matrix
//! (the crates keep their own copy of every vector) and grow incrementally as
//! ingests append rows. Similarity is the dot product (vectors are L2-normalised).
//! Deleted rows stay in the graph as waypoints and are filtered from results.

use std::collections::{BinaryHeap, HashMap};
use std::io::{BufWriter, Read, Write};
use std::path::Path;

use crate::vectors::{Scored, TopK, dot};
use crate::{Error, Result};

const MAGIC: &[u8; 8] = b"OVHNSW1\0";
const NONE: u32 = u32::MAX;

/// Construction parameters.
#[derive(Debug, Clone, Copy)]
pub struct HnswParams {
    /// Neighbours per node on upper layers (layer 0 keeps twice as many).
    pub m: usize,
    /// Candidate list size while inserting.
    pub ef_construction: usize,
    pub seed: u64,
}

impl Default for HnswParams {
    fn default() -> Self {
        Self {
            m: 16,
            ef_construction: 100,
            seed: 0x5eed,
        }
    }
}

/// The graph. Node `i` is row `i` of the matrix it was built over.
pub struct Hnsw {
    dim: usize,
    m: usize,
    m0: usize,
    ef_construction: usize,
    entry: u32,
    max_level: usize,
    levels: Vec<u8>,
    /// `n * m0` neighbour ids, `NONE`-padded.
    layer0: Vec<u32>,
    /// Upper-layer neighbour lists: node -> lists for levels 1..=level.
    upper: HashMap<u32, Vec<Vec<u32>>>,
    rng: u64,
}

impl std::fmt::Debug for Hnsw {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hnsw")
            .field("nodes", &self.levels.len())
            .field("max_level", &self.max_level)
            .finish_non_exhaustive()
    }
}

struct Visited(Vec<u64>);
impl Visited {
    fn new(n: usize) -> Self {
        Visited(vec![0; n.div_ceil(64)])
    }
    /// Mark `i`; true if it was not marked before.
    fn insert(&mut self, i: u32) -> bool {
        let (w, b) = (i as usize / 64, i as usize % 64);
        let fresh = self.0[w] >> b & 1 == 0;
        self.0[w] |= 1 << b;
        fresh
    }
}

impl Hnsw {
    /// An empty graph for vectors of `dim` dimensions.
    pub fn new(dim: usize, p: HnswParams) -> Self {
        let m = p.m.max(2);
        Self {
            dim,
            m,
            m0: 2 * m,
            ef_construction: p.ef_construction.max(m),
            entry: NONE,
            max_level: 0,
            levels: Vec::new(),
            layer0: Vec::new(),
            upper: HashMap::new(),
            rng: p.seed | 1,
        }
    }

    /// Nodes in the graph.
    pub fn len(&self) -> usize {
        self.levels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.levels.is_empty()
    }

    fn vec<'a>(&self, data: &'a [f32], i: u32) -> &'a [f32] {
        let s = i as usize * self.dim;
        &data[s..s + self.dim]
    }

    fn neighbours(&self, i: u32, level: usize) -> &[u32] {
        if level == 0 {
            let s = i as usize * self.m0;
            let l = &self.layer0[s..s + self.m0];
            let n = l.iter().position(|&x| x == NONE).unwrap_or(self.m0);
            &l[..n]
        } else {
            self.upper
                .get(&i)
                .and_then(|v| v.get(level - 1))
                .map_or(&[][..], |v| v.as_slice())
        }
    }

    fn set_neighbours(&mut self, i: u32, level: usize, list: &[u32]) {
        if level == 0 {
            let s = i as usize * self.m0;
            let slot = &mut self.layer0[s..s + self.m0];
            slot.fill(NONE);
            slot[..list.len()].copy_from_slice(list);
        } else if let Some(v) = self.upper.get_mut(&i) {
            v[level - 1] = list.to_vec();
        }
    }

    fn random_level(&mut self) -> usize {
        // xorshift64*; level ~ floor(-ln(U) / ln(M)).
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        let r = self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d);
        let u = ((r >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
        let l = (-u.ln() / (self.m as f64).ln()).floor() as usize;
        l.min(15)
    }

    /// Best-first search of one layer from `eps`, keeping `ef` results (best first).
    fn search_layer(
        &self,
        data: &[f32],
        q: &[f32],
        eps: &[Scored],
        ef: usize,
        level: usize,
        visited: &mut Visited,
    ) -> Vec<Scored> {
        let mut cand: BinaryHeap<Scored> = BinaryHeap::new();
        let mut best = TopK::new(ef);
        for &e in eps {
            visited.insert(e.row);
            cand.push(e);
            best.push(e);
        }
        while let Some(c) = cand.pop() {
            if best.threshold().is_some_and(|t| c.score < t) {
                break;
            }
            for &nb in self.neighbours(c.row, level) {
                if !visited.insert(nb) {
                    continue;
                }
                let s = Scored {
                    row: nb,
                    score: dot(self.vec(data, nb), q),
                };
                // `>=`: keep walking across plateaus of equal scores.
                if best.threshold().is_none_or(|t| s.score >= t) {
                    cand.push(s);
                    best.push(s);
                }
            }
        }
        best.into_sorted()
    }

    /// Neighbour selection heuristic: keep a candidate only if it is closer to the
    /// base than to every neighbour kept so far; top up with the closest rejected.
    fn select(&self, data: &[f32], cands: &[Scored], m: usize) -> Vec<u32> {
        let mut kept: Vec<Scored> = Vec::with_capacity(m);
        let mut rejected = Vec::new();
        for &c in cands {
            if kept.len() >= m {
                break;
            }
            let cv = self.vec(data, c.row);
            if kept
                .iter()
                .all(|k| dot(cv, self.vec(data, k.row)) < c.score)
            {
                kept.push(c);
            } else {
                rejected.push(c);
            }
        }
        for r in rejected {
            if kept.len() >= m {
                break;
            }
            kept.push(r);
        }
        kept.into_iter().map(|s| s.row).collect()
    }

    /// Insert rows `len()..rows` of `data` (rows × dim).
    pub fn extend(&mut self, data: &[f32]) {
        let rows = data.len() / self.dim;
        for i in self.len()..rows {
            self.insert(data, i as u32);
        }
    }

    fn insert(&mut self, data: &[f32], id: u32) {
        let level = self.random_level();
        self.levels.push(level as u8);
        self.layer0.extend(std::iter::repeat_n(NONE, self.m0));
        if level > 0 {
            self.upper.insert(id, vec![Vec::new(); level]);
        }
        if self.entry == NONE {
            self.entry = id;
            self.max_level = level;
            return;
        }
        let q = self.vec(data, id).to_vec();
        let mut visited = Visited::new(self.len());
        let mut ep = vec![Scored {
            row: self.entry,
            score: dot(self.vec(data, self.entry), &q),
        }];
        for l in (level + 1..=self.max_level).rev() {
            ep = self.search_layer(data, &q, &ep, 1, l, &mut visited);
            visited = Visited::new(self.len());
        }
        for l in (0..=level.min(self.max_level)).rev() {
            let found = self.search_layer(data, &q, &ep, self.ef_construction, l, &mut visited);
            visited = Visited::new(self.len());
            let cap = if l == 0 { self.m0 } else { self.m };
            let chosen = self.select(data, &found, self.m);
            self.set_neighbours(id, l, &chosen);
            for &nb in &chosen {
                let mut list: Vec<u32> = self.neighbours(nb, l).to_vec();
                list.push(id);
                if list.len() > cap {
                    let nv = self.vec(data, nb);
                    let mut scored: Vec<Scored> = list
                        .iter()
                        .map(|&x| Scored {
                            row: x,
                            score: dot(nv, self.vec(data, x)),
                        })
                        .collect();
                    scored.sort_by(|a, b| b.cmp(a));
                    list = self.select(data, &scored, cap);
                }
                self.set_neighbours(nb, l, &list);
            }
            ep = found;
        }
        if level > self.max_level {
            self.max_level = level;
            self.entry = id;
        }
    }

    /// Approximate top-`k` rows by dot product among rows where `allow` holds.
    pub fn search(
        &self,
        data: &[f32],
        q: &[f32],
        k: usize,
        ef: usize,
        allow: &dyn Fn(usize) -> bool,
    ) -> Vec<Scored> {
        if self.entry == NONE || k == 0 {
            return Vec::new();
        }
        let mut visited = Visited::new(self.len());
        let mut ep = vec![Scored {
            row: self.entry,
            score: dot(self.vec(data, self.entry), q),
        }];
        for l in (1..=self.max_level).rev() {
            ep = self.search_layer(data, q, &ep, 1, l, &mut visited);
            visited = Visited::new(self.len());
        }
        let found = self.search_layer(data, q, &ep, ef.max(k), 0, &mut visited);
        found
            .into_iter()
            .filter(|s| allow(s.row as usize))
            .take(k)
            .collect()
    }

    /// Write the graph to `path` (fsynced).
    pub fn save(&self, path: &Path) -> Result<()> {
        let io = |e| Error::io("write", path, e);
        let f = std::fs::File::create(path).map_err(|e| Error::io("create", path, e))?;
        let mut w = BufWriter::with_capacity(1 << 20, f);
        w.write_all(MAGIC).map_err(io)?;
        for v in [
            self.len() as u64,
            self.m as u64,
            self.ef_construction as u64,
            u64::from(self.entry),
            self.max_level as u64,
            self.rng,
        ] {
            w.write_all(&v.to_le_bytes()).map_err(io)?;
        }
        w.write_all(&self.levels).map_err(io)?;
        w.write_all(bytemuck::cast_slice(&self.layer0))
            .map_err(io)?;
        let mut ids: Vec<&u32> = self.upper.keys().collect();
        ids.sort();
        for id in ids {
            for list in &self.upper[id] {
                w.write_all(&(list.len() as u32).to_le_bytes())
                    .map_err(io)?;
                w.write_all(bytemuck::cast_slice(list)).map_err(io)?;
            }
        }
        let f = w
            .into_inner()
            .map_err(|e| Error::io("write", path, e.into_error()))?;
        f.sync_all().map_err(|e| Error::io("fsync", path, e))
    }

    /// Read a graph written by [`Hnsw::save`].
    pub fn load(path: &Path, dim: usize) -> Result<Self> {
        let mut bytes = Vec::new();
        std::fs::File::open(path)
            .and_then(|mut f| f.read_to_end(&mut bytes))
            .map_err(|e| Error::io("read", path, e))?;
        let bad = |r: &str| Error::Corrupt {
            path: path.to_path_buf(),
            reason: r.to_string(),
        };
        let mut pos = 0usize;
        let mut take = |n: usize| -> Result<&[u8]> {
            let s = bytes
                .get(pos..pos + n)
                .ok_or_else(|| bad("truncated HNSW file"))?;
            pos += n;
            Ok(s)
        };
        if take(8)? != MAGIC {
            return Err(bad("not an HNSW file"));
        }
        let mut u =
            || -> Result<u64> { Ok(u64::from_le_bytes(take(8)?.try_into().expect("8 bytes"))) };
        let (n, m, efc, entry, max_level, rng) = (
            u()? as usize,
            u()? as usize,
            u()? as usize,
            u()? as u32,
            u()? as usize,
            u()?,
        );
        let m0 = 2 * m;
        let levels = take(n)?.to_vec();
        let layer0: Vec<u32> = take(n * m0 * 4)?
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")))
            .collect();
        let mut upper = HashMap::new();
        for (id, &lv) in levels.iter().enumerate() {
            if lv == 0 {
                continue;
            }
            let mut lists = Vec::with_capacity(lv as usize);
            for _ in 0..lv {
                let len = u32::from_le_bytes(take(4)?.try_into().expect("4 bytes")) as usize;
                if len > m {
                    return Err(bad("neighbour list too long"));
                }
                lists.push(
                    take(len * 4)?
                        .chunks_exact(4)
                        .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")))
                        .collect(),
                );
            }
            upper.insert(id as u32, lists);
        }
        if layer0.iter().any(|&x| x != NONE && x as usize >= n) || (n > 0 && entry as usize >= n) {
            return Err(bad("neighbour id out of range"));
        }
        Ok(Self {
            dim,
            m,
            m0,
            ef_construction: efc,
            entry,
            max_level,
            levels,
            layer0,
            upper,
            rng,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vectors::exact_search;
    use rand::{Rng, SeedableRng};

    fn random_unit(n: usize, dim: usize, seed: u64) -> Vec<f32> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut v: Vec<f32> = (0..n * dim).map(|_| rng.random::<f32>() - 0.5).collect();
        for row in v.chunks_exact_mut(dim) {
            let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt();
            row.iter_mut().for_each(|x| *x /= norm);
        }
        v
    }

    /// recall@10 of the graph against exact search on a synthetic set, with the graph
    /// built in two increments and reloaded from disk in between.
    #[test]
    fn recall_at_10_vs_exact() {
        let (n, dim) = (6_000, 32);
        let data = random_unit(n, dim, 7);
        let mut h = Hnsw::new(dim, HnswParams::default());
        h.extend(&data[..n / 2 * dim]);
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("h.bin");
        h.save(&p).expect("save");
        let mut h = Hnsw::load(&p, dim).expect("load");
        h.extend(&data);
        assert_eq!(h.len(), n);
        let queries = random_unit(200, dim, 99);
        let all = |_: usize| true;
        let mut hit = 0;
        for q in queries.chunks_exact(dim) {
            let exact: Vec<u32> = exact_search(&data, dim, q, 10, &all)
                .iter()
                .map(|s| s.row)
                .collect();
            let approx = h.search(&data, q, 10, 64, &all);
            hit += approx.iter().filter(|s| exact.contains(&s.row)).count();
        }
        let recall = hit as f64 / (200.0 * 10.0);
        assert!(recall >= 0.95, "recall@10 = {recall}");
    }

    #[test]
    fn filter_and_corrupt_file() {
        let dim = 8;
        let data = random_unit(500, dim, 1);
        let mut h = Hnsw::new(dim, HnswParams::default());
        h.extend(&data);
        let q = &data[..dim];
        let got = h.search(&data, q, 5, 64, &|r| r % 2 == 1);
        assert!(got.iter().all(|s| s.row % 2 == 1) && !got.is_empty());
        let none = Hnsw::new(dim, HnswParams::default());
        assert!(none.search(&data, q, 5, 64, &|_| true).is_empty());
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("h.bin");
        h.save(&p).expect("save");
        let bytes = std::fs::read(&p).expect("read");
        std::fs::write(&p, &bytes[..bytes.len() / 2]).expect("write");
        assert!(matches!(Hnsw::load(&p, dim), Err(Error::Corrupt { .. })));
    }
}
