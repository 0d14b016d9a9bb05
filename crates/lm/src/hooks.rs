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

use candle_core::Tensor;

use crate::Result;

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
    /// Left-padding of each row, in absolute session positions.
    pub pad: &'a [usize],
}

/// Which positions of a forward call a capture or an intervention touches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Positions {
    /// Every position of every forward call, prompt and generated tokens alike.
    All,
    /// The last `n` positions of a prefill call (e.g. the post-instruction tokens);
    /// ignored on later decode steps.
    LastN(usize),
}

/// A hook called by the forward pass.
pub trait Hook: Send {
    /// Whether the hook wants `point`; the forward pass skips it otherwise.
    fn wants(&self, point: HookPoint) -> bool;
    /// Called with the activation at `point`; return `Some(t)` to replace it by `t`
    /// (same shape and dtype), `None` to leave it unchanged.
    fn call(&mut self, point: HookPoint, x: &Tensor, cx: &HookContext<'_>) -> Result<Option<Tensor>>;
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
pub struct ActivationAddition {
    pub point: HookPoint,
    pub vector: Tensor,
    pub coef: f64,
    pub positions: Positions,
}

/// Projects a unit direction out of every `ResidPre`, `AttnOut` and `MlpOut`, at every
/// position including generated tokens: `x ← x − (x·d̂) d̂` (directional ablation).
pub struct Ablation {
    pub(crate) direction: Tensor,
}
