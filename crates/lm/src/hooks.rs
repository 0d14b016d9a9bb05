//! Hook points on the residual stream: the lab's window into the model.
//!
//! The forward pass calls a [`Hook`] at four kinds of [`HookPoint`]: the input of
//! every layer (the residual stream before the layer), the attention output and the
//! MLP output of every layer (before they are added to the residual stream), and the
//! output of the final norm. A hook may read the activation (capture) or return a
//! replacement (intervene). With no hook set the forward pass never materialises
//! anything extra: hooks cost nothing unless used.
//!
//! CONTRACT (written before the implementation; keep in sync):
//! * activations are `(batch, seq, hidden)` f32 tensors on the model's device;
//! * `HookContext::start_pos` is the number of positions already in the session's
//!   KV cache before this forward call, so generated tokens have `start_pos > 0`;
//! * rows are left-padded: `HookContext::pad[b]` padding positions precede row b's
//!   first real token (in absolute session positions).

use candle_core::{DType, Device, Tensor};

use crate::{Error, Result};

/// Where in the forward pass a hook is called.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HookPoint {
    /// Residual stream at the input of layer `l` (`resid_pre`); `ResidPre(n_layer)` is
    /// the residual stream after the last layer, before the final norm.
    ResidPre(usize),
    /// Output of layer `l`'s attention block (after `o_proj`), before it is added.
    AttnOut(usize),
    /// Output of layer `l`'s MLP block (after `down_proj`), before it is added.
    MlpOut(usize),
    /// Output of the final RMSNorm (input of the LM head).
    FinalNorm,
}

/// What the forward pass tells a hook about the activation it is given.
#[derive(Debug, Clone, Copy)]
pub struct HookContext<'a> {
    /// Rows in the batch.
    pub batch: usize,
    /// Positions in this forward call.
    pub seq_len: usize,
    /// Positions already in the KV cache before this call (0 for a prefill).
    pub start_pos: usize,
    /// Padding of each row in the session (masked positions that come before the row's
    /// tokens of its prompt-opening call: at the start of a prefill, or right after the
    /// shared prefix of a forked session).
    pub pad: &'a [usize],
    /// Whether this call opens the rows' prompts (a prefill, or the first call on a
    /// forked session): the call [`Positions::LastN`] applies to.
    pub opening: bool,
}

/// Which positions of a forward call a capture or an intervention touches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Positions {
    /// Every position of every forward call, prompt and generated tokens alike.
    All,
    /// The last `n` positions of the call that opens the prompts (a prefill, or the
    /// first call on a forked session; e.g. the post-instruction tokens); ignored on
    /// later decode steps.
    LastN(usize),
}

/// A hook called by the forward pass.
pub trait Hook: Send {
    /// Whether the hook wants `point`; the forward pass skips it otherwise.
    fn wants(&self, point: HookPoint) -> bool;
    /// Called with the activation at `point`; return `Some(t)` to replace it by `t`
    /// (same shape and dtype), `None` to leave it unchanged.
    fn call(
        &mut self,
        point: HookPoint,
        x: &Tensor,
        cx: &HookContext<'_>,
    ) -> Result<Option<Tensor>>;

    /// Whether the hook edits each position from that position's activation alone and
    /// records nothing (an ablation, an addition at every position). The forward pass
    /// may then leave out positions whose result nobody reads: when only the last
    /// position's logits are wanted, the last layer's attention output and MLP, and
    /// the points after them, are computed (and hooked) for that position only. The
    /// default, `false`, makes every point see every position.
    fn positionwise(&self) -> bool {
        false
    }

    /// An independent copy of this hook for another forward pass that runs at the same
    /// time on other rows (the lab runs independent batches side by side, one per
    /// core), or `None` when the hook must see every row itself (a capture that
    /// accumulates). A copy must behave on its rows exactly as the original would.
    /// The default, `None`, keeps such callers to one pass at a time.
    fn fork(&self) -> Option<Box<dyn Hook>> {
        None
    }
}

/// Several hooks applied in order.
#[derive(Default)]
pub struct HookList(pub Vec<Box<dyn Hook>>);

/// Accumulates per-point, per-position means in f64 over many forward calls without
/// storing activations (for difference-in-means directions). Padding rows never count.
pub struct MeanCapture {
    pub(crate) points: Vec<HookPoint>,
    pub(crate) last_n: usize,
    /// sums[point_index][position][hidden], position 0 = `last_n` from the end.
    pub(crate) sums: Vec<Vec<Vec<f64>>>,
    pub(crate) count: usize,
}

/// Keeps raw activations at the chosen points and positions (small runs only).
pub struct RawCapture {
    pub(crate) points: Vec<HookPoint>,
    pub(crate) positions: Positions,
    /// One `(batch, positions, hidden)` tensor per call, per point.
    pub(crate) captured: Vec<(HookPoint, Tensor)>,
}

/// Adds `coef · vector` to the activation at `point` (activation addition / steering).
#[derive(Clone)]
pub struct ActivationAddition {
    pub point: HookPoint,
    pub vector: Tensor,
    pub coef: f64,
    pub positions: Positions,
}

