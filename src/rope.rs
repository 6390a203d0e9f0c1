//! Temporal-Aware Dual RoPE (TC-LLaVA, arXiv 2409.03206): rotary position embedding
//! whose angle adds a temporal index to the usual global position.
//!
//! # The rotation
//!
//! For head dim `D` (even), pair `i` in `0..D/2` of a query or key vector of token
//! `p` is rotated by the angle
//!
//! ```text
//! angle_i(p) = (p_global + gamma * t(p)) * theta_i,     theta_i = base^(-2i/D)
//! ```
//!
//! (`base` 10000 and `gamma` 1 by default, see [`DualRope`]). Rotating by the global
//! position and then by the temporal one (the paper's two RoPEs) is a single rotation
//! by the sum, which is how it is computed. The factor `p_global + gamma * t(p)` is
//! the token's *position multiplier*; [`positions`] computes it from a
//! [`VideoLayout`]. Attention scores between a rotated query and key depend only on
//! the difference of their multipliers, as with plain RoPE.
//!
//! **Pairing** ([`RopeStyle`]): `Half` (default) pairs `x[i]` with `x[i + D/2]`,
//! the "rotate_half" convention of the HF LLaMA, Qwen and Vicuna implementations
//! (LLaVA's language models); `Interleaved` pairs `x[2i]` with `x[2i + 1]` (GPT-J,
//! Meta's original LLaMA code). Either way `(a, b)` becomes
//! `(a cos - b sin, a sin + b cos)`.
//!
//! # The temporal index `t`, text tokens included
//!
//! All indices are 0-based; because scores depend only on differences of
//! multipliers, shifting every `t` by the same constant (0- or 1-based frames)
//! changes nothing. Let `F(p)` be the number of frames that end at or before token
//! `p` (for a visual token: the 0-based index of its frame over all frames of the
//! layout) and `X(p)` the number of text tokens before `p`.
//!
//! - [`TimeIndex::Steps`] (default): `t(p) = F(p) + X(p)`. Every text token is a time
//!   step of its own and every frame is one time step shared by all its tokens, so
//!   the temporal index is the position in the sequence with each frame collapsed to
//!   one token. Visual tokens of one frame share `t`; a text token's `t` keeps
//!   counting from the last frame.
//! - [`TimeIndex::Frames`]: `t(p) = F(p)`. A text token gets the number of frames
//!   before it (text before the video 0, text after `T` frames `T`): text-to-text
//!   distances stay those of plain RoPE.
//!
//! Source of the default: the TC-LLaVA text available here (abstract, figure
//! captions) says that "both visual and text tokens acquire additional temporal
//! positional information while preserving the global relative positional
//! relationships" (Fig. 2) but its equations were not available to this crate. The
//! only public implementation found is the one VideoRoPE (arXiv 2502.05173) uses to
//! compare against TC-LLaVA under the name TAD-RoPE
//! (github.com/Wiselnn570/VideoRoPE, `videorope-transformer/modeling_videorope.py`,
//! `get_time_rope_index` plus `get_vanilla_rope_index`): text tokens get consecutive
//! temporal indices, all tokens of a frame share one, and the position is
//! `vanilla + time` (gamma 1; decoding continues at `2 * context_len + delta`).
//! `Steps` with `gamma = 1` reproduces those position ids exactly, and text tokens
//! then acquire temporal information as the caption says. `Frames` is the reading
//! "t is the frame index, text has none", for comparison.
//!
//! # Decoding with a KV cache
//!
//! Describe the whole sequence (cached and new tokens) and ask for the new tokens'
//! multipliers with [`positions_range`]; tokens past the end of the layout are text,
//! which is what a decoder generates.
//!
//! ```
//! use maskattn::rope::{self, DualRope, TimeIndex};
//! use maskattn::VideoLayout;
//! let layout: VideoLayout = "text:2,frames:2x3,text:1".parse()?;
//! // t (Steps):  text 0 1 | frame 2 2 2 | frame 3 3 3 | text 4
//! assert_eq!(rope::time_indices(&layout, TimeIndex::Steps), [0, 1, 2, 2, 2, 3, 3, 3, 4]);
//! let dual = DualRope::default(); // base 10000, gamma 1, Half pairing, Steps
//! let m = rope::positions(&layout, &dual)?;
//! assert_eq!(m, [0.0, 2.0, 4.0, 5.0, 6.0, 8.0, 9.0, 10.0, 12.0]);
//! // Two decoded tokens after the layout continue as text: p = 9, 10 and t = 5, 6.
//! assert_eq!(rope::positions_range(&layout, &dual, 9..11)?, [14.0, 16.0]);
//!
//! // Rotate x [B, L, H, D] = [1, 9, 2, 8] in f64.
//! let x = ndarray::Array4::<f32>::ones((1, 9, 2, 8));
//! let y = rope::apply_reference(x.view(), &m, &dual)?;
//! // Token 0 has multiplier 0: unchanged. Rotations keep every pair's norm.
//! assert!((y[[0, 0, 1, 3]] - 1.0).abs() < 1e-15);
//! let (a, b) = (y[[0, 4, 0, 1]], y[[0, 4, 0, 5]]);
//! assert!((a * a + b * b - 2.0).abs() < 1e-12);
//! # Ok::<(), maskattn::Error>(())
//! ```
//!
//! # On the GPU
//!
//! `Gpu::dual_rope_inplace` (feature `cuda`) rotates bf16/f16 Q and K in place from
//! the same multipliers, uploaded as `f64`. It reduces `multiplier * theta_i / pi`
//! modulo 2 in `f64` and evaluates `sincospif` in `f32` on the reduced value, so the
//! angle is accurate to about 1e-7 rad for any multiplier below 1e8, where the `f32`
//! product `multiplier * inv_freq` of HF's implementation is off by up to about
//! 1.2e-7 * multiplier rad (0.016 rad at 131072). It then rotates in `f32` and
//! rounds once to the element type. `theta_i` is evaluated in `f64` by both the
//! reference and the kernel (HF rounds `inv_freq` to `f32`; the difference is below
//! HF's own angle rounding).

