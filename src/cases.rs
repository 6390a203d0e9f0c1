//! The canonical benchmark cases of DESIGN.md section 5 (bf16, 32 query heads, head
//! dim 128 unless changed), shared by the bench program, the criterion benches and the
//! demo, with the same names as the peers' script (`shared/peers/flex_sdpa.py`).

use crate::error::Result;
use crate::mask::{Mask, VideoLayout};

/// One case: shapes, the mask, and the dense mask it is compared with (plain causal
/// for self-attention, no mask for cross-attention) on the same shape.
#[derive(Debug, Clone)]
pub struct Case {
    /// The peers' name, e.g. `fwbc_t64`.
    pub name: &'static str,
    /// `B`.
    pub batch: usize,
    /// `Hq`.
    pub heads_q: usize,
    /// `Hkv`.
    pub heads_kv: usize,
    /// `D`.
    pub head_dim: usize,
    /// The mask under test.
    pub mask: Mask,
    /// The dense baseline's mask.
    pub dense: Mask,
}

impl Case {
    /// Effective FLOPs of the forward pass: `4 * B * Hq * D * visible_pairs(mask)`.
    pub fn flops(&self, mask: &Mask) -> f64 {
        4.0 * (self.batch * self.heads_q * self.head_dim) as f64 * mask.visible_pairs() as f64
    }
}

/// Names of the forward cases, in the order of DESIGN.md (XAttention and the random
/// block-sparse cases come with the block-selection kernels).
pub const FORWARD_CASES: &[&str] =
    &["causal_16k", "causal_32k", "causal_64k", "fwbc_t16", "fwbc_t64", "ccam_t16_b8", "ccam_t96_b1"];

/// Builds case `name` with `heads_kv` key/value heads and head dim `head_dim`.
pub fn case(name: &str, heads_kv: usize, head_dim: usize) -> Result<Case> {
    let causal = |l: usize| -> Result<(usize, Mask, Mask)> { Ok((1, Mask::causal(l, l)?, Mask::causal(l, l)?)) };
    let fwbc = |layout: &str| -> Result<(usize, Mask, Mask)> {
        let layout: VideoLayout = layout.parse()?;
        Ok((1, Mask::frame_block_causal(&layout)?, Mask::causal(layout.len(), layout.len())?))
    };
    let ccam = |b: usize, t: usize| -> Result<(usize, Mask, Mask)> {
        Ok((b, Mask::causal_cross(1024, t, 729)?, Mask::full(1024, t * 729)?))
    };
    let (batch, mask, dense) = match name {
        "causal_16k" => causal(16384)?,
        "causal_32k" => causal(32768)?,
        "causal_64k" => causal(65536)?,
        "fwbc_t16" => fwbc("text:64,frames:16x576,text:128")?,
        "fwbc_t64" => fwbc("text:64,frames:64x256,text:128")?,
        "ccam_t16_b8" => ccam(8, 16)?,
        "ccam_t96_b1" => ccam(1, 96)?,
        other => return Err(crate::error::invalid("case", format!("unknown case {other}; known: {FORWARD_CASES:?}"))),
    };
    let name = FORWARD_CASES.iter().find(|n| **n == name).expect("matched above");
    Ok(Case { name, batch, heads_q: 32, heads_kv, head_dim, mask, dense })
}