/// Projects a unit direction out of every `ResidPre`, `AttnOut` and `MlpOut`, at every
/// position including generated tokens: `x ← x − (x·d̂) d̂` (directional ablation).
#[derive(Clone)]
pub struct Ablation {
    pub(crate) direction: Tensor,
}

impl Hook for HookList {
    fn wants(&self, point: HookPoint) -> bool {
        self.0.iter().any(|h| h.wants(point))
    }

    fn positionwise(&self) -> bool {
        self.0.iter().all(|h| h.positionwise())
    }

    fn fork(&self) -> Option<Box<dyn Hook>> {
        let hooks: Option<Vec<Box<dyn Hook>>> = self.0.iter().map(|h| h.fork()).collect();
        Some(Box::new(HookList(hooks?)))
    }

    fn call(
        &mut self,
        point: HookPoint,
        x: &Tensor,
        cx: &HookContext<'_>,
    ) -> Result<Option<Tensor>> {
        let mut cur: Option<Tensor> = None;
        for h in &mut self.0 {
            if !h.wants(point) {
                continue;
            }
            let input = cur.as_ref().unwrap_or(x);
            if let Some(y) = h.call(point, input, cx)? {
                cur = Some(y);
            }
        }
        Ok(cur)
    }
}

impl<H: Hook + ?Sized> Hook for &mut H {
    fn wants(&self, point: HookPoint) -> bool {
        (**self).wants(point)
    }

    fn positionwise(&self) -> bool {
        (**self).positionwise()
    }

    fn fork(&self) -> Option<Box<dyn Hook>> {
        (**self).fork()
    }

    fn call(
        &mut self,
        point: HookPoint,
        x: &Tensor,
        cx: &HookContext<'_>,
    ) -> Result<Option<Tensor>> {
        (**self).call(point, x, cx)
    }
}

/// The positions `positions` selects in a call of `seq_len` positions, as
/// `(first, count)`; `None` when the call is skipped (a decode step for `LastN`).
///
/// Errors: [`Error::Hook`] when a prefill is shorter than `n`.
fn select(positions: Positions, cx: &HookContext<'_>) -> Result<Option<(usize, usize)>> {
    match positions {
        Positions::All => Ok(Some((0, cx.seq_len))),
        Positions::LastN(_) if !cx.opening => Ok(None),
        Positions::LastN(n) => {
            // Every row must have n real tokens (left padding only precedes them).
            let shortest = cx.seq_len - cx.pad.iter().copied().max().unwrap_or(0);
            if n > shortest {
                return Err(Error::Hook(format!(
                    "asked for the last {n} positions but a prompt has only {shortest} tokens"
                )));
            }
            Ok(Some((cx.seq_len - n, n)))
        }
    }
}

impl MeanCapture {
    /// Capture the means of the last `last_n` prompt positions at `points`.
    pub fn new(points: impl Into<Vec<HookPoint>>, last_n: usize) -> Self {
        let points = points.into();
        Self {
            sums: vec![Vec::new(); points.len()],
            points,
            last_n,
            count: 0,
        }
    }

    /// The points captured, in the order of [`Self::means`].
    pub fn points(&self) -> &[HookPoint] {
        &self.points
    }

    /// Prompts accumulated so far (rows of prefill calls).
    pub fn count(&self) -> usize {
        self.count
    }

    /// Means `[point][position][hidden]`, position 0 being `last_n` from the end. Empty
    /// inner vectors when nothing was captured.
    pub fn means(&self) -> Vec<Vec<Vec<f64>>> {
        let n = self.count.max(1) as f64;
        self.sums
            .iter()
            .map(|p| {
                p.iter()
                    .map(|pos| pos.iter().map(|s| s / n).collect())
                    .collect()
            })
            .collect()
    }

    /// Forget everything accumulated.
    pub fn clear(&mut self) {
        self.sums = vec![Vec::new(); self.points.len()];
        self.count = 0;
    }
}

impl Hook for MeanCapture {
    fn wants(&self, point: HookPoint) -> bool {
        self.points.contains(&point)
    }

    fn call(
        &mut self,
        point: HookPoint,
        x: &Tensor,
        cx: &HookContext<'_>,
    ) -> Result<Option<Tensor>> {
        let Some((first, n)) = select(Positions::LastN(self.last_n), cx)? else {
            return Ok(None);
        };
        let Some(pi) = self.points.iter().position(|&p| p == point) else {
            return Ok(None);
        };
        let part = x.narrow(1, first, n)?.to_dtype(DType::F64)?.sum(0)?; // (n, hidden)
        let rows = part.to_vec2::<f64>()?;
        let sums = &mut self.sums[pi];
        if sums.is_empty() {
            *sums = rows;
        } else {
            for (acc, row) in sums.iter_mut().zip(rows) {
                for (a, v) in acc.iter_mut().zip(row) {
                    *a += v;
                }
            }
        }
        // Count prompts once per call, at the first listed point.
        if pi == 0 {
            self.count += cx.batch;
        }
        Ok(None)
    }
}

