//! Which nvcc flags the fatbin is built with, from the version of the nvcc found.
//!
//! Included by build.rs (`#[path = "build/nvcc.rs"]`) and by tests/nvcc_flags.rs,
//! which drives it with stand-in nvcc scripts: the version parse, the flag choice
//! and the process calls are the very code the build runs. Plain std only: the
//! build script has no dependency but `cc`.
#![allow(dead_code)]

use std::ffi::OsString;
use std::fmt;
use std::path::Path;
use std::process::{Command, Output};

/// The oldest nvcc the fatbin is built with. Everything the kernels use exists from
/// CUDA 12.0 (sm_90a), but no 12.x nvcc has compiled them yet (none installs on the
/// project's machines), so the floor is the newest the project accepts, not the
/// oldest that might work.
pub const MIN_NVCC: NvccVersion = NvccVersion { major: 12, minor: 4 };

/// The command that installs the pinned compiler (CUDA 13.0 from PyPI).
pub const SETUP_COMMAND: &str = "scripts/setup-cuda.sh";

/// `release X.Y` of `nvcc --version`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct NvccVersion {
    pub major: u32,
    pub minor: u32,
}

impl NvccVersion {
    pub const fn new(major: u32, minor: u32) -> Self {
        Self { major, minor }
    }
}

impl fmt::Display for NvccVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// Reads `release X.Y` from `nvcc --version` (the line "Cuda compilation tools,
/// release 13.0, V13.0.88").
pub fn parse_version(text: &str) -> Option<NvccVersion> {
    let rest = text.lines().find_map(|l| l.split_once("release ").map(|(_, r)| r))?;
    let number: String = rest.chars().take_while(|c| c.is_ascii_digit() || *c == '.').collect();
    let mut parts = number.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some(NvccVersion { major, minor })
}

/// Runs `nvcc --version` and parses it.
pub fn query_version(nvcc: &Path) -> Result<NvccVersion, String> {
    let out = Command::new(nvcc)
        .arg("--version")
        .output()
        .map_err(|e| format!("could not run `{} --version`: {e}", nvcc.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "`{} --version` failed ({}): {}{}",
            nvcc.display(),
            out.status,
            text,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    parse_version(&text)
        .ok_or_else(|| format!("`{} --version` printed no \"release X.Y\" line:\n{}", nvcc.display(), text.trim_end()))
}

/// What the fatbin holds and how it is packed, for one nvcc version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub nvcc: NvccVersion,
    /// SASS targets, e.g. `sm_90a`.
    pub sass: Vec<&'static str>,
    /// The PTX target embedded for GPUs without SASS here (JIT-compiled by the driver).
    pub ptx: &'static str,
    /// `--compress-mode=<mode>`, or nvcc's default compression.
    pub compress_mode: Option<&'static str>,
    /// Things a user of this toolkit should know (printed as cargo warnings).
    pub notes: Vec<String>,
}

/// The flags for `nvcc`: SASS for sm_80 (run by sm_86/87/89 too), sm_90a (Hopper)
/// and, where nvcc knows it (12.8+), sm_120; compute_80 PTX, which every later GPU
/// can JIT-compile.
pub fn plan(nvcc: NvccVersion) -> Result<Plan, String> {
    if nvcc < MIN_NVCC {
        return Err(format!(
            "nvcc {nvcc} is too old: maskattn's kernels need CUDA {MIN_NVCC} or newer. Run `{SETUP_COMMAND}` \
             (installs the pinned CUDA 13.0 nvcc into ~/.cache/maskattn) and build with \
             NVCC=\"$({SETUP_COMMAND})\", or point NVCC at a CUDA {MIN_NVCC}+ nvcc"
        ));
    }
    let mut notes = Vec::new();
    let mut sass = vec!["sm_80", "sm_90a"];
    // compute_120/sm_120 appeared with Blackwell support in CUDA 12.8.
    if nvcc >= NvccVersion::new(12, 8) {
        sass.push("sm_120");
    } else {
        notes.push(format!(
            "nvcc {nvcc} predates sm_120 (CUDA 12.8): RTX 50xx GPUs will JIT-compile the compute_80 PTX \
             at the first Gpu::new, which needs a driver supporting CUDA {nvcc} or newer"
        ));
    }
    // --compress-mode exists from CUDA 12.8. On 12.x it is left out: `size` needs a
    // 550.54.14+ driver there, nvcc's default compression loads on every 12.x driver
    // (525.60.13+). CUDA 13 needs 580+ for every mode, so `size` costs nothing.
    let compress_mode = (nvcc.major >= 13).then_some("size");
    if nvcc.major > 13 {
        notes.push(format!(
            "nvcc {nvcc} is newer than any toolkit maskattn was built with (13.x): the flags of 13.x are used"
        ));
    }
    Ok(Plan { nvcc, sass, ptx: "compute_80", compress_mode, notes })
}

impl Plan {
    /// The whole nvcc command line after the program name.
    pub fn args(&self, source: &Path, include: &Path, fatbin: &Path) -> Vec<OsString> {
        let mut args: Vec<OsString> =
            ["--fatbin", "-O3", "-std=c++17", "-lineinfo", "--threads", "0"].iter().map(OsString::from).collect();
        for sm in &self.sass {
            let compute = sm.replacen("sm_", "compute_", 1);
            args.push("-gencode".into());
            args.push(format!("arch={compute},code={sm}").into());
        }
        args.push("-gencode".into());
        args.push(format!("arch={ptx},code={ptx}", ptx = self.ptx).into());
        if let Some(mode) = self.compress_mode {
            args.push(format!("--compress-mode={mode}").into());
        }
        // ptxas -v: registers and spills per kernel and arch, on stderr.
        args.extend(["-Xptxas", "-v"].iter().map(OsString::from));
        let mut inc = OsString::from("-I");
        inc.push(include);
        args.push(inc);
        args.push(source.into());
        args.push("-o".into());
        args.push(fatbin.into());
        args
    }

    /// Runs nvcc; a failure is an error carrying nvcc's output.
    pub fn compile(&self, nvcc: &Path, source: &Path, include: &Path, fatbin: &Path) -> Result<Output, String> {
        let out = Command::new(nvcc)
            .args(self.args(source, include, fatbin))
            .output()
            .map_err(|e| format!("could not run {}: {e}", nvcc.display()))?;
        if !out.status.success() {
            return Err(format!(
                "nvcc {} ({}) failed:\n{}{}",
                self.nvcc,
                nvcc.display(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(out)
    }
}
