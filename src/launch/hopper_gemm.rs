//! The sm_90 primitives working together: csrc/hopper_gemm.cu computes C = A B^T with
//! a producer warp loading tiles through TMA into a two-stage ring and a consumer
//! warpgroup multiplying them with wgmma, the stages handed over with mbarriers. Its
//! tests run it on the CPU backend (plain, memcheck and racecheck builds) against a
//! host product, with inputs whose every sum is exact, so the result is determined
//! bit for bit; `tests/ptxas_report.rs` and the SASS check look at its sm_90a code.
#![cfg_attr(not(test), allow(dead_code))]

use super::tensor_map::{OobFill, TensorMapBytes, TensorMapSpec, TmaElement, TmaSwizzle};
use super::{kernel_args, Backend, KernelLaunch, Scalar};
use crate::error::{Error, Result};
use crate::shape::{DType, Element};

kernel_args! {
    /// `maskattn_hopper_gemm_*`: the tensor maps of A and B, then C and the sizes.
    GemmArgs {
        a: TensorMapBytes,
        b: TensorMapBytes,
        c: u64,
        m: i32,
        n: i32,
        k: i32,
    }
}

const BLOCK_M: usize = 64;
const BLOCK_K: usize = 64;
const STAGES: usize = 2;
const THREADS: u32 = 256;

/// The kernel for an element type: its name and the columns of C per CTA.
fn kernel_of(dtype: DType) -> Result<(&'static str, usize, TmaElement)> {
    match dtype {
        DType::BF16 => Ok(("maskattn_hopper_gemm_bf16_n128", 128, TmaElement::Bf16)),
        DType::F16 => Ok(("maskattn_hopper_gemm_f16_n64", 64, TmaElement::F16)),
        other => Err(Error::Unsupported(format!("gemm: {other:?} (f16 and bf16 only)"))),
    }
}

/// Shared memory of one CTA: two stages of an A and a B tile from a 1,024-byte
/// boundary (the kernel aligns its buffer's start up to one), then four mbarriers.
fn smem_bytes(block_n: usize) -> u32 {
    (1024 + STAGES * (BLOCK_M + block_n) * BLOCK_K * 2 + 2 * STAGES * 8) as u32
}

/// A row-major `[rows, k]` operand as a 2-D tensor map of `[box_rows, 64]` boxes in
/// the 128-byte swizzle the kernel's wgmma descriptors expect.
fn operand_map(
    name: &'static str,
    base: u64,
    elem: TmaElement,
    rows: usize,
    k: usize,
    box_rows: usize,
) -> TensorMapSpec {
    TensorMapSpec {
        name,
        base,
        elem,
        dims: vec![k as u64, rows as u64],
        strides: vec![(k * 2) as u64],
        box_dims: vec![BLOCK_K as u32, box_rows as u32],
        swizzle: TmaSwizzle::B128,
        oob: OobFill::Zero,
    }
}

/// C = A B^T, `a` `[m, k]` and `b` `[n, k]` row-major, on `backend`; C `[m, n]` f32.
pub(crate) fn gemm<B: Backend, T: Element + Scalar>(
    backend: &B,
    a: &[T],
    b: &[T],
    (m, n, k): (usize, usize, usize),
) -> Result<Vec<f32>> {
    let (kernel, block_n, elem) = kernel_of(T::DTYPE)?;
    if a.len() != m * k || b.len() != n * k || m == 0 || n == 0 || k == 0 {
        return Err(Error::Shape(format!(
            "gemm: A of {} and B of {} elements for m {m}, n {n}, k {k}",
            a.len(),
            b.len()
        )));
    }
    let too_big = |x: usize| i32::try_from(x).is_err();
    if too_big(m) || too_big(n) || too_big(k) {
        return Err(Error::Unsupported(format!("gemm: m {m}, n {n}, k {k} past i32")));
    }
    let (a_buf, b_buf) = (backend.upload(a)?, backend.upload(b)?);
    let mut c_buf = backend.zeros::<f32>(m * n)?;
    {
        let (a_addr, _a) = backend.addr(&a_buf);
        let (b_addr, _b) = backend.addr(&b_buf);
        let (c_addr, _c) = backend.addr_mut(&mut c_buf);
        let launch = KernelLaunch {
            kernel: kernel.into(),
            grid: (n.div_ceil(block_n) as u32, m.div_ceil(BLOCK_M) as u32, 1),
            block: (THREADS, 1, 1),
            smem_bytes: smem_bytes(block_n),
            params: GemmArgs {
                a: backend.tensor_map(&operand_map("gemm A", a_addr, elem, m, k, BLOCK_M))?,
                b: backend.tensor_map(&operand_map("gemm B", b_addr, elem, n, k, block_n))?,
                c: c_addr,
                m: m as i32,
                n: n as i32,
                k: k as i32,
            },
        };
        // SAFETY: the tensor maps cover exactly A and B (validated by tensor_map), the
        // kernel writes C only at rows < m and columns < n, and the accesses are held
        // until after the launch.
        unsafe { backend.launch(&launch) }?;
    }
    backend.download(&c_buf)
}

