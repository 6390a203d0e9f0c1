//! What the embedded fatbin is, as build.rs recorded it from the nvcc that built it:
//! the toolkit version decides which drivers load it (`crate::compat`).

use crate::compat::{self, CudaVersion, DriverRequirement};
use crate::error::Result;

mod generated {
    include!(concat!(env!("OUT_DIR"), "/kernel_build.rs"));
}

/// Every kernel of csrc/, compiled by build.rs (compressed with
/// `--compress-mode=size` where nvcc is CUDA 13).
pub(crate) static FATBIN: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/maskattn.fatbin"));

/// How the embedded kernels were built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelBuild {
    /// The nvcc that built them (path on the build machine).
    pub nvcc: &'static str,
    /// Its version (`release X.Y` of `nvcc --version`).
    pub toolkit: CudaVersion,
    /// SASS targets in the fatbin, e.g. `["sm_80", "sm_90a", "sm_120"]`.
    pub sass: &'static [&'static str],
    /// The PTX target, JIT-compiled by the driver on GPUs without SASS here.
    pub ptx: &'static str,
    /// `--compress-mode`, or `None` for nvcc's default compression.
    pub compress_mode: Option<&'static str>,
    /// The fatbin itself, as embedded.
    pub fatbin: &'static [u8],
}

/// The build of the kernels in this library.
pub static KERNEL_BUILD: KernelBuild = KernelBuild {
    nvcc: generated::NVCC_PATH,
    toolkit: generated::NVCC_VERSION,
    sass: generated::SASS,
    ptx: generated::PTX,
    compress_mode: generated::COMPRESS_MODE,
    fatbin: FATBIN,
};

impl KernelBuild {
    /// The driver a GPU of compute capability `cc` needs to load these kernels.
    pub fn driver_requirement(&self, cc: (u32, u32)) -> Result<DriverRequirement> {
        compat::driver_requirement(self.toolkit, self.sass, self.ptx, cc)
    }
}
