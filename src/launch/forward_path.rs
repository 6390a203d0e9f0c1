//! Which forward kernel a backend runs: the Hopper kernel (csrc/hopper_fwd.cu:
//! wgmma, TMA, warp specialisation; sm_90a only) or the mma.sync kernel
//! (csrc/flash_fwd.cu; every GPU). Both compute the same thing; a shape the Hopper
//! kernel does not cover takes the mma.sync kernel on either path.

use crate::error::{invalid, Result};

/// The environment variable that picks the forward path where the backend's option
/// says [`ForwardPath::Auto`]: `hopper` or `mma`, so that a program or a test suite
/// can be run on either path without code changes.
pub const FORWARD_PATH_ENV: &str = "MASKATTN_FORWARD_PATH";

/// The forward kernel a backend runs ([`crate::cuda::Gpu::with_forward_path`],
/// [`crate::cpu::CpuOptions::forward_path`]).
///
/// ```
/// use maskattn::ForwardPath;
/// assert_eq!("hopper".parse::<ForwardPath>()?, ForwardPath::Hopper);
/// assert!("wgmma".parse::<ForwardPath>().is_err());
/// # Ok::<(), maskattn::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ForwardPath {
    /// [`FORWARD_PATH_ENV`] if it is set, else the backend's default: the Hopper
    /// kernel on an sm_90 GPU, the mma.sync kernel on other GPUs and on the CPU
    /// backend.
    #[default]
    Auto,
    /// The Hopper kernel. On a GPU other than sm_90 the forward is
    /// [`crate::Error::Unsupported`].
    Hopper,
    /// The mma.sync kernel.
    Mma,
}

impl std::str::FromStr for ForwardPath {
    type Err = crate::Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(Self::Auto),
            "hopper" => Ok(Self::Hopper),
            "mma" => Ok(Self::Mma),
            other => Err(invalid("forward path", format!("{other:?}: one of \"hopper\", \"mma\", \"auto\""))),
        }
    }
}

impl ForwardPath {
    /// The path to run: `self` unless it is `Auto`, then [`FORWARD_PATH_ENV`], then
    /// `default` (never `Auto`). A value of the variable that names no path is an
    /// error, not a silent default.
    pub(crate) fn resolve(self, default: ForwardPath) -> Result<ForwardPath> {
        debug_assert_ne!(default, Self::Auto);
        if self != Self::Auto {
            return Ok(self);
        }
        match std::env::var(FORWARD_PATH_ENV) {
            Ok(v) if !v.is_empty() => match v.parse()? {
                Self::Auto => Ok(default),
                path => Ok(path),
            },
            _ => Ok(default),
        }
    }
}
