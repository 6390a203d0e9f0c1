#!/usr/bin/env bash
# Installs what maskattn's build needs and a fresh Debian/Ubuntu machine lacks:
# - the CUDA 13.0 compiler (nvcc) from NVIDIA's PyPI wheels, pinned, in a venv under
#   ${MASKATTN_CUDA_DIR:-~/.cache/maskattn/cuda-13.0.88} (build.rs finds it there);
#   skipped when NVCC is set or nvcc is on PATH;
# - cuobjdump and nvdisasm from NVIDIA's PyPI wheels, pinned, in a venv under
#   ${MASKATTN_CUDA_TOOLS_DIR:-~/.cache/maskattn/cuda-tools}, always (whatever nvcc is
#   used): tests/fatbin_static.rs reads the built fatbin with them;
# - libclang (for the bindgen freshness test), through apt when missing.
# Idempotent: a second run does nothing. Prints the nvcc it will use.
set -euo pipefail

dir=${MASKATTN_CUDA_DIR:-$HOME/.cache/maskattn/cuda-13.0.88}
# Keep these pins: a newer nvvm emits PTX that the 13.0 driver rejects.
pins=(nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88
      nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85)

pinned_nvcc() { ls "$dir"/lib/python3*/site-packages/nvidia/cu13/bin/nvcc 2>/dev/null | head -n1; }

if [ -n "${NVCC:-}" ]; then
  nvcc=$NVCC
elif command -v nvcc >/dev/null 2>&1; then
  nvcc=$(command -v nvcc)
elif [ -n "$(pinned_nvcc)" ]; then
  nvcc=$(pinned_nvcc)
else
  echo "setup-cuda: installing the pinned CUDA 13.0 compiler into $dir" >&2
  python3 -m venv "$dir"
  "$dir/bin/pip" install --quiet --disable-pip-version-check "${pins[@]}"
  nvcc=$(pinned_nvcc)
  [ -n "$nvcc" ] || { echo "setup-cuda: nvcc missing after install in $dir" >&2; exit 1; }
fi

# Binary utilities as new as the newest nvcc the build was checked with (13.5): the
# cuobjdump of 13.4 fails (`-elf`) on the line tables of a 13.5 fatbin, and cuobjdump
# runs nvdisasm for `-sass`. They read the fatbins of the older toolkits too.
tools=${MASKATTN_CUDA_TOOLS_DIR:-$HOME/.cache/maskattn/cuda-tools}
tools_version=13.5.37
tool_pins=(nvidia-cuda-cuobjdump==$tools_version nvidia-cuda-nvdisasm==$tools_version)
tool_in() { ls "$tools"/lib/python3*/site-packages/nvidia/cu13/bin/"$1" 2>/dev/null | head -n1; }
tools_ok() {
  [ -n "$(tool_in nvdisasm)" ] && [ -n "$(tool_in cuobjdump)" ] &&
    "$(tool_in cuobjdump)" --version 2>/dev/null | grep -q "V$tools_version"
}
if ! tools_ok; then
  echo "setup-cuda: installing cuobjdump and nvdisasm $tools_version into $tools" >&2
  python3 -m venv "$tools"
  "$tools/bin/pip" install --quiet --disable-pip-version-check "${tool_pins[@]}"
  tools_ok || { echo "setup-cuda: cuobjdump/nvdisasm $tools_version missing after install in $tools" >&2; exit 1; }
fi

if ! ldconfig -p 2>/dev/null | grep -q 'libclang\(-[0-9.]*\)\?\.so'; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "setup-cuda: installing libclang-dev (bindgen)" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libclang-dev >/dev/null
  else
    echo "setup-cuda: libclang not found; install libclang-dev (only the bindgen freshness test needs it)" >&2
  fi
fi

"$nvcc" --version | tail -n 2 >&2
echo "$nvcc"
