//! Tensor maps (the descriptors of the tensor memory accelerator) described once for
//! every backend.
//!
//! A [`TensorMapSpec`] is what a launch plan knows of a tiled global tensor: its
//! address, element type, dims, strides, the box one `cp.async.bulk.tensor` copies,
//! the shared-memory swizzle and the out-of-bounds fill. [`TensorMapSpec::validate`]
//! checks it against the requirements of the driver's `cuTensorMapEncodeTiled`
//! (CUDA driver API, "Tensor Map Object Management") so that both backends refuse
//! the same maps with the same typed errors. Each backend then encodes it into the
//! 128-byte kernel parameter ([`TensorMapBytes`]) with [`super::Backend::tensor_map`]:
//! the GPU through the driver (an opaque `CUtensorMap`), the CPU backend as the
//! [`CpuTensorMap`] of csrc/cpu/sm90_isa.h that its TMA emulation reads.

// The Hopper launch plans are the first users outside the tests (the conformance
// probe); until they land, only the tests and the backends' encoders reach this.
#![cfg_attr(not(test), allow(dead_code))]

use crate::error::{invalid, Error, Result};

/// Element types of tensor maps the kernels use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TmaElement {
    F16,
    Bf16,
    F32,
}

impl TmaElement {
    /// Bytes per element.
    pub(crate) fn bytes(self) -> u32 {
        match self {
            Self::F16 | Self::Bf16 => 2,
            Self::F32 => 4,
        }
    }
}

/// The shared-memory swizzle of a tensor map (`CUtensorMapSwizzle`'s first four
/// modes; the values are those of the driver's enum and of csrc's `Swizzle`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TmaSwizzle {
    None = 0,
    B32 = 1,
    B64 = 2,
    B128 = 3,
}

impl TmaSwizzle {
    /// The span the 16-byte chunks are permuted within, in bytes: the most bytes
    /// the box's inner dimension may have.
    pub(crate) fn span(self) -> Option<u32> {
        match self {
            Self::None => None,
            Self::B32 => Some(32),
            Self::B64 => Some(64),
            Self::B128 => Some(128),
        }
    }
}

/// What an element of the box outside the tensor reads as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OobFill {
    Zero,
    /// `CU_TENSOR_MAP_FLOAT_OOB_FILL_NAN_REQUEST_ZERO_FMA`: a NaN (floating-point
    /// element types only, which are the only ones [`TmaElement`] has).
    Nan,
}

/// The most dimensions a tensor map has.
pub(crate) const MAX_RANK: usize = 5;

/// A tiled tensor map, not interleaved, with element strides of 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TensorMapSpec {
    /// Names the map in errors.
    pub name: &'static str,
    /// Global address of element (0, ..., 0).
    pub base: u64,
    pub elem: TmaElement,
    /// Elements per dimension, innermost (contiguous) first; 1 to 5 of them.
    pub dims: Vec<u64>,
    /// Bytes between consecutive indices of dimensions 1..rank-1 (rank - 1 of them).
    pub strides: Vec<u64>,
    /// Elements per dimension of the box one copy moves (rank of them).
    pub box_dims: Vec<u32>,
    pub swizzle: TmaSwizzle,
    pub oob: OobFill,
}

impl TensorMapSpec {
    /// Dimensions.
    pub(crate) fn rank(&self) -> usize {
        self.dims.len()
    }

    /// The bytes one copy writes to shared memory and counts as transactions on its
    /// mbarrier: the whole box, out-of-bounds elements included (PTX ISA,
    /// cp.async.bulk.tensor: the complete-tx count is the box's size).
    pub(crate) fn box_bytes(&self) -> u64 {
        self.box_dims.iter().map(|&b| u64::from(b)).product::<u64>() * u64::from(self.elem.bytes())
    }

    fn bad(&self, reason: String) -> Error {
        invalid("tensor map", format!("{}: {reason}", self.name))
    }

