//! `Session`: the mutable state of one conversation (or one batch of prompts) — the
//! per-layer KV caches and each row's left padding — kept apart from the read-only
//! [`crate::Model`] so one loaded model serves many sessions.

use candle_core::{DType, Tensor};

use crate::Result;

/// Keys and values of one layer for every row: `(batch, n_kv_head, capacity, head_dim)`
/// f16 buffers of which the first `len` positions are valid. f16 as in llama.cpp's
/// default KV cache: the forward pass rounds K and V to f16 anyway (to stay on
/// llama.cpp's numerical path), so storing them as f32 would double the largest
/// allocation of a session for nothing. The first allocation takes the
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

    /// Append `k`, `v` of shape `(batch, n_kv_head, seq, head_dim)` (contiguous, any
    /// float dtype; rounded to f16 as they are stored) and return the f16 keys and values
    /// of all positions so far: `(batch, n_kv_head, len, head_dim)` views of the buffers
    /// (not contiguous when the buffer has spare capacity).
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
                let buf = Tensor::zeros((b, h, cap, d), DType::F16, k.device())?;
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
        kb.slice_set(&k.to_dtype(DType::F16)?, 2, self.len)?;
        vb.slice_set(&v.to_dtype(DType::F16)?, 2, self.len)?;
        self.len = need;
        Ok((kb.narrow(2, 0, need)?, vb.narrow(2, 0, need)?))
    }
}

impl LayerCache {
    /// `n` rows, each a copy of this one-row cache's positions, in buffers of
    /// `reserved` positions (at least those held).
    fn repeat(&self, n: usize, reserved: usize) -> Result<LayerCache> {
        let (Some(k), Some(v)) = (&self.k, &self.v) else {
            return Ok(LayerCache::new());
        };
        if self.len == 0 {
            return Ok(LayerCache::new());
        }
        let cap = reserved.max(self.len);
        let rep = |t: &Tensor| -> Result<Tensor> {
            let (_, h, _, d) = t.dims4()?;
            let buf = Tensor::zeros((n, h, cap, d), t.dtype(), t.device())?;
            let rows = t
                .narrow(2, 0, self.len)?
                .broadcast_as((n, h, self.len, d))?
                .contiguous()?;
            buf.slice_set(&rows, 2, 0)?;
            Ok(buf)
        };
        Ok(LayerCache {
            k: Some(rep(k)?),
            v: Some(rep(v)?),
            len: self.len,
            cap,
        })
    }

    /// Keep only batch rows `rows` (indices into the current rows, in that order).
    fn select_rows(&mut self, rows: &Tensor) -> Result<()> {
        if let (Some(k), Some(v)) = (&self.k, &self.v) {
            let (k, v) = (k.index_select(rows, 0)?, v.index_select(rows, 0)?);
            self.k = Some(k);
            self.v = Some(v);
        }
        Ok(())
    }
}

/// The KV cache and padding of `batch` rows.
///
/// Invariant: every layer cache holds `len` positions; row `b` has `pad[b]` positions
/// of padding starting at `pad_start` (0 for a left-padded prefill; the length of the
/// shared prefix for a session made by [`Session::fork`]), masked out for the session's
/// lifetime. Not `Clone`: the caches are written in place.
pub struct Session {
    pub(crate) batch: usize,
    pub(crate) pad: Vec<usize>,
    pub(crate) pad_start: usize,
    pub(crate) len: usize,
    pub(crate) caches: Vec<LayerCache>,
    /// Positions the caller expects to hold in all (a hint; 0 = unknown).
    pub(crate) reserved: usize,
    /// Whether the next call opens the rows' prompts: rows may then differ in length and
    /// are padded (true for an empty session and a fresh fork).
    pub(crate) open: bool,
    /// First layer whose KV cache this session holds: 0, unless it was filled by
    /// [`crate::Model::forward_from`], which skips the layers below its start.
    pub(crate) first_layer: usize,
}

/// What a forward call may change in a [`Session`] besides the caches' contents, saved so
/// a failed call can be rolled back.
pub(crate) struct Mark {
    len: usize,
    pad: Vec<usize>,
    pad_start: usize,
    open: bool,
    first_layer: usize,
}

impl Session {
    pub(crate) fn new(batch: usize, n_layer: usize) -> Self {
        Self {
            batch,
            pad: vec![0; batch],
            pad_start: 0,
            len: 0,
            caches: (0..n_layer).map(|_| LayerCache::new()).collect(),
            reserved: 0,
            open: true,
            first_layer: 0,
        }
    }

    /// A session of `batch` rows that each start with this one-row session's cached
    /// positions (a shared prompt prefix, e.g. a chat template's system turn, computed
    /// once). The next call feeds each row's own continuation; like a prefill, rows may
    /// differ in length (each row is padded right after the prefix, masked, with RoPE
    /// positions continuing from the prefix), so row `b`'s logits equal those of
    /// feeding prefix + its tokens to a fresh session. Allocates `reserve` positions
    /// (at least the prefix) per row.
    ///
    /// Errors: [`crate::Error::InvalidArgument`] when this session has more than one row
    /// or holds padding.
    pub fn fork(&self, batch: usize, reserve: usize) -> Result<Session> {
        if self.batch != 1 || self.pad.iter().any(|&p| p > 0) {
            return Err(crate::Error::InvalidArgument(format!(
                "only an unpadded one-row session can be forked (this one has {} rows)",
                self.batch
            )));
        }
        let batch = batch.max(1);
        let caches = self
            .caches
            .iter()
            .map(|c| c.repeat(batch, reserve))
            .collect::<Result<Vec<_>>>()?;
        Ok(Session {
            batch,
            pad: vec![0; batch],
            pad_start: self.len,
            len: self.len,
            caches,
            reserved: reserve,
            open: true,
            first_layer: self.first_layer,
        })
    }

