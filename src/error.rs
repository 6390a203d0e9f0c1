//! Errors as values: every bad input is reported before any work or launch.

/// Everything that can go wrong in maskattn.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A mask or layout parameter is out of its domain (zero frames, window 0, ...).
    #[error("invalid {what}: {reason}")]
    InvalidParameter {
        /// The parameter.
        what: &'static str,
        /// Why it is invalid.
        reason: String,
    },
    /// A user-given row interval is out of `[0, Lk]`, reversed or unsorted.
    #[error("invalid interval in row {row}: {reason}")]
    InvalidInterval {
        /// The query row.
        row: usize,
        /// What is wrong with its intervals.
        reason: String,
    },
    /// The mask needs more than the two key intervals per row the kernels support.
    #[error("row {row} needs {needed} key intervals, at most 2 are supported ({mask})")]
    TooManyIntervals {
        /// The mask's name.
        mask: &'static str,
        /// The first query row that needs more.
        row: usize,
        /// How many intervals it needs.
        needed: usize,
    },
    /// Tensor shapes disagree with each other or with the mask.
    #[error("shape mismatch: {0}")]
    Shape(String),
    /// A valid request that this build or kernel does not support (head dim, dtype).
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// The CUDA driver library could not be loaded (no NVIDIA driver on this machine).
    #[error("no CUDA driver: {0}")]
    NoDriver(String),
    /// The driver loaded but no usable device was found.
    #[error("no CUDA device: {0}")]
    NoDevice(String),
    /// The driver is older than the embedded kernels need: returned by `Gpu::new`
    /// before the kernels are loaded (see [`crate::compat`] for the rule).
    #[error(
        "CUDA driver too old: it supports CUDA {driver}, maskattn's kernels (built by nvcc {built_with}) need a driver \
         supporting CUDA {needed}: {reason}. Fix: {fix}"
    )]
    DriverTooOld {
        /// The newest CUDA version the driver supports (`cuDriverGetVersion`).
        driver: crate::compat::CudaVersion,
        /// The oldest the kernels load on, for this GPU.
        needed: crate::compat::CudaVersion,
        /// The version of the nvcc that built the embedded fatbin.
        built_with: crate::compat::CudaVersion,
        /// Why that version (SASS with minor-version compatibility, or PTX JIT).
        reason: String,
        /// What to do: a newer driver, or a rebuild with an older toolkit.
        fix: String,
    },
    /// A CUDA driver call (allocation, copy, module load, launch) failed.
    #[error("CUDA error: {0}")]
    Cuda(String),
    /// A kernel failed on the CPU backend: an out-of-bounds or misaligned access by
    /// a primitive, a divergent warp, a barrier deadlock (the message names the
    /// kernel, block, warp and lanes).
    #[error("kernel error: {0}")]
    Kernel(String),
}

/// `Result` with maskattn's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn invalid(what: &'static str, reason: impl Into<String>) -> Error {
    Error::InvalidParameter { what, reason: reason.into() }
}
