#!/usr/bin/env bash
# The test command (README, .ci/run): installs what is missing (the pinned CUDA 13.0
# compiler, libclang), builds the crate with its CUDA kernels and its CPU backend
# (the same kernels compiled by the host compiler), runs every test. The kernel
# suites (tests/kernels_*.rs, tests/rope.rs, tests/cpu_backend.rs) run on the CPU
# backend always and on the GPU too where there is one; their GPU halves skip with
# a message where there is none (MASKATTN_REQUIRE_GPU=1 makes that a failure). Then
# the kernel suites again, on few cases, in the CPU backend's memcheck
# (AddressSanitizer + UBSan) and racecheck builds. MASKATTN_PROPTEST_CASES raises the
# proptest case count, MASKATTN_GPU_FUZZ_CASES the kernel fuzz cases.
set -euo pipefail
cd "$(dirname "$0")/.."
# Each step's start, in minutes:seconds since the script began (CI's time budget).
step() { printf '== [%d:%02d] %s\n' $((SECONDS / 60)) $((SECONDS % 60)) "$*"; }

NVCC=$(scripts/setup-cuda.sh)
export NVCC

step "CPU-only build: cargo build --no-default-features (no nvcc involved)"
env -u NVCC cargo build --no-default-features --lib

step "cargo test with the CUDA kernels compiled ($NVCC) and the CPU backend"
cargo test --all-targets --no-fail-fast
step "doc tests"
cargo test --doc

# The checking builds of the CPU backend: MASKATTN_CPU_CHECK changes only the flags
# of the kernels' host compile (build.rs reruns on it), so they share target/ and
# its dependencies with the steps above; the crate and its test binaries rebuild.
# A few fuzz cases per suite and every fixed case: a subset of every kernel. ASan's
# runtime is linked as a library, not first in the list, hence
# verify_asan_link_order=0.
kernel_suites=(--test kernels_forward --test kernels_backward --test kernels_xattn --test kernels_naive
               --test kernels_smoke --test rope --test cpu_backend)
for check in memcheck racecheck; do
  step "CPU backend, $check build: the kernel suites on a subset of cases"
  MASKATTN_CPU_CHECK=$check MASKATTN_GPU_FUZZ_CASES=${MASKATTN_CHECK_FUZZ_CASES:-2} \
    ASAN_OPTIONS=verify_asan_link_order=0:detect_leaks=0 \
    cargo test --no-default-features --features cpu "${kernel_suites[@]}" --no-fail-fast
  # The primitives' conformance probes (sm_80 and sm_90) and the Hopper kernels' unit
  # tests live in the library's tests.
  MASKATTN_CPU_CHECK=$check ASAN_OPTIONS=verify_asan_link_order=0:detect_leaks=0 \
    cargo test --no-default-features --features cpu --lib -- hopper primitives_match_the_isa
done

# candle interop (feature `candle`, src/candle.rs). candle-core's CUDA backend links
# libcuda, libnvrtc, libcublas(Lt), libcurand and libcudart at link time (cudarc's
# `dynamic-linking`), and its binaries need them at load time. scripts/candle-stub.sh
# runs the command with, for each of these the machine lacks, a stub library built
# on the spot (real SONAME, every symbol cudarc binds, each returning "not available",
# CUDA_ERROR_STUB_LIBRARY for the driver) passed through LIBRARY_PATH (link; not in
# cargo's fingerprint, so nothing rebuilds) and LD_LIBRARY_PATH (load). With the stub
# libcuda, cuInit fails: maskattn's Gpu::new and candle's Device::new_cuda return
# errors and the GPU tests skip (fail under MASKATTN_REQUIRE_GPU=1), while the CPU
# tests and the example's CPU path run. It also sets CUDA_COMPUTE_CAP=80 where
# nvidia-smi cannot tell candle-kernels' build the GPU's. The first build compiles
# candle's CUDA kernels with nvcc: the longest step of this script on a small machine
# (20 min on 2 cores with cudaforge's default of one nvcc per two cores).
step "candle interop: cargo test --features candle --test candle_interop"
# candle-kernels' build (cudaforge) runs nvcc on half the cores unless told otherwise.
export CUDAFORGE_THREADS=${CUDAFORGE_THREADS:-$(nproc)}
candle_env=()
if ! ldconfig -p 2>/dev/null | grep -q 'libcuda\.so\.1'; then
  # No driver: no device code of this build can run, so nvcc (candle's static mmq/moe
  # kernels, and maskattn's fatbin of this feature set) optimizes less: half the
  # compile time of candle's kernels. With a driver, every kernel is built as usual.
  candle_env=(NVCC_APPEND_FLAGS="${NVCC_APPEND_FLAGS:+$NVCC_APPEND_FLAGS }-Xcicc -O1 -Xptxas -O1")
fi
env "${candle_env[@]}" scripts/candle-stub.sh cargo test --features candle --test candle_interop --no-fail-fast
env "${candle_env[@]}" scripts/candle-stub.sh cargo run --features candle --example candle_block

if ! ldconfig -p 2>/dev/null | grep -q 'libcuda\.so\.1'; then
  echo "note: no CUDA driver on this machine: the GPU tests above returned early with a skip message"
  echo "      (run with MASKATTN_REQUIRE_GPU=1 on a GPU machine to make a missing GPU a failure)"
fi
step "done"