use std::ops::Range;

use ndarray::{Array4, ArrayView4};

use crate::error::{invalid, Error, Result};
use crate::mask::{Segment, VideoLayout};
use crate::shape::Element;

/// Which coordinates form the rotated pairs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum RopeStyle {
    /// `x[i]` with `x[i + D/2]` (HF LLaMA/Qwen "rotate_half").
    #[default]
    Half,
    /// `x[2i]` with `x[2i + 1]` (GPT-J, Meta's original LLaMA).
    Interleaved,
}

impl RopeStyle {
    /// The two coordinates of pair `i` (`0 <= i < D/2`) at head dim `head_dim`.
    pub fn pair(self, head_dim: usize, i: usize) -> (usize, usize) {
        match self {
            RopeStyle::Half => (i, i + head_dim / 2),
            RopeStyle::Interleaved => (2 * i, 2 * i + 1),
        }
    }
}

/// How the temporal index `t` of a token is counted (see the [module docs](self)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum TimeIndex {
    /// `t` = frames ended before the token + text tokens before it: each text token
    /// and each frame is one step (the TAD-RoPE position ids of VideoRoPE's
    /// TC-LLaVA reproduction).
    #[default]
    Steps,
    /// `t` = frames ended before the token; text tokens do not advance it.
    Frames,
}

/// Parameters of Temporal-Aware Dual RoPE: angle `(p + gamma * t) * base^(-2i/D)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DualRope {
    /// RoPE base (10000 for LLaMA/Vicuna; 1e6 for Qwen2). Finite and > 0.
    pub base: f64,
    /// Weight of the temporal index (the paper's ratio gamma). Finite; 0 gives plain RoPE.
    pub gamma: f64,
    /// Pairing of coordinates.
    pub style: RopeStyle,
    /// How the temporal index counts text tokens.
    pub time: TimeIndex,
}

impl Default for DualRope {
    fn default() -> Self {
        Self { base: 10_000.0, gamma: 1.0, style: RopeStyle::Half, time: TimeIndex::Steps }
    }
}

impl DualRope {
    /// Checks `base` (finite, > 0) and `gamma` (finite).
    pub fn validate(&self) -> Result<()> {
        if !(self.base.is_finite() && self.base > 0.0) {
            return Err(invalid("rope base", format!("{} is not a finite number > 0", self.base)));
        }
        if !self.gamma.is_finite() {
            return Err(invalid("rope gamma", format!("{} is not finite", self.gamma)));
        }
        Ok(())
    }

    /// `theta_i = base^(-2i/D)` for `i` in `0..D/2`, in `f64`. `D` must be even and > 0.
    pub fn frequencies(&self, head_dim: usize) -> Result<Vec<f64>> {
        self.validate()?;
        check_head_dim(head_dim)?;
        Ok((0..head_dim / 2).map(|i| self.base.powf(-2.0 * i as f64 / head_dim as f64)).collect())
    }
}

