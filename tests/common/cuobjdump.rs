//! cuobjdump on the embedded fatbin: its targets, the kernels of each, their SASS,
//! and the toolkit recorded in every cubin. For static checks of what nvcc built
//! (tests/fatbin_static.rs); a test that looks for instructions in one kernel's SASS
//! takes `Cuobjdump::find()?.sass(fatbin.path(), "sm_90a")?.functions["name"]`.
//!
//! cuobjdump and nvdisasm come from NVIDIA's PyPI wheels (13.5.37: an older
//! cuobjdump cannot dump the cubins of a newer nvcc), installed by
//! scripts/setup-cuda.sh into ~/.cache/maskattn/cuda-tools (`MASKATTN_CUDA_TOOLS_DIR`);
//! `MASKATTN_CUOBJDUMP` names another.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

/// A cuobjdump executable.
#[derive(Debug, Clone)]
pub struct Cuobjdump {
    pub exe: PathBuf,
}

/// The SASS of one target, per kernel.
#[derive(Debug, Clone)]
pub struct Sass {
    pub arch: String,
    /// Kernel name -> its disassembly (the lines after "Function : name").
    pub functions: BTreeMap<String, String>,
}

/// What the header and `.note.nv.tkinfo` of one cubin say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CubinInfo {
    /// e.g. `sm_90a`.
    pub arch: String,
    /// The ELF header's `toolkit=13.0`.
    pub toolkit: String,
    /// ptxas's "Tool Version" line, e.g. "Cuda compilation tools, release 13.0, V13.0.88".
    pub tool_version: String,
}

impl Cuobjdump {
    /// [`Cuobjdump::find`] for a static check: `None`, after a skip line, where the
    /// test binary was carried to a machine without the build's tools (a device
    /// machine, scripts/gpu-bundle.sh: the nvcc that built it is absent too); on the
    /// build machine a missing cuobjdump is a failure.
    #[cfg(feature = "cuda")]
    pub fn find_or_skip() -> Option<Self> {
        match Self::find() {
            Ok(t) => Some(t),
            Err(e) if !Path::new(maskattn::cuda::KERNEL_BUILD.nvcc).is_file() => {
                eprintln!("skipping: {e}");
                None
            }
            Err(e) => panic!("{e}"),
        }
    }

    /// `MASKATTN_CUOBJDUMP`, else the tools venv of scripts/setup-cuda.sh, else the
    /// one beside the nvcc that built the kernels, else PATH, else /usr/local/cuda.
    pub fn find() -> Result<Self, String> {
        if let Some(p) = std::env::var_os("MASKATTN_CUOBJDUMP") {
            return Ok(Self { exe: p.into() });
        }
        let tools = match std::env::var_os("MASKATTN_CUDA_TOOLS_DIR") {
            Some(d) => Some(PathBuf::from(d)),
            None => std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/maskattn/cuda-tools")),
        };
        let in_venv = tools.and_then(|t| {
            std::fs::read_dir(t.join("lib")).ok()?.find_map(|e| {
                let p = e.ok()?.path().join("site-packages/nvidia/cu13/bin/cuobjdump");
                p.is_file().then_some(p)
            })
        });
        #[cfg(feature = "cuda")]
        let beside_nvcc = Path::new(maskattn::cuda::KERNEL_BUILD.nvcc).with_file_name("cuobjdump");
        #[cfg(not(feature = "cuda"))]
        let beside_nvcc = PathBuf::new();
        let on_path = std::env::var_os("PATH")
            .and_then(|p| std::env::split_paths(&p).map(|d| d.join("cuobjdump")).find(|p| p.is_file()));
        in_venv.or_else(|| beside_nvcc.is_file().then_some(beside_nvcc)).or(on_path).map(|exe| Self { exe }).ok_or_else(
            || {
                "cuobjdump not found: run scripts/setup-cuda.sh (installs NVIDIA's cuobjdump wheel into \
                 ~/.cache/maskattn/cuda-tools) or set MASKATTN_CUOBJDUMP"
                    .to_string()
            },
        )
    }

    /// cuobjdump's own "release X.Y, VX.Y.Z" line.
    pub fn version(&self) -> Result<String, String> {
        let text = self.run(&["--version"])?;
        Ok(text.lines().find(|l| l.contains("release")).unwrap_or(text.trim()).to_string())
    }

