//! The GGML element formats this crate understands, with their block geometry.

/// A GGML tensor element format (the subset used by common GGUF chat models).
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GgmlDType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q4K,
    Q5K,
    Q6K,
}

impl GgmlDType {
    /// All supported formats.
    pub const ALL: [GgmlDType; 10] = [
        GgmlDType::F32,
        GgmlDType::F16,
        GgmlDType::Q4_0,
        GgmlDType::Q4_1,
        GgmlDType::Q5_0,
        GgmlDType::Q5_1,
        GgmlDType::Q8_0,
        GgmlDType::Q4K,
        GgmlDType::Q5K,
        GgmlDType::Q6K,
    ];

    /// Elements per block.
    pub const fn block_size(self) -> usize {
        match self {
            GgmlDType::F32 | GgmlDType::F16 => 1,
            GgmlDType::Q4_0 | GgmlDType::Q4_1 | GgmlDType::Q5_0 | GgmlDType::Q5_1 => 32,
            GgmlDType::Q8_0 => 32,
            GgmlDType::Q4K | GgmlDType::Q5K | GgmlDType::Q6K => 256,
        }
    }

    /// Bytes per block.
    pub const fn type_size(self) -> usize {
        match self {
            GgmlDType::F32 => 4,
            GgmlDType::F16 => 2,
            GgmlDType::Q4_0 => 18,
            GgmlDType::Q4_1 => 20,
            GgmlDType::Q5_0 => 22,
            GgmlDType::Q5_1 => 24,
            GgmlDType::Q8_0 => 34,
            GgmlDType::Q4K => 144,
            GgmlDType::Q5K => 176,
            GgmlDType::Q6K => 210,
        }
    }

    /// The numeric type id used in GGUF files.
    pub const fn ggml_id(self) -> u32 {
        match self {
            GgmlDType::F32 => 0,
            GgmlDType::F16 => 1,
            GgmlDType::Q4_0 => 2,
            GgmlDType::Q4_1 => 3,
            GgmlDType::Q5_0 => 6,
            GgmlDType::Q5_1 => 7,
            GgmlDType::Q8_0 => 8,
            GgmlDType::Q4K => 12,
            GgmlDType::Q5K => 13,
            GgmlDType::Q6K => 14,
        }
    }

    /// The format with GGUF type id `id`.
    ///
    /// # Errors
    /// [`crate::Error::UnsupportedType`] for ids outside the supported subset.
    pub fn from_ggml_id(id: u32) -> crate::Result<Self> {
        Self::ALL
            .into_iter()
            .find(|t| t.ggml_id() == id)
            .ok_or(crate::Error::UnsupportedType(id))
    }

    /// Bytes of one row of `cols` elements (`cols` must be a multiple of the block size).
    pub const fn row_bytes(self, cols: usize) -> usize {
        cols / self.block_size() * self.type_size()
    }

    /// Whether activations are quantized to 256-element Q8_K blocks for this format.
    pub(crate) const fn is_k_quant(self) -> bool {
        matches!(self, GgmlDType::Q4K | GgmlDType::Q5K | GgmlDType::Q6K)
    }
}