fn check_head_dim(head_dim: usize) -> Result<()> {
    if head_dim == 0 || head_dim % 2 != 0 {
        return Err(Error::Shape(format!("RoPE needs an even, non-zero head dim, got {head_dim}")));
    }
    Ok(())
}

/// The temporal index `t` of every token of `layout` (see the [module docs](self)).
pub fn time_indices(layout: &VideoLayout, time: TimeIndex) -> Vec<u64> {
    let mut out = Vec::with_capacity(layout.len());
    walk(layout, 0..layout.len(), |_, t_steps, t_frames| {
        out.push(match time {
            TimeIndex::Steps => t_steps,
            TimeIndex::Frames => t_frames,
        })
    });
    out
}

/// The position multiplier `p + gamma * t(p)` of every token of `layout`, in `f64`.
pub fn positions(layout: &VideoLayout, rope: &DualRope) -> Result<Vec<f64>> {
    positions_range(layout, rope, 0..layout.len())
}

/// The position multipliers of tokens `range` of the sequence `layout` describes;
/// tokens at or past `layout.len()` are text that follows it (decoding). For a
/// chunk that follows a KV cache of `n` tokens, pass `n..n + chunk`.
pub fn positions_range(layout: &VideoLayout, rope: &DualRope, range: Range<usize>) -> Result<Vec<f64>> {
    rope.validate()?;
    if range.start > range.end || range.end > i32::MAX as usize {
        return Err(invalid("position range", format!("{range:?} is reversed or past 2^31 - 1 tokens")));
    }
    let mut out = Vec::with_capacity(range.len());
    walk(layout, range, |p, t_steps, t_frames| {
        let t = match rope.time {
            TimeIndex::Steps => t_steps,
            TimeIndex::Frames => t_frames,
        };
        out.push(p as f64 + rope.gamma * t as f64)
    });
    Ok(out)
}

/// Calls `f(p, t_steps, t_frames)` for every token `p` in `range`, in order, in
/// O(segments + range); tokens past the layout are text.
fn walk(layout: &VideoLayout, range: Range<usize>, mut f: impl FnMut(usize, u64, u64)) {
    let (mut start, mut steps, mut frames_before) = (0usize, 0u64, 0u64);
    for s in layout.segments() {
        let end = start + s.len();
        let (lo, hi) = (range.start.max(start), range.end.min(end));
        match *s {
            Segment::Text(n) => {
                for p in lo..hi {
                    f(p, steps + (p - start) as u64, frames_before);
                }
                steps += n as u64;
            }
            Segment::Frames { frames, tokens } => {
                for p in lo..hi {
                    let k = ((p - start) / tokens) as u64;
                    f(p, steps + k, frames_before + k);
                }
                steps += frames as u64;
                frames_before += frames as u64;
            }
        }
        start = end;
    }
    for p in range.start.max(start)..range.end {
        f(p, steps + (p - start) as u64, frames_before);
    }
}

/// Rotates `x` (`[B, L, H, D]`) by the multipliers `positions` (`[L]`, e.g. from
/// [`positions`]), in `f64`: pair `i` of token `l` turns by `positions[l] * theta_i`
/// with `sin`/`cos` of `f64`. The oracle of the GPU kernel.
pub fn apply_reference<T: Element>(x: ArrayView4<T>, positions: &[f64], rope: &DualRope) -> Result<Array4<f64>> {
    let (b, l, h, d) = x.dim();
    if b == 0 || l == 0 || h == 0 || d == 0 {
        return Err(Error::Shape(format!("empty dimension in x {:?}", x.shape())));
    }
    let theta = rope.frequencies(d)?;
    if positions.len() != l {
        return Err(Error::Shape(format!("{} positions for {l} tokens", positions.len())));
    }
    if let Some(bad) = positions.iter().find(|m| !m.is_finite()) {
        return Err(invalid("positions", format!("{bad} is not finite")));
    }
    let mut out = x.mapv(T::to_f64);
    for (li, &m) in positions.iter().enumerate() {
        for (i, &th) in theta.iter().enumerate() {
            let (s, c) = (m * th).sin_cos();
            let (ia, ib) = rope.style.pair(d, i);
            for bi in 0..b {
                for hi in 0..h {
                    let (xa, xb) = (out[[bi, li, hi, ia]], out[[bi, li, hi, ib]]);
                    out[[bi, li, hi, ia]] = xa * c - xb * s;
                    out[[bi, li, hi, ib]] = xa * s + xb * c;
                }
            }
        }
    }
    Ok(out)
}
