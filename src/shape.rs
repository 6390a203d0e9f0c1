//! Shapes and element types shared by the reference and the kernels.

use crate::error::{Error, Result};
use crate::mask::Mask;

/// Element types of attention inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    /// IEEE half precision (`half::f16`).
    F16,
    /// bfloat16 (`half::bf16`).
    BF16,
    /// `f32`.
    F32,
    /// `f64`.
    F64,
}

/// A scalar the reference and the kernels read: `half::f16`, `half::bf16`, `f32`, `f64`.
pub trait Element: Copy + Default + Send + Sync + std::fmt::Debug + 'static {
    /// The matching [`DType`].
    const DTYPE: DType;
    /// Exact widening to `f64`.
    fn to_f64(self) -> f64;
    /// Rounding to nearest.
    fn from_f64(x: f64) -> Self;
}

impl Element for half::f16 {
    const DTYPE: DType = DType::F16;
    fn to_f64(self) -> f64 {
        self.into()
    }
    fn from_f64(x: f64) -> Self {
        half::f16::from_f64(x)
    }
}

impl Element for half::bf16 {
    const DTYPE: DType = DType::BF16;
    fn to_f64(self) -> f64 {
        self.into()
    }
    fn from_f64(x: f64) -> Self {
        half::bf16::from_f64(x)
    }
}

impl Element for f32 {
    const DTYPE: DType = DType::F32;
    fn to_f64(self) -> f64 {
        self.into()
    }
    fn from_f64(x: f64) -> Self {
        x as f32
    }
}

impl Element for f64 {
    const DTYPE: DType = DType::F64;
    fn to_f64(self) -> f64 {
        self
    }
    fn from_f64(x: f64) -> Self {
        x
    }
}

/// The checked shape of one attention call: Q `[B, Lq, Hq, D]`, K and V
/// `[B, Lk, Hkv, D]`, with `Hq` a multiple of `Hkv` (GQA/MQA).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttnShape {
    /// `B`.
    pub batch: usize,
    /// `Lq`, query rows.
    pub len_q: usize,
    /// `Lk`, keys.
    pub len_k: usize,
    /// `Hq`, query heads.
    pub heads_q: usize,
    /// `Hkv`, key/value heads (divides `Hq`).
    pub heads_kv: usize,
    /// `D`, head dimension.
    pub head_dim: usize,
}

impl AttnShape {
    /// Checks Q, K, V dims against each other and against the mask's lengths.
    pub fn new(q: &[usize], k: &[usize], v: &[usize], mask: &Mask) -> Result<Self> {
        let s = Self::of_qkv(q, k, v)?;
        if (s.len_q, s.len_k) != (mask.len_q(), mask.len_k()) {
            return Err(Error::Shape(format!(
                "the mask is for Lq={}, Lk={} but q, k have Lq={}, Lk={}",
                mask.len_q(),
                mask.len_k(),
                s.len_q,
                s.len_k
            )));
        }
        Ok(s)
    }

    /// Checks Q, K, V dims against each other.
    pub fn of_qkv(q: &[usize], k: &[usize], v: &[usize]) -> Result<Self> {
        let dims4 = |name: &str, d: &[usize]| -> Result<[usize; 4]> {
            <[usize; 4]>::try_from(d).map_err(|_| Error::Shape(format!("{name} must be [B, L, H, D], got {d:?}")))
        };
        let ([b, lq, hq, dq], [bk, lk, hk, dk]) = (dims4("q", q)?, dims4("k", k)?);
        if k != v {
            return Err(Error::Shape(format!("k {k:?} and v {v:?} differ")));
        }
        if q.contains(&0) || k.contains(&0) {
            return Err(Error::Shape(format!("empty dimension in q {q:?} or k {k:?}")));
        }
        if b != bk || dq != dk {
            return Err(Error::Shape(format!("q {q:?} and k {k:?} disagree on batch or head dim")));
        }
        if hq % hk != 0 {
            return Err(Error::Shape(format!("{hq} query heads are not a multiple of {hk} key/value heads")));
        }
        Ok(Self { batch: b, len_q: lq, len_k: lk, heads_q: hq, heads_kv: hk, head_dim: dq })
    }

    /// Query heads per key/value head.
    pub fn group(&self) -> usize {
        self.heads_q / self.heads_kv
    }

    /// The softmax scale: `scale`, or `1/sqrt(D)`.
    pub fn scale_or_default(&self, scale: Option<f64>) -> Result<f64> {
        match scale {
            Some(s) if !s.is_finite() => {
                Err(Error::InvalidParameter { what: "scale", reason: format!("{s} is not finite") })
            }
            Some(s) => Ok(s),
            None => Ok(1.0 / (self.head_dim as f64).sqrt()),
        }
    }
}
