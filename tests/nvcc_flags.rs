//! build.rs's choice of nvcc flags, driven through stand-in `nvcc` scripts: each
//! prints the `--version` of one toolkit, records the arguments it is called with
//! and, like the real compiler of that version, rejects the flags that version does
//! not know (`--compress-mode` and compute_120 before 12.8). The test calls the same
//! code build.rs calls (build/nvcc.rs): the version query and the compile are real
//! process calls, only the compiler is fake. No 12.x nvcc installs on the project's
//! machines (the PyPI cu12 wheels ship ptxas without nvcc), so this is what checks
//! the 12.x flag sets.
#![cfg(unix)]

#[path = "../build/nvcc.rs"]
mod nvcc;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use nvcc::NvccVersion;

/// A new directory per call: the tests run in parallel.
fn fresh_dir(tag: &str) -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("maskattn-nvcc-{tag}-{}-{n}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// A stand-in nvcc of `release` in a fresh directory; it writes its arguments, one
/// per line, to `args.txt` beside itself.
fn stand_in(release: &str, build: &str) -> PathBuf {
    let dir = fresh_dir(release);
    let (major, minor) = release.split_once('.').unwrap();
    let knows_new_flags = (major.parse::<u32>().unwrap(), minor.parse::<u32>().unwrap()) >= (12, 8);
    let script = format!(
        r#"#!/bin/sh
if [ "$1" = "--version" ]; then
  echo 'nvcc: NVIDIA (R) Cuda compiler driver'
  echo 'Copyright (c) 2005-2025 NVIDIA Corporation'
  echo 'Built on Wed_Jan_15_19:20:09_PST_2025'
  echo 'Cuda compilation tools, release {release}, V{build}'
  echo 'Build cuda_{release}.r{release}/compiler.00000000_0'
  exit 0
fi
here=$(dirname "$0")
: > "$here/args.txt"
out=
prev=
for a in "$@"; do
  printf '%s\n' "$a" >> "$here/args.txt"
  if [ {knows} = 0 ]; then
    case "$a" in
      --compress-mode*) echo "nvcc fatal   : Unknown option '$a'" >&2; exit 1 ;;
      *compute_120*|*sm_120*) echo "nvcc fatal   : Unsupported gpu architecture 'compute_120'" >&2; exit 1 ;;
    esac
  fi
  [ "$prev" = "-o" ] && out=$a
  prev=$a
done
echo "ptxas info    : Compiling entry function 'k' for 'sm_80'" >&2
printf 'fatbin' > "$out"
"#,
        knows = u8::from(knows_new_flags)
    );
    let nvcc = dir.join("nvcc");
    fs::write(&nvcc, script).unwrap();
    fs::set_permissions(&nvcc, fs::Permissions::from_mode(0o755)).unwrap();
    nvcc
}

/// Runs the plan of the stand-in's version through the stand-in, as build.rs does;
/// returns the plan and the arguments the "compiler" received.
fn build_with(release: &str, build: &str) -> (nvcc::Plan, Vec<String>) {
    let exe = stand_in(release, build);
    let dir = exe.parent().unwrap().to_path_buf();
    let version = nvcc::query_version(&exe).unwrap();
    let plan = nvcc::plan(version).unwrap();
    let fatbin = dir.join("out.fatbin");
    let out = plan.compile(&exe, Path::new("kernels.cu"), Path::new("csrc"), &fatbin).unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("Compiling entry function"));
    assert_eq!(fs::read(&fatbin).unwrap(), b"fatbin");
    let args = fs::read_to_string(dir.join("args.txt")).unwrap().lines().map(String::from).collect();
    fs::remove_dir_all(&dir).unwrap();
    (plan, args)
}

fn gencodes(args: &[String]) -> Vec<&str> {
    args.windows(2).filter(|w| w[0] == "-gencode").map(|w| w[1].as_str()).collect()
}

#[test]
fn cuda_12_4_gets_sm80_sm90a_and_ptx_without_compress_mode() {
    let (plan, args) = build_with("12.4", "12.4.131");
    assert_eq!(plan.nvcc, NvccVersion::new(12, 4));
    assert_eq!(
        gencodes(&args),
        ["arch=compute_80,code=sm_80", "arch=compute_90a,code=sm_90a", "arch=compute_80,code=compute_80"]
    );
    assert!(!args.iter().any(|a| a.starts_with("--compress-mode")), "{args:?}");
    assert!(plan.notes.iter().any(|n| n.contains("sm_120")), "{:?}", plan.notes);
}

