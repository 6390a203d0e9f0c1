//! The GPU side: the CUDA driver (through cudarc), the embedded kernels and their
//! safe wrappers. The wrappers' checks, params and grids are the backend-neutral
//! plans of src/launch, which the CPU backend shares; here they are launched with
//! cudarc on the handle's stream.
//!
//! Everything here returns errors as values. A machine without the NVIDIA driver
//! gets [`Error::NoDriver`](crate::Error::NoDriver) from [`Gpu::new`] (cudarc itself
//! would panic: the library is probed first), a driver without a device gets
//! [`Error::NoDevice`](crate::Error::NoDevice), a driver too old for the embedded
//! kernels [`Error::DriverTooOld`](crate::Error::DriverTooOld) (before any module
//! load; [`KERNEL_BUILD`] says which toolkit built them).
//!
//! cudarc is re-exported so that callers use the very types maskattn takes
//! ([`cudarc::driver::CudaSlice`], [`cudarc::driver::CudaStream`]); candle uses the
//! same cudarc line, so its device buffers pass through without copies.

mod attention;
mod backward;
mod bench;
mod build_info;
mod device;
mod naive;
mod ptxas;
mod rope;
mod xattention;

pub use crate::launch::backward::{backward_tiles, BackwardTiles};
pub use crate::launch::xattn::{XAttnOutput, XATTN_HEAD_DIMS, XATTN_MAX_KEY_BLOCKS, XATTN_SCRATCH_BUDGET};
pub use crate::launch::{KernelElement, Layout4};
pub use attention::{DeviceMask, DeviceTensor, DeviceTensorMut};
pub use backward::DeviceBackwardMask;
pub use bench::{BackwardCaseBuffers, CaseBuffers};
pub use build_info::{KernelBuild, KERNEL_BUILD};
pub use cudarc;
pub use device::{driver_available, driver_version, Gpu};
pub use ptxas::{kernel_resources, KernelResources, PTXAS_REPORT};
pub use xattention::xattn_structured_inputs;

impl From<cudarc::driver::DriverError> for crate::Error {
    fn from(e: cudarc::driver::DriverError) -> Self {
        crate::Error::Cuda(e.to_string())
    }
}
