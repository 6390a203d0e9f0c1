//! Which CUDA drivers can load the embedded kernels: the rules `Gpu::new` applies
//! before it loads the fatbin, as pure functions (tested without a GPU).
//!
//! The facts behind them (README, "CUDA toolkits and drivers"):
//! - A driver reports the newest CUDA it supports (`cuDriverGetVersion`: 1000 *
//!   major + 10 * minor; nvidia-smi's "CUDA Version").
//! - Minor-version compatibility: code built by a CUDA 12.x toolkit runs on every
//!   driver supporting CUDA 12.0 (R525+), code built by 13.x on every driver
//!   supporting 13.0 (R580+). So a GPU that finds its SASS in the fatbin needs only
//!   the toolkit's major version.
//! - PTX JIT is the exception: a driver rejects PTX newer than itself
//!   (`CUDA_ERROR_UNSUPPORTED_PTX_VERSION`). A GPU without SASS here runs the PTX, so
//!   it needs a driver supporting the toolkit's full version.
//! - A SASS target `sm_XY` runs on compute capability X.Z for Z >= Y; the
//!   arch-specific `sm_XYa` only on X.Y itself.

use std::fmt;

use crate::error::{Error, Result};

/// The oldest nvcc that builds the kernels (build/nvcc.rs, `MIN_NVCC`, holds the
/// same; tests/nvcc_flags.rs checks that they agree).
pub const MIN_TOOLKIT: CudaVersion = CudaVersion::new(12, 4);

/// A CUDA version, as a toolkit (`nvcc --version`) or a driver (the newest CUDA it
/// supports) reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CudaVersion {
    /// e.g. 13 for CUDA 13.0.
    pub major: u32,
    /// e.g. 0 for CUDA 13.0.
    pub minor: u32,
}

impl CudaVersion {
    /// `major.minor`.
    pub const fn new(major: u32, minor: u32) -> Self {
        Self { major, minor }
    }

    /// From `cuDriverGetVersion`'s integer (1000 * major + 10 * minor, e.g. 12040
    /// for 12.4); `None` for a negative value.
    pub fn from_driver_api(version: i32) -> Option<Self> {
        let v = u32::try_from(version).ok()?;
        Some(Self { major: v / 1000, minor: (v % 1000) / 10 })
    }
}

impl fmt::Display for CudaVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// Does SASS for `target` (`sm_80`, `sm_90a`, `sm_120`) run on a GPU of compute
/// capability `cc`? An unparsable target runs nowhere.
pub fn sass_runs_on(target: &str, cc: (u32, u32)) -> bool {
    let Some(digits) = target.strip_prefix("sm_") else { return false };
    let (digits, arch_specific) = match digits.strip_suffix('a') {
        Some(d) => (d, true),
        None => (digits, false),
    };
    let Ok(number) = digits.parse::<u32>() else { return false };
    let (major, minor) = (number / 10, number % 10);
    if arch_specific {
        cc == (major, minor)
    } else {
        cc.0 == major && cc.1 >= minor
    }
}

/// What the embedded kernels need from the driver on one GPU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriverRequirement {
    /// The oldest CUDA version the driver must support.
    pub needed: CudaVersion,
    /// Why, in words (the SASS target the GPU runs, or the PTX JIT).
    pub reason: String,
}