    /// The requirements of `cuTensorMapEncodeTiled` (CUDA driver API) for a tiled,
    /// non-interleaved map; every violation is a typed error naming the map.
    pub(crate) fn validate(&self) -> Result<()> {
        let rank = self.rank();
        // "tensorRank must be non-zero and less than or equal to ... 5".
        if !(1..=MAX_RANK).contains(&rank) {
            return Err(self.bad(format!("rank {rank}: tensor maps have 1 to {MAX_RANK} dimensions")));
        }
        if self.strides.len() != rank - 1 || self.box_dims.len() != rank {
            return Err(self.bad(format!(
                "{rank} dims need {} strides and {rank} box dims, got {} and {}",
                rank - 1,
                self.strides.len(),
                self.box_dims.len()
            )));
        }
        // "globalAddress ... must be 16 byte aligned".
        if self.base % 16 != 0 {
            return Err(self.bad(format!("base address {:#x} is not 16-byte aligned", self.base)));
        }
        // "globalDim ... must be non-zero and less than or equal to 2^32".
        if let Some((i, d)) = self.dims.iter().enumerate().find(|&(_, &d)| d == 0 || d > 1 << 32) {
            return Err(self.bad(format!("dim {i} is {d}: dims are 1 to 2^32 elements")));
        }
        // "globalStrides ... must be a multiple of 16 and less than 2^40".
        if let Some((i, s)) = self.strides.iter().enumerate().find(|&(_, &s)| s % 16 != 0 || s >= 1 << 40) {
            return Err(
                self.bad(format!("the stride of dim {} is {s} bytes: strides are multiples of 16 below 2^40", i + 1))
            );
        }
        // "boxDim ... must be non-zero and less than or equal to 256".
        if let Some((i, b)) = self.box_dims.iter().enumerate().find(|&(_, &b)| b == 0 || b > 256) {
            return Err(Error::Unsupported(format!(
                "tensor map {}: box dim {i} is {b}: boxes are 1 to 256 elements per dimension",
                self.name
            )));
        }
        let inner = self.box_dims[0] * self.elem.bytes();
        // "When interleave is CU_TENSOR_MAP_INTERLEAVE_NONE, boxDim[0] * elementSize
        // must be a multiple of 16 bytes".
        if inner % 16 != 0 {
            return Err(self.bad(format!("the box's inner dimension is {inner} bytes, not a multiple of 16")));
        }
        // "When interleave is NONE and swizzle is not NONE, the bounding box inner
        // dimension ... must be less than or equal to the swizzle size".
        if let Some(span) = self.swizzle.span() {
            if inner > span {
                return Err(Error::Unsupported(format!(
                    "tensor map {}: the box's inner dimension is {inner} bytes, more than the {span}-byte span of \
                     swizzle {:?}",
                    self.name, self.swizzle
                )));
            }
        }
        Ok(())
    }

    /// The CPU backend's encoding (csrc/cpu/sm90_isa.h, `CpuTensorMap`).
    pub(crate) fn encode_cpu(&self) -> Result<TensorMapBytes> {
        self.validate()?;
        let mut m = CpuTensorMap {
            magic: CPU_TENSOR_MAP_MAGIC,
            rank: self.rank() as u8,
            elem_bytes: self.elem.bytes() as u8,
            swizzle: self.swizzle as u8,
            oob_nan: u8::from(self.oob == OobFill::Nan),
            base: self.base,
            dims: [0; MAX_RANK],
            strides: [0; MAX_RANK - 1],
            box_dims: [0; MAX_RANK],
            tail: 0,
        };
        m.dims[..self.rank()].copy_from_slice(&self.dims);
        m.strides[..self.rank() - 1].copy_from_slice(&self.strides);
        m.box_dims[..self.rank()].copy_from_slice(&self.box_dims);
        let mut out = TensorMapBytes([0; 128]);
        // SAFETY: CpuTensorMap is #[repr(C)], plain integers with no padding bytes
        // (the C struct's tail padding is the explicit `tail`; layout test below),
        // and at most 128 bytes.
        let bytes = unsafe {
            std::slice::from_raw_parts(std::ptr::from_ref(&m).cast::<u8>(), std::mem::size_of::<CpuTensorMap>())
        };
        out.0[..bytes.len()].copy_from_slice(bytes);
        Ok(out)
    }
}

/// A tensor map as a kernel parameter: 128 bytes, 64-byte aligned, like
/// `maskattn::sm90::TensorMap` (csrc/prims/sm90.cuh, csrc/cpu/prims_sm90.h), so that
/// a `kernel_args!` field of this type sits where the kernel's
/// `const __grid_constant__ TensorMap` parameter does (the C++ side aligns
/// parameters by their `alignof`, as #[repr(C)] does).
#[repr(C, align(64))]
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct TensorMapBytes(pub [u8; 128]);

impl std::fmt::Debug for TensorMapBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TensorMapBytes(")?;
        for b in &self.0[..16] {
            write!(f, "{b:02x}")?;
        }
        write!(f, "..)")
    }
}

/// "MTMA": a `CpuTensorMap` the launch plan wrote (not a driver's map, not zeros).
pub(crate) const CPU_TENSOR_MAP_MAGIC: u32 = 0x414d_544d;

