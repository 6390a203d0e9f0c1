//! Strided `[B, L, H, D]` tensors and what the kernels require of them.

use crate::error::{Error, Result};

/// Dims `[B, L, H, D]` and element strides of a tensor in device memory. The last
/// stride must be 1; the kernels also need the other strides to be multiples of 8
/// elements and the base 16-byte aligned (checked at launch).
///
/// A zero batch, row or head stride is a broadcast, as in PyTorch's `expand`: every
/// index of that dim reads the same memory (one K/V row for every key, say). Inputs
/// may broadcast; outputs may not, since their rows are written in parallel (an
/// overlapping output is an [`Error::Shape`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout4 {
    /// `[B, L, H, D]`.
    pub dims: [usize; 4],
    /// Element strides of the four dims.
    pub strides: [usize; 4],
}

impl Layout4 {
    /// The packed row-major layout of `dims`.
    pub fn contiguous(dims: [usize; 4]) -> Self {
        let [_, l, h, d] = dims;
        Self { dims, strides: [l * h * d, h * d, d, 1] }
    }

    /// Elements from the first to one past the last addressed element.
    fn span(&self) -> Option<usize> {
        self.dims.iter().zip(self.strides).try_fold(1usize, |acc, (&n, s)| acc.checked_add((n - 1).checked_mul(s)?))
    }

    /// Checks what the kernels rely on for a buffer of `len` elements at `ptr`.
    pub(crate) fn check(&self, name: &str, ptr: u64, len: usize, elem_bytes: usize) -> Result<()> {
        let bad = |why: String| Err(Error::Shape(format!("{name}: {why} (layout {self:?})")));
        if self.dims.contains(&0) {
            return bad("empty dimension".into());
        }
        if self.strides[3] != 1 {
            return bad("the head dimension must be contiguous (stride 1)".into());
        }
        if self.strides[..3].iter().any(|s| s % 8 != 0) {
            return bad("batch, row and head strides must be multiples of 8 elements".into());
        }
        if ptr % 16 != 0 {
            return bad(format!("device address {ptr:#x} is not 16-byte aligned"));
        }
        match self.span() {
            Some(span) if span <= len && span.checked_mul(elem_bytes).is_some() => Ok(()),
            _ => bad(format!("addresses past the end of its buffer of {len} elements")),
        }
    }

    /// Distinct (b, l, h) rows of D elements never overlap: needed for outputs.
    pub(crate) fn check_disjoint(&self, name: &str) -> Result<()> {
        let mut dims: Vec<(usize, usize)> =
            (0..3).map(|i| (self.strides[i], self.dims[i])).filter(|&(_, n)| n > 1).collect();
        dims.sort();
        let mut extent = self.dims[3];
        for (stride, n) in dims {
            if stride < extent {
                return Err(Error::Shape(format!("{name}: rows overlap (layout {self:?})")));
            }
            extent = stride * n;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::Layout4;

    #[test]
    fn layouts_the_kernels_cannot_take_are_rejected() {
        let ok = Layout4::contiguous([2, 100, 4, 64]);
        assert!(ok.check("q", 256, 2 * 100 * 4 * 64, 2).is_ok());
        assert!(ok.check("q", 256, 2 * 100 * 4 * 64 - 1, 2).is_err(), "buffer too short");
        assert!(ok.check("q", 258, 2 * 100 * 4 * 64, 2).is_err(), "misaligned base");
        let odd = Layout4 { dims: [1, 10, 1, 64], strides: [640, 68, 64, 1] };
        assert!(odd.check("k", 0, 1 << 20, 2).is_err(), "row stride not a multiple of 8");
        let transposed = Layout4 { dims: [1, 10, 1, 64], strides: [640, 1, 640, 10] };
        assert!(transposed.check("k", 0, 1 << 20, 2).is_err(), "head dim not contiguous");
        let empty = Layout4::contiguous([1, 0, 1, 64]);
        assert!(empty.check("k", 0, 1 << 20, 2).is_err());
        // [B, H, L, D] storage seen as [B, L, H, D]: strided but valid and disjoint.
        let bhld = Layout4 { dims: [2, 100, 4, 64], strides: [4 * 100 * 64, 64, 100 * 64, 1] };
        assert!(bhld.check("out", 0, 2 * 100 * 4 * 64, 2).is_ok());
        assert!(bhld.check_disjoint("out").is_ok());
        // Rows that overlap (row stride 8 < D) cannot be written in parallel.
        let overlapping = Layout4 { dims: [1, 10, 1, 64], strides: [640, 8, 640, 1] };
        assert!(overlapping.check_disjoint("out").is_err());
        // Broadcast heads: a fine input (one buffer read by every head), not an output.
        let broadcast_heads = Layout4 { dims: [1, 10, 4, 64], strides: [640, 64, 0, 1] };
        assert!(broadcast_heads.check("k", 0, 640, 2).is_ok());
        assert!(broadcast_heads.check_disjoint("out").is_err());
        // Q and K heads of a fused [B, L, 3, H, D] buffer seen as 2H heads: disjoint rows.
        let fused = Layout4 { dims: [2, 10, 8, 64], strides: [10 * 12 * 64, 12 * 64, 64, 1] };
        assert!(fused.check("qk", 0, 2 * 10 * 12 * 64, 2).is_ok());
        assert!(fused.check_disjoint("qk").is_ok());
    }
}