/// The driver a GPU of compute capability `cc` needs for kernels that nvcc `built`
/// compiled to SASS `sass` and PTX `ptx`. The PTX (compute_80) is the fallback: a
/// GPU below 8.0 can run neither, which is [`Error::Unsupported`].
pub fn driver_requirement(built: CudaVersion, sass: &[&str], ptx: &str, cc: (u32, u32)) -> Result<DriverRequirement> {
    if let Some(target) = sass.iter().find(|t| sass_runs_on(t, cc)) {
        return Ok(DriverRequirement {
            needed: CudaVersion::new(built.major, 0),
            reason: format!(
                "the GPU (compute capability {}.{}) runs the {target} SASS, which any driver supporting CUDA {}.0 \
                 loads (minor-version compatibility)",
                cc.0, cc.1, built.major
            ),
        });
    }
    let ptx_cc = ptx.strip_prefix("compute_").and_then(|d| d.parse::<u32>().ok()).map(|n| (n / 10, n % 10));
    match ptx_cc {
        Some(p) if cc >= p => Ok(DriverRequirement {
            needed: built,
            reason: format!(
                "the fatbin has no SASS for compute capability {}.{}, so the driver JIT-compiles the {ptx} PTX, which \
                 needs a driver supporting the toolkit's own CUDA {built}",
                cc.0, cc.1
            ),
        }),
        _ => Err(Error::Unsupported(format!(
            "compute capability {}.{}: maskattn's kernels need 8.0 or newer (fatbin: {}, {ptx})",
            cc.0,
            cc.1,
            sass.join(", ")
        ))),
    }
}