impl RawCapture {
    /// Keep the activations at `points` for `positions`.
    pub fn new(points: impl Into<Vec<HookPoint>>, positions: Positions) -> Self {
        Self {
            points: points.into(),
            positions,
            captured: Vec::new(),
        }
    }

    /// Everything captured, in call order: `(point, (batch, positions, hidden))`.
    pub fn captured(&self) -> &[(HookPoint, Tensor)] {
        &self.captured
    }

    /// The tensors captured at `point`, in call order.
    pub fn at(&self, point: HookPoint) -> Vec<&Tensor> {
        self.captured
            .iter()
            .filter(|(p, _)| *p == point)
            .map(|(_, t)| t)
            .collect()
    }

    /// Take the captured tensors out.
    pub fn take(&mut self) -> Vec<(HookPoint, Tensor)> {
        std::mem::take(&mut self.captured)
    }
}

impl Hook for RawCapture {
    fn wants(&self, point: HookPoint) -> bool {
        self.points.contains(&point)
    }

    fn call(
        &mut self,
        point: HookPoint,
        x: &Tensor,
        cx: &HookContext<'_>,
    ) -> Result<Option<Tensor>> {
        if let Some((first, n)) = select(self.positions, cx)? {
            self.captured
                .push((point, x.narrow(1, first, n)?.contiguous()?));
        }
        Ok(None)
    }
}

impl ActivationAddition {
    /// Add `coef · vector` (length `hidden`) at `point` for `positions`.
    pub fn new(
        point: HookPoint,
        vector: &[f32],
        coef: f64,
        positions: Positions,
        device: &Device,
    ) -> Result<Self> {
        Ok(Self {
            point,
            vector: Tensor::new(vector, device)?,
            coef,
            positions,
        })
    }
}

impl Hook for ActivationAddition {
    fn wants(&self, point: HookPoint) -> bool {
        point == self.point
    }

    fn positionwise(&self) -> bool {
        self.positions == Positions::All
    }

    fn fork(&self) -> Option<Box<dyn Hook>> {
        Some(Box::new(self.clone()))
    }

    fn call(
        &mut self,
        _point: HookPoint,
        x: &Tensor,
        cx: &HookContext<'_>,
    ) -> Result<Option<Tensor>> {
        let Some((first, n)) = select(self.positions, cx)? else {
            return Ok(None);
        };
        let hidden = x.dim(2)?;
        if self.vector.elem_count() != hidden {
            return Err(Error::Hook(format!(
                "steering vector has {} elements, the residual stream {hidden}",
                self.vector.elem_count()
            )));
        }
        let delta = (self.vector.to_dtype(x.dtype())?.reshape((1, 1, hidden))? * self.coef)?;
        let y = if first == 0 && n == cx.seq_len {
            x.broadcast_add(&delta)?
        } else {
            let head = x.narrow(1, 0, first)?;
            let tail = x.narrow(1, first, n)?.broadcast_add(&delta)?;
            Tensor::cat(&[&head, &tail], 1)?
        };
        Ok(Some(y))
    }
}

impl Ablation {
    /// Ablate `direction` (normalised here).
    ///
    /// Errors: [`Error::Hook`] for a zero or non-finite direction.
    pub fn new(direction: &[f32], device: &Device) -> Result<Self> {
        let norm = direction
            .iter()
            .map(|&v| f64::from(v) * f64::from(v))
            .sum::<f64>()
            .sqrt();
        if !(norm.is_finite() && norm > 0.0) {
            return Err(Error::Hook(
                "cannot ablate a zero or non-finite direction".into(),
            ));
        }
        let unit: Vec<f32> = direction
            .iter()
            .map(|&v| (f64::from(v) / norm) as f32)
            .collect();
        Ok(Self {
            direction: Tensor::new(unit, device)?,
        })
    }

    /// The unit direction.
    pub fn direction(&self) -> &Tensor {
        &self.direction
    }
}

impl Hook for Ablation {
    fn wants(&self, point: HookPoint) -> bool {
        matches!(
            point,
            HookPoint::ResidPre(_) | HookPoint::AttnOut(_) | HookPoint::MlpOut(_)
        )
    }

    fn positionwise(&self) -> bool {
        true
    }

    fn fork(&self) -> Option<Box<dyn Hook>> {
        Some(Box::new(self.clone()))
    }

    fn call(
        &mut self,
        _point: HookPoint,
        x: &Tensor,
        _cx: &HookContext<'_>,
    ) -> Result<Option<Tensor>> {
        let hidden = x.dim(2)?;
        if self.direction.elem_count() != hidden {
            return Err(Error::Hook(format!(
                "ablation direction has {} elements, the residual stream {hidden}",
                self.direction.elem_count()
            )));
        }
        let d = self
            .direction
            .to_dtype(x.dtype())?
            .reshape((1, 1, hidden))?;
        let proj = x.broadcast_mul(&d)?.sum_keepdim(2)?; // (b, s, 1)
        Ok(Some(x.broadcast_sub(&proj.broadcast_mul(&d)?)?))
    }
}
