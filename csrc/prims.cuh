// The one primitives header: every device-only instruction and builtin the kernels
// use is behind it. nvcc gets the PTX wrappers (prims/ptx.cuh); the host compiler,
// building the kernels for the CPU backend, gets their emulation (cpu/prims.h) with
// the same names and signatures, so a kernel's source is the same for both.
#pragma once

#if defined(__CUDACC__)
#include "prims/ptx.cuh"
#else
#include "cpu/prims.h"
#endif
