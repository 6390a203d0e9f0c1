//! `Gpu::new` on a driver too old for the embedded kernels returns
//! `Error::DriverTooOld`, before it loads them, without a panic. No GPU needed: a
//! fake `libcuda.so.1` (built here by the C compiler) reports the driver version and
//! compute capability it is told, says yes to the calls cudarc makes to open a
//! device, and records a module load. cudarc loads the driver once per process, so
//! each case runs this test binary again (`child`) with the fake first on
//! LD_LIBRARY_PATH. A cudarc call the fake lacks would panic in the child ("Missing
//! symbol") and fail the case.
//!
//! Not with the `candle` feature: its binaries link libcuda at link time.
#![cfg(all(feature = "cuda", not(feature = "candle"), target_os = "linux"))]

use std::path::{Path, PathBuf};
use std::process::Command;

use maskattn::compat::CudaVersion;
use maskattn::cuda::{Gpu, KERNEL_BUILD};
use maskattn::Error;

const FAKE_LIBCUDA: &str = r#"
#include <stdio.h>
#include <stdlib.h>
typedef int CUresult;
static int env_int(const char *name) { const char *v = getenv(name); return v ? atoi(v) : 0; }
static int primary, stream;
static void *current;
CUresult cuInit(unsigned flags) { (void)flags; return 0; }
CUresult cuDriverGetVersion(int *v) { *v = env_int("FAKE_CUDA_DRIVER_VERSION"); return 0; }
CUresult cuDeviceGetCount(int *n) { *n = 1; return 0; }
CUresult cuDeviceGet(int *dev, int ordinal) { *dev = 0; return ordinal == 0 ? 0 : 101; }
CUresult cuDeviceGetAttribute(int *v, int attribute, int dev) {
  int cc = env_int("FAKE_CUDA_CC");
  (void)dev;
  switch (attribute) {
    case 75: *v = cc / 10; break;      /* COMPUTE_CAPABILITY_MAJOR */
    case 76: *v = cc % 10; break;      /* COMPUTE_CAPABILITY_MINOR */
    case 97: *v = 232448; break;       /* MAX_SHARED_MEMORY_PER_BLOCK_OPTIN */
    default: *v = 0;
  }
  return 0;
}
CUresult cuDevicePrimaryCtxRetain(void **ctx, int dev) { (void)dev; *ctx = &primary; return 0; }
CUresult cuDevicePrimaryCtxRelease_v2(int dev) { (void)dev; return 0; }
CUresult cuCtxGetCurrent(void **ctx) { *ctx = current; return 0; }
CUresult cuCtxSetCurrent(void *ctx) { current = ctx; return 0; }
CUresult cuCtxSynchronize(void) { return 0; }
CUresult cuStreamCreate(void **s, unsigned flags) { (void)flags; *s = &stream; return 0; }
CUresult cuStreamDestroy_v2(void *s) { (void)s; return 0; }
CUresult cuModuleLoadData(void **module, const void *image) {
  (void)module; (void)image;
  fprintf(stderr, "fake libcuda: cuModuleLoadData called\n");
  return 200; /* CUDA_ERROR_INVALID_IMAGE */
}
CUresult cuGetErrorString(CUresult e, const char **s) { *s = e == 200 ? "invalid image (fake libcuda)" : "fake libcuda error"; return 0; }
CUresult cuGetErrorName(CUresult e, const char **s) { *s = e == 200 ? "CUDA_ERROR_INVALID_IMAGE" : "CUDA_ERROR_UNKNOWN"; return 0; }
"#;