#[cfg(all(test, feature = "cpu"))]
mod tests {
    use super::*;
    use crate::cpu::{CpuBackend, CpuOptions, Schedule};
    use crate::splitmix::SplitMix;
    use half::{bf16, f16};

    /// Multiples of 1/8 in (-1, 1): every product a multiple of 2^-6 and every sum
    /// of a few hundred of them exact in f32, whatever the order.
    fn operand<T: Element>(rng: &mut SplitMix, len: usize) -> Vec<T> {
        (0..len).map(|_| T::from_f64((rng.next() % 15) as f64 / 8.0 - 0.875)).collect()
    }

    fn product<T: Element>(a: &[T], b: &[T], (m, n, k): (usize, usize, usize)) -> Vec<f32> {
        let mut c = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k).map(|x| a[i * k + x].to_f64() * b[j * k + x].to_f64()).sum::<f64>() as f32;
            }
        }
        c
    }

    fn check<T: Element + Scalar>(shape: (usize, usize, usize), seed: u64) {
        let (m, n, k) = shape;
        let mut rng = SplitMix(seed);
        let (a, b) = (operand::<T>(&mut rng, m * k), operand::<T>(&mut rng, n * k));
        let want = product(&a, &b, shape);
        let (_, block_n, _) = kernel_of(T::DTYPE).expect("f16 or bf16");
        for schedule in [Schedule::Random, Schedule::Victim, Schedule::RoundRobin] {
            let cpu = CpuBackend::with_options(CpuOptions { seed, schedule, ..CpuOptions::default() });
            let got = gemm(&cpu, &a, &b, shape).unwrap_or_else(|e| panic!("{shape:?} {schedule:?}: {e}"));
            assert_eq!(got, want, "{:?} {shape:?} {schedule:?}", T::DTYPE);
            // The work model: every tile walks every k tile, two TMA loads and four
            // k16 wgmma each, and moves whole boxes (the fill at the edges included).
            let tiles = (m.div_ceil(BLOCK_M) * n.div_ceil(block_n)) as u64;
            let k_tiles = k.div_ceil(BLOCK_K) as u64;
            let c = cpu.counters();
            assert_eq!(c.wgmma, tiles * k_tiles * (BLOCK_K / 16) as u64);
            assert_eq!(c.tma_loads, tiles * k_tiles * 2);
            assert_eq!(c.bytes_tma, tiles * k_tiles * ((BLOCK_M + block_n) * BLOCK_K * 2) as u64);
        }
    }

    #[test]
    fn hopper_gemm_matches_the_exact_product() {
        // Lengths that are not tile multiples: the TMA's zero fill at every edge.
        check::<bf16>((100, 200, 160), 1);
        check::<f16>((64, 70, 64), 2);
        check::<f16>((130, 64, 200), 3);
    }

    #[test]
    fn hopper_gemm_over_the_shared_memory_budget_is_a_typed_error() {
        let cpu = CpuBackend::with_options(CpuOptions { max_dynamic_smem: 48 * 1024, ..CpuOptions::default() });
        let a = vec![bf16::ZERO; 64 * 64];
        match gemm(&cpu, &a, &a, (64, 64, 64)) {
            Err(Error::Unsupported(msg)) => assert!(msg.contains("maskattn_hopper_gemm_bf16_n128"), "{msg}"),
            other => panic!("{other:?}"),
        }
    }
}
