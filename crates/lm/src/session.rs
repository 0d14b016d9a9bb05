//! `Session`: the mutable state of one conversation (or one batch of prompts) — the
//! per-layer KV caches and each row's left padding — kept apart from the read-only
//! [`crate::Model`] so one loaded model serves many sessions.

use candle_core::{DType, Tensor};

use crate::Result;

/// Keys and values of one layer for every row: `(batch, n_kv_head, capacity, head_dim)`
/// buffers of which the first `len` positions are valid. The first allocation takes the
/// session's reservation when it covers the step (so a generation whose length is known
/// allocates once, exactly); beyond it the buffers grow by half in 64-position steps,
/// so a decode step usually copies only the new token and an unplanned growth wastes at
/// most a third of the buffer (doubling would waste half, and the old and new buffers
/// coexist during the copy).
pub(crate) struct LayerCache {
    k: Option<Tensor>,
    v: Option<Tensor>,
    pub(crate) len: usize,
    cap: usize,
}

impl LayerCache {
    fn new() -> Self {
        Self {
            k: None,
            v: None,
            len: 0,
            cap: 0,
        }
    }

    /// Append `k`, `v` of shape `(batch, n_kv_head, seq, head_dim)` (contiguous) and
    /// return the keys and values of all positions so far.
    pub(crate) fn append(
        &mut self,
        k: &Tensor,
        v: &Tensor,
        reserved: usize,
    ) -> Result<(Tensor, Tensor)> {
        let (b, h, add, d) = k.dims4()?;
        let need = self.len + add;
        if need > self.cap {
            let cap = if self.cap == 0 && reserved >= need {
                reserved
            } else {
                need.max(self.cap + self.cap / 2).next_multiple_of(64)
            };
            let grow = |old: &Option<Tensor>| -> Result<Tensor> {
                let buf = Tensor::zeros((b, h, cap, d), DType::F32, k.device())?;
                if let Some(old) = old
                    && self.len > 0
                {
                    buf.slice_set(&old.narrow(2, 0, self.len)?.contiguous()?, 2, 0)?;
                }
                Ok(buf)
            };
            self.k = Some(grow(&self.k)?);
            self.v = Some(grow(&self.v)?);
            self.cap = cap;
        }
        let kb = self.k.as_ref().expect("allocated above");
        let vb = self.v.as_ref().expect("allocated above");
        kb.slice_set(k, 2, self.len)?;
        vb.slice_set(v, 2, self.len)?;
        self.len = need;
        Ok((kb.narrow(2, 0, need)?, vb.narrow(2, 0, need)?))
    }
}

/// The KV cache and padding of `batch` rows.
///
/// Invariant: every layer cache holds `len` positions; row `b`'s first `pad[b]` positions
/// are padding, masked out for the session's lifetime. Not `Clone`: the caches are
/// written in place.
pub struct Session {
    pub(crate) batch: usize,
    pub(crate) pad: Vec<usize>,
    pub(crate) len: usize,
    pub(crate) caches: Vec<LayerCache>,
    /// Positions the caller expects to hold in all (a hint; 0 = unknown).
    pub(crate) reserved: usize,
}

impl Session {
    pub(crate) fn new(batch: usize, n_layer: usize) -> Self {
        Self {
            batch,
            pad: vec![0; batch],
            len: 0,
            caches: (0..n_layer).map(|_| LayerCache::new()).collect(),
            reserved: 0,
        }
    }

    /// Say how many positions (padding included) this session will hold in all, e.g.
    /// prompt plus `max_tokens`: the KV caches are then allocated once at that size
    /// instead of growing. A hint only: feeding more still works (the caches grow),
    /// and it has no effect on caches already allocated.
    pub fn reserve(&mut self, positions: usize) {
        self.reserved = positions;
    }

    /// Rows in this session.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// Positions held in the cache, padding included.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing has been fed yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Left padding of each row (positions before the row's first real token).
    pub fn pad(&self) -> &[usize] {
        &self.pad
    }

    /// Real tokens held for row `b` (`len - pad[b]`).
    pub fn row_len(&self, b: usize) -> usize {
        self.len - self.pad.get(b).copied().unwrap_or(0)
    }

    /// Forget everything: the next forward call is a fresh prefill.
    pub fn reset(&mut self) {
        let n_layer = self.caches.len();
        let reserved = self.reserved;
        *self = Self::new(self.batch, n_layer);
        self.reserved = reserved;
    }

    /// Drop cached positions after `len` (e.g. to re-feed a conversation that diverges
    /// from what is cached). `len` must not cut into padding of any row.
    pub fn truncate(&mut self, len: usize) {
        if len >= self.len {
            return;
        }
        if len == 0 || self.pad.iter().any(|&p| p >= len) {
            self.reset();
            return;
        }
        self.len = len;
        for c in &mut self.caches {
            c.len = len;
        }
    }

    /// Roll back a failed forward call: the caches keep their first `len` positions.
    pub(crate) fn rollback(&mut self, len: usize, pad: Vec<usize>) {
        self.len = len;
        self.pad = pad;
        for c in &mut self.caches {
            c.len = c.len.min(len);
        }
        if len == 0 {
            self.reset();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn kv(add: usize, fill: f32) -> Tensor {
        Tensor::full(fill, (1, 2, add, 4), &Device::Cpu).expect("small tensor")
    }

    #[test]
    fn reservation_sizes_the_first_allocation_exactly() {
        let mut c = LayerCache::new();
        c.append(&kv(10, 1.0), &kv(10, 1.0), 37).expect("append");
        assert_eq!(c.cap, 37);
        // Within the reservation: no reallocation.
        c.append(&kv(27, 2.0), &kv(27, 2.0), 37).expect("append");
        assert_eq!((c.len, c.cap), (37, 37));
        // Past it: grows by half, in 64-position steps, keeping what was there.
        let (k, _) = c.append(&kv(1, 3.0), &kv(1, 3.0), 37).expect("append");
        assert_eq!((c.len, c.cap), (38, 64));
        let col: Vec<f32> = k
            .get(0)
            .and_then(|t| t.get(0))
            .and_then(|t| t.get_on_dim(1, 0))
            .and_then(|t| t.to_vec1())
            .expect("column");
        let mut want = vec![1.0; 10];
        want.extend(vec![2.0; 27]);
        want.push(3.0);
        assert_eq!(col, want);
    }

    #[test]
    fn without_reservation_growth_is_by_half() {
        let mut c = LayerCache::new();
        c.append(&kv(128, 0.0), &kv(128, 0.0), 0).expect("append");
        assert_eq!(c.cap, 128);
        c.append(&kv(1, 0.0), &kv(1, 0.0), 0).expect("append");
        assert_eq!(c.cap, 192);
        // A reservation smaller than the first step is ignored.
        let mut d = LayerCache::new();
        d.append(&kv(100, 0.0), &kv(100, 0.0), 50).expect("append");
        assert_eq!(d.cap, 128);
    }
}