/// The fake driver in its own directory, as libcuda.so.1 and libcuda.so (the names
/// maskattn's probe and cudarc's loader try); `None` where there is no C compiler
/// and the binary runs away from its build machine (scripts/gpu-bundle.sh).
fn fake_driver_dir(tag: &str) -> Option<PathBuf> {
    let dir = std::env::temp_dir().join(format!("maskattn-fake-libcuda-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join("fake_libcuda.c");
    std::fs::write(&src, FAKE_LIBCUDA).unwrap();
    let lib = dir.join("libcuda.so.1");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let out = match Command::new(&cc)
        .args(["-shared", "-fPIC", "-O1", "-Wl,-soname,libcuda.so.1", "-o"])
        .arg(&lib)
        .arg(&src)
        .output()
    {
        Ok(out) => out,
        Err(e) if !Path::new(KERNEL_BUILD.nvcc).is_file() => {
            eprintln!("skipping: no C compiler ({cc}: {e}) on this machine");
            return None;
        }
        Err(e) => panic!("{cc}: {e}"),
    };
    assert!(out.status.success(), "{cc} failed: {}", String::from_utf8_lossy(&out.stderr));
    std::os::unix::fs::symlink("libcuda.so.1", dir.join("libcuda.so")).unwrap();
    Some(dir)
}

/// Runs `child` with the fake driver reporting `driver` (cuDriverGetVersion's
/// integer) and compute capability `cc`; returns the child's output (`None`: skipped).
fn run_child(tag: &str, driver: i32, cc: u32, expect: &str) -> Option<String> {
    let dir = fake_driver_dir(tag)?;
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child", "--nocapture", "--test-threads=1"])
        .env("LD_LIBRARY_PATH", prepend(&dir, std::env::var_os("LD_LIBRARY_PATH")))
        .env("FAKE_CUDA_DRIVER_VERSION", driver.to_string())
        .env("FAKE_CUDA_CC", cc.to_string())
        .env("MASKATTN_FAKE_DRIVER_EXPECT", expect)
        .output()
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "child ({tag}) failed:\n{text}");
    assert!(text.contains("child checked"), "the child did not run its case:\n{text}");
    Some(text)
}

fn prepend(dir: &Path, rest: Option<std::ffi::OsString>) -> std::ffi::OsString {
    let mut paths = vec![dir.to_path_buf()];
    paths.extend(rest.iter().flat_map(std::env::split_paths));
    std::env::join_paths(paths).unwrap()
}

/// One case inside the child process; a no-op in an ordinary test run.
#[test]
fn child() {
    let Ok(expect) = std::env::var("MASKATTN_FAKE_DRIVER_EXPECT") else { return };
    let result = Gpu::new(0);
    match (expect.as_str(), &result) {
        ("too_old", Err(Error::DriverTooOld { driver, needed, built_with, .. })) => {
            assert_eq!(*built_with, KERNEL_BUILD.toolkit);
            assert!(driver < needed, "{driver} {needed}");
        }
        ("loads", Err(Error::Cuda(msg))) => assert!(msg.contains("INVALID_IMAGE"), "{msg}"),
        ("unsupported", Err(Error::Unsupported(msg))) => assert!(msg.contains("7.5"), "{msg}"),
        _ => panic!("expected {expect}, got {result:?}"),
    }
    println!("child checked {expect}: {}", result.err().map(|e| e.to_string()).unwrap_or_default());
}

fn driver_int(v: CudaVersion) -> i32 {
    (v.major * 1000 + v.minor * 10) as i32
}

#[test]
fn a_cuda_12_driver_gets_driver_too_old_before_any_module_load() {
    let built = KERNEL_BUILD.toolkit;
    // One major version below the toolkit: a CUDA 12.8 driver (R570) for the pinned
    // 13.0 build. H100 (9.0) has SASS in the fatbin.
    let Some(text) = run_child("old", driver_int(CudaVersion::new(built.major - 1, 8)), 90, "too_old") else { return };
    assert!(!text.contains("cuModuleLoadData called"), "the kernels were loaded first:\n{text}");
    assert!(text.contains("CUDA driver too old") && text.contains("Fix:"), "{text}");
    println!("{text}");
}

#[test]
fn a_driver_of_the_toolkit_major_version_goes_on_to_load_the_kernels() {
    let built = KERNEL_BUILD.toolkit;
    let Some(text) = run_child("ok", driver_int(CudaVersion::new(built.major, 0)), 86, "loads") else { return };
    assert!(text.contains("cuModuleLoadData called"), "{text}");
}

#[test]
fn a_gpu_without_sass_needs_the_toolkit_version_for_the_ptx() {
    let built = KERNEL_BUILD.toolkit;
    // Compute capability 10.0 (B200) has no SASS here: the driver JIT-compiles the
    // PTX, so a driver one minor version below the toolkit is refused for it (and
    // accepted for an H100, which runs SASS). A x.0 toolkit has no such driver.
    if built.minor > 0 {
        let older = driver_int(CudaVersion::new(built.major, built.minor - 1));
        run_child("ptx", older, 100, "too_old");
        run_child("ptx-sass", older, 90, "loads");
    } else {
        run_child("ptx", driver_int(built), 100, "loads");
    }
}

#[test]
fn a_gpu_older_than_sm80_is_unsupported() {
    run_child("sm75", driver_int(KERNEL_BUILD.toolkit), 75, "unsupported");
}