/// The mirror of csrc/cpu/sm90_isa.h's `CpuTensorMap`; csrc/cpu/sm90_tma_box.cpp
/// pins the same offsets with static_asserts.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct CpuTensorMap {
    magic: u32,
    rank: u8,
    elem_bytes: u8,
    swizzle: u8,
    oob_nan: u8,
    base: u64,
    dims: [u64; MAX_RANK],
    strides: [u64; MAX_RANK - 1],
    box_dims: [u32; MAX_RANK],
    /// The C struct's tail padding (its size is a multiple of its 8-byte
    /// alignment), made a field so that every byte copied out is initialised.
    tail: u32,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{align_of, offset_of, size_of};

    fn spec() -> TensorMapSpec {
        TensorMapSpec {
            name: "q",
            base: 0x1000,
            elem: TmaElement::Bf16,
            dims: vec![128, 1000, 8],
            strides: vec![256, 256 * 1000],
            box_dims: vec![64, 64, 1],
            swizzle: TmaSwizzle::B128,
            oob: OobFill::Zero,
        }
    }

    #[test]
    fn hopper_cpu_tensor_map_layout_is_the_headers() {
        // csrc/cpu/sm90_isa.h: u32 magic, 4 x u8, u64 base, u64 dims[5],
        // u64 strides[4], u32 box[5], 4 bytes of tail padding.
        assert_eq!(
            [
                offset_of!(CpuTensorMap, rank),
                offset_of!(CpuTensorMap, elem_bytes),
                offset_of!(CpuTensorMap, swizzle),
                offset_of!(CpuTensorMap, oob_nan),
                offset_of!(CpuTensorMap, base),
                offset_of!(CpuTensorMap, dims),
                offset_of!(CpuTensorMap, strides),
                offset_of!(CpuTensorMap, box_dims),
                offset_of!(CpuTensorMap, tail),
            ],
            [4, 5, 6, 7, 8, 16, 56, 88, 108]
        );
        assert_eq!(size_of::<CpuTensorMap>(), 112);
        assert_eq!((size_of::<TensorMapBytes>(), align_of::<TensorMapBytes>()), (128, 64));
    }

    #[test]
    fn hopper_cpu_encoding_holds_the_spec() {
        let m = spec().encode_cpu().unwrap().0;
        let u32_at = |o: usize| u32::from_le_bytes(m[o..o + 4].try_into().unwrap());
        let u64_at = |o: usize| u64::from_le_bytes(m[o..o + 8].try_into().unwrap());
        assert_eq!(u32_at(0), 0x414d_544d);
        assert_eq!(&m[4..8], &[3, 2, 3, 0]);
        assert_eq!(u64_at(8), 0x1000);
        assert_eq!((0..5).map(|i| u64_at(16 + 8 * i)).collect::<Vec<_>>(), [128, 1000, 8, 0, 0]);
        assert_eq!((0..4).map(|i| u64_at(56 + 8 * i)).collect::<Vec<_>>(), [256, 256_000, 0, 0]);
        assert_eq!((0..5).map(|i| u32_at(88 + 4 * i)).collect::<Vec<_>>(), [64, 64, 1, 0, 0]);
        assert!(m[108..].iter().all(|&b| b == 0));
        assert_eq!(spec().box_bytes(), 64 * 64 * 2);
    }

    /// The reason of an `InvalidParameter`, or the message of an `Unsupported`.
    fn refusal(s: &TensorMapSpec) -> String {
        match s.encode_cpu() {
            Err(Error::InvalidParameter { what: "tensor map", reason }) => reason,
            Err(Error::Unsupported(m)) => m,
            other => panic!("expected a typed refusal, got {other:?}"),
        }
    }

    #[test]
    fn hopper_tensor_map_validation_refuses_what_the_driver_refuses() {
        let with = |f: &dyn Fn(&mut TensorMapSpec)| {
            let mut s = spec();
            f(&mut s);
            refusal(&s)
        };
        assert!(with(&|s| s.base += 8).contains("not 16-byte aligned"));
        assert!(with(&|s| s.strides[0] = 200).contains("multiples of 16"));
        assert!(with(&|s| s.strides[1] = 1 << 40).contains("below 2^40"));
        assert!(with(&|s| s.dims[2] = 0).contains("dims are 1 to 2^32"));
        assert!(with(&|s| s.dims[0] = (1 << 32) + 1).contains("dims are 1 to 2^32"));
        assert!(with(&|s| s.box_dims[1] = 257).contains("1 to 256"));
        assert!(with(&|s| s.box_dims[2] = 0).contains("1 to 256"));
        // 72 bf16 = 144 bytes: more than 128B swizzle's span.
        let too_wide = with(&|s| s.box_dims[0] = 72);
        assert!(too_wide.contains("q:") || too_wide.contains("tensor map q"), "{too_wide}");
        assert!(too_wide.contains("128-byte span"), "{too_wide}");
        assert!(with(&|s| {
            s.swizzle = TmaSwizzle::B32;
            s.box_dims[0] = 32;
        })
        .contains("32-byte span"));
        assert!(with(&|s| s.box_dims[0] = 4).contains("not a multiple of 16"));
        assert!(with(&|s| {
            s.dims.clear();
            s.strides.clear();
            s.box_dims.clear();
        })
        .contains("1 to 5 dimensions"));
        assert!(with(&|s| {
            s.dims = vec![16; 6];
            s.strides = vec![32; 5];
            s.box_dims = vec![8; 6];
        })
        .contains("1 to 5 dimensions"));
        assert!(with(&|s| {
            s.strides.pop();
        })
        .contains("strides"));
        // Without swizzle a 256-byte-wide box is fine; f32 counts 4 bytes.
        let mut wide = spec();
        wide.swizzle = TmaSwizzle::None;
        wide.box_dims[0] = 128;
        assert!(wide.validate().is_ok());
        wide.elem = TmaElement::F32;
        wide.swizzle = TmaSwizzle::B64;
        wide.box_dims[0] = 16;
        assert!(wide.validate().is_ok());
        wide.box_dims[0] = 20;
        assert!(refusal(&wide).contains("64-byte span"));
    }
}
