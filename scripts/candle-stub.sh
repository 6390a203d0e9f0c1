#!/usr/bin/env bash
# Runs a command (cargo build/test/clippy --features candle ...) so that the `candle`
# feature links and its binaries load on a machine without the NVIDIA driver or
# without the CUDA math libraries:
#
#   scripts/candle-stub.sh cargo test --features candle --test candle_interop
#
# Why: candle-core's `cuda` feature turns on cudarc's `dynamic-linking`, so every
# binary that links candle has DT_NEEDED entries for libcuda.so.1, libnvrtc.so.13,
# libcublas.so.13, libcublasLt.so.13, libcurand.so.10 (cudarc) and libcudart.so.13
# (candle-kernels' static libmoe.a), and the linker must resolve every driver,
# cuBLAS, ... symbol the code references. maskattn alone loads libcuda at run time
# (cudarc's `fallback-dynamic-loading`) and needs none of them.
#
# What: for each of those libraries, a probe program is linked against it (with the
# search dirs cudarc's build script uses: CUDA_HOME/CUDA_PATH/..., else /usr,
# /usr/local/cuda, /opt/cuda, /usr/lib/cuda) and run. Where that works, the real
# library is used. Where it does not, this script builds a stub into
# $MASKATTN_CUDA_STUBS (default target/cuda-stubs): a shared library with the real
# SONAME (so the binary's NEEDED entry is the real name and the same binary would use
# the real driver elsewhere), defining every function cudarc binds (parsed from the
# cudarc sources in use) plus the nvcc registration hooks; every stub returns the
# library's "not available" status (CUDA_ERROR_STUB_LIBRARY = 34 for the driver and
# the runtime, like NVIDIA's own stub; NVRTC_ERROR_INTERNAL_ERROR; CUBLAS_STATUS_NOT_
# INITIALIZED; CURAND_STATUS_INITIALIZATION_FAILED), NULL-free strings for the
# *GetErrorString functions, and never touches its arguments.
#
# The stubs reach the linker through LIBRARY_PATH (searched after cargo's -L dirs,
# and, unlike RUSTFLAGS, not part of cargo's fingerprint: nothing is rebuilt) and the
# loader through LD_LIBRARY_PATH. At run time the stub libcuda.so.1 is what the
# process has loaded, so maskattn's own driver probe (dlopen "libcuda.so.1") succeeds,
# but cuInit returns CUDA_ERROR_STUB_LIBRARY: `Gpu::new` and candle's
# `Device::new_cuda` return errors (no panic, no crash) and GPU tests skip (or fail
# under MASKATTN_REQUIRE_GPU=1). On a machine with the driver and toolkit nothing is
# stubbed and the command runs unchanged (plus the toolkit's lib dir on
# LD_LIBRARY_PATH when the loader does not know it).
set -euo pipefail
cd "$(dirname "$0")/.."

[ $# -gt 0 ] || { echo "usage: $0 COMMAND [ARGS...]" >&2; exit 2; }

stubs=${MASKATTN_CUDA_STUBS:-$PWD/target/cuda-stubs}
mkdir -p "$stubs"
rm -f "$stubs"/lib*.so* "$stubs"/*.c
cc=${CC:-cc}

# The link search dirs of cudarc's build script (dynamic_linking -> link_searches).
roots=()
for var in CUDA_HOME CUDA_PATH CUDA_ROOT CUDA_TOOLKIT_ROOT_DIR CUDNN_LIB; do
  [ -n "${!var:-}" ] && roots+=("${!var}")
done
[ ${#roots[@]} -gt 0 ] || roots=(/usr /usr/local/cuda /opt/cuda /usr/lib/cuda)
link_dirs=() run_dirs=()
for r in "${roots[@]}"; do
  for sub in lib lib/stubs lib/x86_64 lib/x86_64-linux-gnu lib64 lib64/stubs targets/x86_64-linux \
             targets/x86_64-linux/lib targets/x86_64-linux/lib/stubs; do
    [ -d "$r/$sub" ] || continue
    link_dirs+=("-L$r/$sub")
    # Stub dirs are for linking only; /usr/lib* the loader searches anyway.
    case $r/$sub in */stubs | /usr/lib*) ;; *) run_dirs+=("$r/$sub") ;; esac
  done
done
run_path=$(IFS=:; echo "${run_dirs[*]:-}")

# candle-kernels' build (cudaforge) compiles for the compute capability nvidia-smi
# reports and fails without one: default to 8.0 there (its PTX JIT-compiles on newer
# GPUs; only candle's static GGUF/MoE kernels are sm_80 SASS, unused by maskattn).
if [ -z "${CUDA_COMPUTE_CAP:-}" ] && ! nvidia-smi --query-gpu=compute_cap --format=csv >/dev/null 2>&1; then
  export CUDA_COMPUTE_CAP=80
fi