    /// Keep only rows `rows` (indices into the current rows, in the order given), e.g.
    /// to drop the rows of a batch that finished generating so later steps do not
    /// compute them. Each kept row keeps its cache and padding.
    ///
    /// Errors: [`crate::Error::InvalidArgument`] for an empty, out-of-range or
    /// repeated row list.
    pub fn retain_rows(&mut self, rows: &[usize]) -> Result<()> {
        let mut seen = vec![false; self.batch];
        for &r in rows {
            if r >= self.batch || std::mem::replace(&mut seen[r], true) {
                return Err(crate::Error::InvalidArgument(format!(
                    "row {r} is out of range or repeated (batch of {})",
                    self.batch
                )));
            }
        }
        if rows.is_empty() {
            return Err(crate::Error::InvalidArgument(
                "a session keeps at least one row".into(),
            ));
        }
        if rows.len() == self.batch && rows.iter().enumerate().all(|(i, &r)| i == r) {
            return Ok(());
        }
        let idx: Vec<u32> = rows.iter().map(|&r| r as u32).collect();
        let device = self
            .caches
            .iter()
            .find_map(|c| c.k.as_ref().map(|k| k.device().clone()))
            .unwrap_or(candle_core::Device::Cpu);
        let idx = Tensor::from_vec(idx, rows.len(), &device)?;
        for c in &mut self.caches {
            c.select_rows(&idx)?;
        }
        self.pad = rows.iter().map(|&r| self.pad[r]).collect();
        self.batch = rows.len();
        Ok(())
    }

    pub(crate) fn mark(&self) -> Mark {
        Mark {
            len: self.len,
            pad: self.pad.clone(),
            pad_start: self.pad_start,
            open: self.open,
            first_layer: self.first_layer,
        }
    }

    /// RoPE position of absolute cache slot `abs` in row `b`: padding slots are not
    /// counted (a padding slot gets a position no real token attends to).
    pub(crate) fn position(&self, b: usize, abs: usize) -> usize {
        if abs < self.pad_start {
            abs
        } else {
            abs.saturating_sub(self.pad[b])
        }
    }

    /// Whether absolute slot `abs` of row `b` is padding.
    pub(crate) fn is_pad(&self, b: usize, abs: usize) -> bool {
        abs >= self.pad_start && abs < self.pad_start + self.pad[b]
    }

    /// Say how many positions (padding included) this session will hold in all, e.g.
    /// prompt plus `max_tokens`: the KV caches are then allocated once at that size
    /// instead of growing. A hint only: feeding more still works (the caches grow),
    /// and it has no effect on caches already allocated.
    pub fn reserve(&mut self, positions: usize) {
        self.reserved = positions;
    }

    /// First layer this session's KV cache holds (0 unless it was filled by
    /// [`crate::Model::forward_from`]).
    pub fn first_layer(&self) -> usize {
        self.first_layer
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

    /// Padding of each row: `pad()[b]` masked positions starting at [`Self::pad_start`].
    pub fn pad(&self) -> &[usize] {
        &self.pad
    }

    /// Where the rows' padding starts: 0 after a left-padded prefill, the shared
    /// prefix's length in a forked session.
    pub fn pad_start(&self) -> usize {
        self.pad_start
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
        if len == 0 || self.pad.iter().any(|&p| p > 0 && self.pad_start + p >= len) {
            self.reset();
            return;
        }
        self.len = len;
        self.open = false;
        for c in &mut self.caches {
            c.len = len;
        }
    }

    /// Roll back a failed forward call to `mark`: the caches keep their first `len`
    /// positions.
    pub(crate) fn rollback(&mut self, mark: Mark) {
        let len = mark.len;
        self.len = len;
        self.pad = mark.pad;
        self.pad_start = mark.pad_start;
        self.open = mark.open;
        self.first_layer = mark.first_layer;
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
            .and_then(|t| t.to_dtype(DType::F32))
            .and_then(|t| t.to_vec1())
            .expect("column");
        let mut want = vec![1.0; 10];
        want.extend(vec![2.0; 27]);
        want.push(3.0);
        assert_eq!(col, want);
    }

    #[test]
    fn keys_and_values_are_stored_as_f16_rounded_to_nearest() {
        let mut c = LayerCache::new();
        // The f16 step at 1.0 is 2^-10. 1 + 2^-11 is halfway between 1 and 1 + 2^-10
        // (ties to even: 1); 1 + 3·2^-11 is halfway between 1 + 2^-10 and 1 + 2^-9
        // (ties to even: 1 + 2^-9).
        let x = 1.0 + 2f32.powi(-11);
        let y = 1.0 + 3.0 * 2f32.powi(-11);
        let (k, v) = c.append(&kv(1, x), &kv(1, y), 0).expect("append");
        assert_eq!((k.dtype(), v.dtype()), (DType::F16, DType::F16));
        let all = |t: &Tensor| -> Vec<f32> {
            t.to_dtype(DType::F32)
                .and_then(|t| t.flatten_all())
                .and_then(|t| t.to_vec1())
                .expect("values")
        };
        assert_eq!(all(&k), vec![1.0; 8]);
        assert_eq!(all(&v), vec![1.0 + 2f32.powi(-9); 8]);
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