#[test]
fn cuda_12_8_adds_sm120_but_keeps_the_default_compression() {
    let (plan, args) = build_with("12.8", "12.8.93");
    assert_eq!(
        gencodes(&args),
        [
            "arch=compute_80,code=sm_80",
            "arch=compute_90a,code=sm_90a",
            "arch=compute_120,code=sm_120",
            "arch=compute_80,code=compute_80"
        ]
    );
    // `size` would raise the driver floor of a 12.x build from 525 to 550.
    assert!(!args.iter().any(|a| a.starts_with("--compress-mode")), "{args:?}");
    assert!(plan.notes.is_empty(), "{:?}", plan.notes);
}

#[test]
fn cuda_13_gets_everything_and_size_compression() {
    for (release, build) in [("13.0", "13.0.88"), ("13.5", "13.5.37")] {
        let (plan, args) = build_with(release, build);
        assert_eq!(plan.sass, ["sm_80", "sm_90a", "sm_120"], "{release}");
        assert_eq!(gencodes(&args).len(), 4, "{release}: {args:?}");
        assert!(args.contains(&"--compress-mode=size".to_string()), "{release}: {args:?}");
        assert!(args.windows(2).any(|w| w == ["-Xptxas", "-v"]), "{release}: the spill report needs ptxas -v");
        assert_eq!(args[args.len() - 3..args.len() - 1], ["kernels.cu", "-o"]);
    }
}

#[test]
fn the_old_flag_set_fails_on_a_12_4_nvcc_as_the_issue_reports() {
    // The flags of CUDA 13 given to a 12.4 nvcc: the stand-in rejects them as the
    // real one does, so the tests above show the per-version plans avoid that.
    let exe = stand_in("12.4", "12.4.131-old-flags");
    let plan_13 = nvcc::plan(NvccVersion::new(13, 0)).unwrap();
    let e = plan_13.compile(&exe, Path::new("k.cu"), Path::new("csrc"), &exe.with_file_name("o")).unwrap_err();
    assert!(e.contains("Unsupported gpu architecture 'compute_120'") || e.contains("Unknown option"), "{e}");
    fs::remove_dir_all(exe.parent().unwrap()).unwrap();
}

#[test]
fn too_old_nvcc_is_a_clear_error() {
    for (release, build) in [("11.8", "11.8.89"), ("12.2", "12.2.140")] {
        let exe = stand_in(release, build);
        let version = nvcc::query_version(&exe).unwrap();
        let e = nvcc::plan(version).unwrap_err();
        assert!(e.contains(&format!("nvcc {release} is too old")), "{e}");
        assert!(e.contains("12.4") && e.contains("scripts/setup-cuda.sh") && e.contains("NVCC="), "{e}");
        fs::remove_dir_all(exe.parent().unwrap()).unwrap();
    }
}

#[test]
fn version_lines_of_real_toolkits_parse() {
    let v = |s| nvcc::parse_version(s);
    assert_eq!(v("Cuda compilation tools, release 13.0, V13.0.88\n"), Some(NvccVersion::new(13, 0)));
    assert_eq!(v("x\nCuda compilation tools, release 12.10, V12.10.1\n"), Some(NvccVersion::new(12, 10)));
    assert_eq!(v("nvcc: NVIDIA (R) Cuda compiler driver\n"), None);
    assert_eq!(v("Cuda compilation tools, release thirteen\n"), None);
}

#[test]
fn an_nvcc_that_prints_no_version_is_an_error_naming_it() {
    let dir = fresh_dir("broken");
    let exe = dir.join("nvcc");
    fs::write(&exe, "#!/bin/sh\necho 'not a compiler'\n").unwrap();
    fs::set_permissions(&exe, fs::Permissions::from_mode(0o755)).unwrap();
    let e = nvcc::query_version(&exe).unwrap_err();
    assert!(e.contains("release X.Y") && e.contains(&*exe.to_string_lossy()), "{e}");
    fs::remove_dir_all(&dir).unwrap();
}

#[cfg(feature = "cuda")]
#[test]
fn the_library_records_the_version_build_rs_found() {
    let build = maskattn::cuda::KERNEL_BUILD;
    if !Path::new(build.nvcc).is_file() {
        // A test binary carried to another machine (scripts/gpu-bundle.sh).
        eprintln!("skipping: {} is not on this machine", build.nvcc);
        return;
    }
    let found = nvcc::query_version(Path::new(build.nvcc)).unwrap();
    assert_eq!((build.toolkit.major, build.toolkit.minor), (found.major, found.minor));
    assert_eq!(build.sass, nvcc::plan(found).unwrap().sass.as_slice());
    assert_eq!(env!("MASKATTN_NVCC_VERSION"), found.to_string());
}

#[test]
fn the_build_floor_and_the_runtime_floor_agree() {
    let m = maskattn::compat::MIN_TOOLKIT;
    assert_eq!(nvcc::MIN_NVCC, NvccVersion::new(m.major, m.minor));
}
