#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

pub mod cases;
pub mod compat;
mod error;
#[allow(missing_docs, non_camel_case_types, non_upper_case_globals, non_snake_case, dead_code)]
mod ffi;
pub mod kernels;
// The backends' shared plans and host-array API: unused in a build with neither.
#[cfg_attr(not(any(feature = "cuda", feature = "cpu")), allow(dead_code))]
pub(crate) mod launch;
pub mod mask;
pub mod reference;
pub mod rope;
mod shape;
#[cfg(any(test, feature = "cuda"))]
mod splitmix;
pub mod tiles;
pub mod xattention;

#[cfg(feature = "cuda")]
pub mod cuda;

#[cfg(feature = "cpu")]
pub mod cpu;

#[cfg(feature = "candle")]
pub mod candle;

pub use error::{Error, Result};
pub use kernels::Kernels;
pub use launch::xattn::XAttnOutput;
pub use launch::{ForwardPath, KernelElement, Layout4, FORWARD_PATH_ENV};
pub use mask::{Mask, MaskKind, Segment, VideoLayout};
pub use shape::{AttnShape, DType, Element};