/// `Ok` when a driver supporting CUDA `driver` meets `req`, else
/// [`Error::DriverTooOld`] naming both versions and what to do.
pub fn check_driver(driver: CudaVersion, built: CudaVersion, req: &DriverRequirement) -> Result<()> {
    if driver >= req.needed {
        return Ok(());
    }
    let branch = match (req.needed.major, req.needed.minor) {
        (12, 0) => "Linux driver 525.60.13 or newer; ",
        (13, 0) => "Linux driver 580 or newer; ",
        _ => "",
    };
    let mut fix = format!(
        "install an NVIDIA driver supporting CUDA {} or newer ({branch}nvidia-smi shows the \"CUDA Version\" a \
         driver supports)",
        req.needed
    );
    // The oldest nvcc of the driver's major version that builds the kernels.
    let oldest = if driver.major == MIN_TOOLKIT.major { MIN_TOOLKIT } else { CudaVersion::new(driver.major, 0) };
    if driver.major < built.major && driver >= CudaVersion::new(MIN_TOOLKIT.major, 0) {
        fix.push_str(&format!(
            ", or rebuild maskattn with a CUDA {major}.x nvcc ({oldest} or newer: NVCC=/path/to/nvcc cargo build), \
             whose kernels load on drivers supporting CUDA {major}.0",
            major = driver.major
        ));
    } else if driver.major == built.major && driver >= MIN_TOOLKIT {
        fix.push_str(&format!(", or rebuild maskattn with an nvcc no newer than CUDA {driver}"));
    }
    Err(Error::DriverTooOld { driver, needed: req.needed, built_with: built, reason: req.reason.clone(), fix })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SASS_13: &[&str] = &["sm_80", "sm_90a", "sm_120"];
    const SASS_124: &[&str] = &["sm_80", "sm_90a"];

    fn v(major: u32, minor: u32) -> CudaVersion {
        CudaVersion::new(major, minor)
    }

    #[test]
    fn driver_api_integers() {
        assert_eq!(CudaVersion::from_driver_api(12040), Some(v(12, 4)));
        assert_eq!(CudaVersion::from_driver_api(13000), Some(v(13, 0)));
        assert_eq!(CudaVersion::from_driver_api(12090), Some(v(12, 9)));
        assert_eq!(CudaVersion::from_driver_api(-1), None);
        assert!(v(12, 10) > v(12, 9) && v(13, 0) > v(12, 10));
        assert_eq!(v(13, 0).to_string(), "13.0");
    }

    #[test]
    fn sass_compatibility() {
        assert!(sass_runs_on("sm_80", (8, 0)) && sass_runs_on("sm_80", (8, 6)) && sass_runs_on("sm_80", (8, 9)));
        assert!(!sass_runs_on("sm_80", (9, 0)) && !sass_runs_on("sm_80", (7, 5)));
        assert!(sass_runs_on("sm_90a", (9, 0)) && !sass_runs_on("sm_90a", (9, 1)));
        assert!(sass_runs_on("sm_120", (12, 0)) && sass_runs_on("sm_120", (12, 1)));
        assert!(!sass_runs_on("sm_120", (10, 0)) && !sass_runs_on("compute_80", (8, 0)));
        assert!(!sass_runs_on("sm_x", (8, 0)));
    }

    #[test]
    fn sass_needs_only_the_major_version() {
        for cc in [(8, 0), (8, 6), (8, 9), (9, 0), (12, 0)] {
            let r = driver_requirement(v(13, 0), SASS_13, "compute_80", cc).unwrap();
            assert_eq!(r.needed, v(13, 0), "{cc:?}");
            let r = driver_requirement(v(13, 5), SASS_13, "compute_80", cc).unwrap();
            assert_eq!(r.needed, v(13, 0), "{cc:?}: {}", r.reason);
            let r = driver_requirement(v(12, 8), SASS_13, "compute_80", cc).unwrap();
            assert_eq!(r.needed, v(12, 0), "{cc:?}");
        }
    }

    #[test]
    fn ptx_jit_needs_the_toolkit_version() {
        // B200 (10.0) has no SASS here; RTX 50xx has none in a 12.4 build.
        let r = driver_requirement(v(13, 5), SASS_13, "compute_80", (10, 0)).unwrap();
        assert_eq!(r.needed, v(13, 5));
        assert!(r.reason.contains("PTX"), "{}", r.reason);
        let r = driver_requirement(v(12, 4), SASS_124, "compute_80", (12, 0)).unwrap();
        assert_eq!(r.needed, v(12, 4));
    }

    #[test]
    fn older_gpus_are_unsupported() {
        let e = driver_requirement(v(13, 0), SASS_13, "compute_80", (7, 5)).unwrap_err();
        assert!(matches!(e, Error::Unsupported(ref m) if m.contains("7.5")), "{e}");
    }

    #[test]
    fn cuda_12_driver_with_a_cuda_13_build_is_a_typed_error() {
        let built = v(13, 0);
        let req = driver_requirement(built, SASS_13, "compute_80", (9, 0)).unwrap();
        let e = check_driver(v(12, 8), built, &req).unwrap_err();
        match &e {
            Error::DriverTooOld { driver, needed, built_with, fix, .. } => {
                assert_eq!((*driver, *needed, *built_with), (v(12, 8), v(13, 0), v(13, 0)));
                assert!(fix.contains("CUDA 12.x nvcc (12.4 or newer") && fix.contains("NVCC="), "{fix}");
            }
            other => panic!("expected DriverTooOld, got {other:?}"),
        }
        let text = e.to_string();
        assert!(text.contains("12.8") && text.contains("13.0"), "{text}");
    }

    #[test]
    fn drivers_at_or_above_the_requirement_pass() {
        let built = v(13, 0);
        let req = driver_requirement(built, SASS_13, "compute_80", (8, 6)).unwrap();
        for driver in [v(13, 0), v(13, 5), v(14, 0)] {
            assert_eq!(check_driver(driver, built, &req), Ok(()), "{driver}");
        }
        // A 12.8 build on an R525 (12.0) driver: SASS loads.
        let built = v(12, 8);
        let req = driver_requirement(built, SASS_13, "compute_80", (9, 0)).unwrap();
        assert_eq!(check_driver(v(12, 0), built, &req), Ok(()));
        let e = check_driver(v(11, 8), built, &req).unwrap_err();
        assert!(matches!(&e, Error::DriverTooOld { fix, .. } if !fix.contains("rebuild")), "{e}");
    }

    #[test]
    fn ptx_jit_on_an_older_minor_driver_names_the_toolkit() {
        let built = v(13, 5);
        let req = driver_requirement(built, SASS_13, "compute_80", (10, 0)).unwrap();
        let e = check_driver(v(13, 0), built, &req).unwrap_err();
        assert!(
            matches!(&e, Error::DriverTooOld { needed, fix, .. } if *needed == v(13, 5) && fix.contains("no newer than CUDA 13.0")),
            "{e}"
        );
    }
}