# name  soname  cudarc bindings module  status returned by every stub
libs=(
  "cuda     libcuda.so.1      driver   34"
  "nvrtc    libnvrtc.so.13    nvrtc    11"
  "cublas   libcublas.so.13   cublas   1"
  "cublasLt libcublasLt.so.13 cublaslt 1"
  "curand   libcurand.so.10   curand   203"
  "cudart   libcudart.so.13   runtime  34"
)

probe_dir=$(mktemp -d)
trap 'rm -rf "$probe_dir"' EXIT
echo 'int main(void) { return 0; }' >"$probe_dir/main.c"

# Does the real library link and load? (link with -lNAME kept, then run.)
real_ok() {
  "$cc" -o "$probe_dir/probe_$1" "$probe_dir/main.c" "${link_dirs[@]}" -Wl,--no-as-needed "-l$1" 2>/dev/null &&
    LD_LIBRARY_PATH="$run_path${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" "$probe_dir/probe_$1" 2>/dev/null
}

need=()
for entry in "${libs[@]}"; do
  read -r name soname module status <<<"$entry"
  real_ok "$name" || need+=("$entry")
done

if [ ${#need[@]} -gt 0 ]; then
  # The cudarc sources this build uses: their bindings list every symbol.
  cudarc_dir=$(cargo metadata --format-version 1 --features candle | python3 -c '
import json, os, sys
m = json.load(sys.stdin)
print(next(os.path.dirname(p["manifest_path"]) for p in m["packages"] if p["name"] == "cudarc"))')
  for entry in "${need[@]}"; do
    read -r name soname module status <<<"$entry"
    python3 - "$cudarc_dir/src/$module/sys/mod.rs" "$status" "$name" >"$stubs/$name.c" <<'EOF'
import re, sys
src, status, name = open(sys.argv[1]).read(), sys.argv[2], sys.argv[3]
print("/* generated by scripts/candle-stub.sh: a stub with every symbol cudarc binds, */")
print("/* each returning 'not available'; arguments are never read. */")
print('static const char msg[] = "CUDA stub library (scripts/candle-stub.sh): no driver or library";')
print("struct cfd { int x, y, z, w, f; }; /* cudaChannelFormatDesc */")
seen = set()
for m in re.finditer(r'extern "C" \{\s*(?:pub\s+)?fn (\w+)\((.*?)\)(?:\s*->\s*([^;]+))?;', src, re.S):
    fn, ret = m.group(1), (m.group(3) or "").strip()
    if fn in seen:
        continue
    seen.add(fn)
    # The runtime's per-thread-default-stream variants (nvcc --default-stream
    # per-thread, as candle-kernels builds libmoe.a) share the signature.
    for f in [fn] + ([fn + "_ptsz", fn + "_ptds"] if name == "cudart" else []):
        if not ret:
            print(f"void {f}(void) {{}}")
        elif ret.startswith("*"):
            print(f"const char *{f}(void) {{ return msg; }}")
        elif ret == "usize":
            print(f"unsigned long {f}(void) {{ return 0; }}")
        elif ret == "cudaChannelFormatDesc":
            print(f"struct cfd {f}(void) {{ struct cfd d = {{0}}; return d; }}")
        else:
            print(f"int {f}(void) {{ return {status}; }}")
if name == "cudart":
    # What nvcc's host code calls (`nm -u libmoe.a`): kernel registration at load
    # time (runs in every binary that links libmoe.a: must not fail), launch glue.
    print("void **__cudaRegisterFatBinary(void) { static void *h; return &h; }")
    for fn in ["__cudaRegisterFatBinaryEnd", "__cudaUnregisterFatBinary", "__cudaRegisterFunction",
               "__cudaRegisterVar", "__cudaRegisterManagedVar", "__cudaRegisterTexture", "__cudaRegisterSurface"]:
        print(f"void {fn}(void) {{}}")
    for fn in ["__cudaPushCallConfiguration", "__cudaPopCallConfiguration", "__cudaGetKernel",
               "__cudaLaunchKernel", "__cudaLaunchKernel_ptsz"]:
        print(f"int {fn}(void) {{ return {status}; }}")
    print("char __cudaInitModule(void) { return 0; }")
EOF
    "$cc" -shared -fPIC -w -O1 -Wl,-soname,"$soname" -o "$stubs/lib$name.so" "$stubs/$name.c"
    ln -sf "lib$name.so" "$stubs/$soname"
  done
  echo "candle-stub: stubbed ${#need[@]} CUDA libraries in $stubs:$(printf ' %s' "${need[@]%% *}")" \
       "(GPU tests will skip)" >&2
  export LIBRARY_PATH="$stubs${LIBRARY_PATH:+:$LIBRARY_PATH}"
  run_path="$stubs${run_path:+:$run_path}"
fi
[ -z "$run_path" ] || export LD_LIBRARY_PATH="$run_path${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
exec "$@"