    fn run(&self, args: &[&str]) -> Result<String, String> {
        // `-sass` runs nvdisasm, which the wheels install beside cuobjdump.
        let dir = self.exe.parent().map(Path::to_path_buf).unwrap_or_default();
        let path = std::env::join_paths(
            std::iter::once(dir).chain(std::env::var_os("PATH").iter().flat_map(std::env::split_paths)),
        )
        .map_err(|e| e.to_string())?;
        let out = Command::new(&self.exe)
            .args(args)
            .env("PATH", path)
            .output()
            .map_err(|e| format!("{}: {e}", self.exe.display()))?;
        if !out.status.success() {
            // A failing -elf dump prints megabytes before its error: keep the end.
            let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            let tail: String = text.chars().rev().take(2000).collect::<Vec<_>>().into_iter().rev().collect();
            return Err(format!("{} {} failed ({}): ...{tail}", self.exe.display(), args.join(" "), out.status));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn run_on(&self, args: &[&str], fatbin: &Path) -> Result<String, String> {
        let path = fatbin.to_str().ok_or("fatbin path is not UTF-8")?;
        let mut all = args.to_vec();
        all.push(path);
        self.run(&all)
    }

    /// The SASS targets, in fatbin order (`--list-elf`).
    pub fn list_elf(&self, fatbin: &Path) -> Result<Vec<String>, String> {
        Ok(targets_of_listing(&self.run_on(&["--list-elf"], fatbin)?, ".cubin"))
    }

    /// The PTX targets as `compute_XY` (`--list-ptx` names them `sm_XY`).
    pub fn list_ptx(&self, fatbin: &Path) -> Result<Vec<String>, String> {
        let listing = self.run_on(&["--list-ptx"], fatbin)?;
        Ok(targets_of_listing(&listing, ".ptx").into_iter().map(|t| t.replacen("sm_", "compute_", 1)).collect())
    }

    /// The PTX text (every PTX target, decompressed).
    pub fn ptx(&self, fatbin: &Path) -> Result<String, String> {
        self.run_on(&["-ptx"], fatbin)
    }

    /// The SASS of target `arch` (e.g. `sm_90a`), per kernel.
    pub fn sass(&self, fatbin: &Path, arch: &str) -> Result<Sass, String> {
        let text = self.run_on(&["-sass", "-arch", arch], fatbin)?;
        Ok(Sass { arch: arch.to_string(), functions: parse_sass(&text) })
    }

    /// Header and toolkit note of every cubin (`-elf`; large output, seconds).
    pub fn cubins(&self, fatbin: &Path) -> Result<Vec<CubinInfo>, String> {
        Ok(parse_cubin_infos(&self.run_on(&["-elf"], fatbin)?))
    }
}

/// "ELF file    1: maskattn_kernels.sm_80.cubin" -> "sm_80".
pub fn targets_of_listing(listing: &str, ext: &str) -> Vec<String> {
    listing
        .lines()
        .filter_map(|l| l.trim_end().strip_suffix(ext))
        .filter_map(|stem| stem.rsplit('.').next())
        .map(String::from)
        .collect()
}

/// Kernel name -> SASS, from `cuobjdump -sass` output.
pub fn parse_sass(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut current: Option<(String, String)> = None;
    for line in text.lines() {
        if let Some(name) = line.trim().strip_prefix("Function : ") {
            if let Some((n, body)) = current.take() {
                out.insert(n, body);
            }
            current = Some((name.trim().to_string(), String::new()));
        } else if line.starts_with("Fatbin ") || line.trim_start().starts_with("code for ") {
            if let Some((n, body)) = current.take() {
                out.insert(n, body);
            }
        } else if let Some((_, body)) = current.as_mut() {
            body.push_str(line);
            body.push('\n');
        }
    }
    if let Some((n, body)) = current {
        out.insert(n, body);
    }
    out
}

/// The `.entry` names of PTX text: every `__global__` function nvcc compiled.
pub fn parse_ptx_entries(ptx: &str) -> BTreeSet<String> {
    ptx.lines()
        .filter_map(|l| l.trim().strip_prefix(".visible .entry ").or_else(|| l.trim().strip_prefix(".entry ")))
        .filter_map(|rest| rest.split('(').next())
        .map(|n| n.trim().to_string())
        .collect()
}

/// `.version X.Y` of PTX text (the PTX ISA version).
pub fn parse_ptx_isa(ptx: &str) -> Option<(u32, u32)> {
    let v = ptx.lines().find_map(|l| l.trim().strip_prefix(".version "))?;
    let (major, minor) = v.trim().split_once('.')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

/// From `cuobjdump -elf`: each "64-bit ELF: ..., sm=90a, toolkit=13.0, ..." header
/// and the "Tool Version:" line of the `.note.nv.tkinfo` that follows it.
pub fn parse_cubin_infos(text: &str) -> Vec<CubinInfo> {
    let field = |line: &str, key: &str| {
        line.split([',', ' ']).find_map(|f| f.strip_prefix(key)).map(|v| v.trim().to_string()).unwrap_or_default()
    };
    let mut out: Vec<CubinInfo> = Vec::new();
    for line in text.lines() {
        if line.contains("-bit ELF:") {
            out.push(CubinInfo {
                arch: format!("sm_{}", field(line, "sm=")),
                toolkit: field(line, "toolkit="),
                tool_version: String::new(),
            });
        } else if let Some(v) = line.trim().strip_prefix("Tool Version:") {
            if let Some(c) = out.last_mut().filter(|c| c.tool_version.is_empty()) {
                c.tool_version = v.trim().to_string();
            }
        }
    }
    out
}

/// The fatbin this library embeds, written to a temporary file (removed on drop):
/// the bytes `Gpu::new` loads, not a build artifact that could differ.
#[cfg(feature = "cuda")]
pub fn embedded_fatbin() -> std::io::Result<TempFile> {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!("maskattn-{}-{n}.fatbin", std::process::id()));
    std::fs::write(&path, maskattn::cuda::KERNEL_BUILD.fatbin)?;
    Ok(TempFile(path))
}

/// A file deleted when dropped.
#[derive(Debug)]
pub struct TempFile(PathBuf);

impl TempFile {
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
