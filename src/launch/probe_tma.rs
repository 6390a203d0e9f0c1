//! The TMA's conformance test: csrc/hopper_probe_tma.cu runs tile-mode
//! `cp.async.bulk.tensor` loads of 2-, 3- and 5-dimensional boxes from six tensor
//! maps (f16, bf16 and f32 elements; swizzle none, 32B, 64B and 128B; boxes that
//! start before the tensor, run past its end or lie wholly outside it), completing
//! on one mbarrier, and copies the shared memory they wrote back. The image is
//! predicted here from the PTX ISA's rules, written independently of the CPU
//! backend's emulation (csrc/cpu/sm90_tma_box.cpp, the runtime's TMA room):
//! "Tensor" and "Bounding Box" (the box's elements, dimension 0 innermost and
//! contiguous, land densely in shared memory), "Out of Bound Access" (elements
//! outside the tensor read as zero with the zero fill) and "Tensor Swizzling Modes"
//! (the 16-byte chunk index within each 128-byte row of shared memory XORed with the
//! row index modulo 2, 4 or 8 for 32B, 64B and 128B: CuTe's Swizzle<1|2|3, 4, 3>).
//! The same loads run on the CPU backend always and on an sm_90 GPU when there is one.

use super::tensor_map::{OobFill, TensorMapBytes, TensorMapSpec, TmaElement, TmaSwizzle};
use super::{kernel_args, Backend, KernelLaunch};
use crate::error::Result;

kernel_args! {
    /// `maskattn_probe_hopper_tma`: see csrc/hopper_probe_tma.cu for the layouts.
    ProbeTmaArgs {
        map0: TensorMapBytes,
        map1: TensorMapBytes,
        map2: TensorMapBytes,
        map3: TensorMapBytes,
        map4: TensorMapBytes,
        map5: TensorMapBytes,
        loads: u64,
        n_loads: i32,
        tx_bytes: u32,
        image_bytes: u32,
        out: u64,
    }
}

/// One load: a map (index into [`Vectors::maps`]), its box coordinates (innermost
/// first) and the byte offset of its destination in the image.
#[derive(Debug, Clone, PartialEq)]
struct Load {
    map: usize,
    coords: Vec<i32>,
    dst: u32,
}

/// The tensors and the loads.
#[derive(Debug, Clone, PartialEq)]
struct Vectors {
    /// Six maps whose `base` is the byte offset of their tensor in `src`, counted
    /// from the first 16-byte aligned byte of the uploaded buffer.
    maps: Vec<TensorMapSpec>,
    /// Random bytes holding every tensor, with 15 spare bytes in front for the
    /// alignment.
    src: Vec<u8>,
    loads: Vec<Load>,
    /// Bytes of shared memory the loads write into (a multiple of 1024).
    image_bytes: u32,
}

/// What the probe wrote, and where the tensors were.
#[derive(Debug, Clone, PartialEq)]
struct Outputs {
    /// The shared memory after the mbarrier's phase 0, `image_bytes` of it.
    image: Vec<u8>,
    /// Bytes skipped at the front of the source buffer to align it to 16.
    pad: usize,
}

/// Threads of the probe's block.
const THREADS: u32 = 128;

/// Runs the probe on `b`.
fn probe<B: Backend>(b: &B, x: &Vectors) -> Result<Outputs> {
    probe_expecting(b, x, 0)
}

/// The probe with the mbarrier told to expect `extra` bytes more than the loads bring.
fn probe_expecting<B: Backend>(b: &B, x: &Vectors, extra: u32) -> Result<Outputs> {
    assert_eq!(x.maps.len(), 6);
    let src = b.upload(x.src.as_slice())?;
    let table: Vec<i32> = x
        .loads
        .iter()
        .flat_map(|l| {
            let mut row = vec![l.map as i32, l.coords.len() as i32, l.dst as i32];
            row.extend(l.coords.iter().copied().chain(std::iter::repeat(0)).take(5));
            row
        })
        .collect();
    let loads = b.upload(table.as_slice())?;
    let mut out = b.zeros::<u32>(x.image_bytes as usize / 4)?;
    let tx_bytes: u64 = x.loads.iter().map(|l| x.maps[l.map].box_bytes()).sum();
    let pad;
    {
        let (src_addr, _src_access) = b.addr(&src);
        let (loads_addr, _loads_access) = b.addr(&loads);
        let (out_addr, _out_access) = b.addr_mut(&mut out);
        pad = ((16 - src_addr % 16) % 16) as usize;
        let mut maps = [TensorMapBytes([0; 128]); 6];
        for (m, spec) in maps.iter_mut().zip(&x.maps) {
            *m = b.tensor_map(&TensorMapSpec { base: src_addr + pad as u64 + spec.base, ..spec.clone() })?;
        }
        let launch = KernelLaunch {
            kernel: "maskattn_probe_hopper_tma".into(),
            grid: (1, 1, 1),
            block: (THREADS, 1, 1),
            smem_bytes: x.image_bytes + 1024 + 8,
            params: ProbeTmaArgs {
                map0: maps[0],
                map1: maps[1],
                map2: maps[2],
                map3: maps[3],
                map4: maps[4],
                map5: maps[5],
                loads: loads_addr,
                n_loads: x.loads.len() as i32,
                tx_bytes: tx_bytes as u32 + extra,
                image_bytes: x.image_bytes,
                out: out_addr,
            },
        };
        // SAFETY: every tensor lies inside `src` after the pad (vectors() sized it),
        // the table has 8 words per load with ranks and map indices in range and
        // destinations inside the image, `out` holds image_bytes, and the accesses
        // are held until after the launch.
        unsafe { b.launch(&launch) }?;
    }
    let image = b.download(&out)?.into_iter().flat_map(u32::to_le_bytes).collect();
    Ok(Outputs { image, pad })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::splitmix::SplitMix;

    // ---- the ISA's rules -----------------------------------------------------------

    /// How the expectation is computed: the ISA's rules, or (to show that the
    /// comparison can fail) a wrong swizzle or a wrong out-of-bounds rule.
    #[derive(Debug, Clone, Copy, PartialEq)]
    struct Rules {
        /// Swizzle 32B as 64B, 64B as 128B, 128B as 32B.
        rotate_swizzle: bool,
        /// Out-of-bounds coordinates clamped into the tensor instead of filled.
        clamp_oob: bool,
    }

    const ISA: Rules = Rules { rotate_swizzle: false, clamp_oob: false };

    /// Tensor Swizzling Modes: shared memory is seen as rows of 128 bytes, eight
    /// 16-byte chunks each; the swizzle XORs the chunk index (address bits 4..6) with
    /// the row index (bits 7..9) modulo 2 (32B), 4 (64B) or 8 (128B), so the
    /// patterns repeat every 256, 512 and 1024 bytes.
    fn swizzle(offset: usize, mode: TmaSwizzle) -> usize {
        let mask = match mode.span() {
            None => return offset,
            Some(span) => span as usize / 16 - 1,
        };
        offset ^ (((offset >> 7) & mask) << 4)
    }

    /// The image the loads leave in shared memory (zeros where no box lands).
    fn expected_image(x: &Vectors, pad: usize, rules: Rules) -> Vec<u8> {
        let mut image = vec![0u8; x.image_bytes as usize];
        for l in &x.loads {
            let m = &x.maps[l.map];
            let elem = m.elem.bytes() as usize;
            let mode = match (rules.rotate_swizzle, m.swizzle) {
                (true, TmaSwizzle::B32) => TmaSwizzle::B64,
                (true, TmaSwizzle::B64) => TmaSwizzle::B128,
                (true, TmaSwizzle::B128) => TmaSwizzle::B32,
                (_, s) => s,
            };
            // Bounding Box: every element k of the box, dimension 0 fastest; it
            // lands at element index n of the dense box.
            let count: usize = m.box_dims.iter().map(|&b| b as usize).product();
            for n in 0..count {
                let mut rest = n;
                let mut inside = true;
                let mut offset = 0i64;
                for (i, &b) in m.box_dims.iter().enumerate() {
                    let k = (rest % b as usize) as i64;
                    rest /= b as usize;
                    let mut c = i64::from(l.coords[i]) + k;
                    // Out of Bound Access: outside [0, dim) in any dimension.
                    if c < 0 || c >= m.dims[i] as i64 {
                        inside = false;
                        c = c.clamp(0, m.dims[i] as i64 - 1);
                    }
                    offset += c * if i == 0 { elem as i64 } else { m.strides[i - 1] as i64 };
                }
                let dst = l.dst as usize + swizzle(n * elem, mode);
                if inside || rules.clamp_oob {
                    let at = pad + m.base as usize + offset as usize;
                    image[dst..dst + elem].copy_from_slice(&x.src[at..at + elem]);
                }
                // else: the zero fill, already there.
            }
        }
        image
    }

    // ---- the vectors ---------------------------------------------------------------

    fn map(
        name: &'static str,
        elem: TmaElement,
        dims: &[u64],
        strides: &[u64],
        box_dims: &[u32],
        swizzle: TmaSwizzle,
    ) -> TensorMapSpec {
        TensorMapSpec {
            name,
            base: 0,
            elem,
            dims: dims.to_vec(),
            strides: strides.to_vec(),
            box_dims: box_dims.to_vec(),
            swizzle,
            oob: OobFill::Zero,
        }
    }

    fn vectors() -> Vectors {
        use TmaElement::{Bf16, F16, F32};
        use TmaSwizzle::{None as Plain, B128, B32, B64};
        let mut maps = vec![
            // Rows padded past the dims (strides above dims[0] * elem) everywhere.
            map("2d f16", F16, &[40, 13], &[96], &[16, 5], Plain),
            map("2d bf16 32B", Bf16, &[36, 20], &[80], &[16, 12], B32),
            map("2d f16 64B", F16, &[50, 17], &[112], &[32, 9], B64),
            map("2d bf16 128B", Bf16, &[100, 30], &[208], &[64, 10], B128),
            map("3d f32 64B", F32, &[12, 7, 5], &[64, 512], &[16, 4, 3], B64),
            map("5d f16", F16, &[24, 3, 4, 2, 3], &[64, 192, 768, 1536], &[8, 2, 3, 2, 2], Plain),
        ];
        // The tensors one after the other, each at a 256-byte boundary.
        let mut end = 0u64;
        for m in &mut maps {
            m.base = end.div_ceil(256) * 256;
            let last: u64 = (m.dims[0] - 1) * u64::from(m.elem.bytes())
                + m.dims[1..].iter().zip(&m.strides).map(|(&d, &s)| (d - 1) * s).sum::<u64>();
            end = m.base + last + u64::from(m.elem.bytes());
        }
        let mut rng = SplitMix(0x746d_615f_7072);
        let src: Vec<u8> = (0..end + 15).map(|_| rng.next() as u8).collect();

        let boxes: &[(usize, &[i32])] = &[
            (0, &[-3, -2]),  // before the tensor in both dims
            (0, &[30, 10]),  // past its end in both dims
            (0, &[8, 4]),    // inside
            (1, &[-5, 6]),   // left edge
            (1, &[28, -4]),  // right and top edges
            (2, &[20, 8]),   // right and bottom edges
            (2, &[-40, 3]),  // wholly outside: all fill
            (3, &[-17, -3]), // top-left corner
            (3, &[0, 0]),    // inside
            (3, &[60, 25]),  // bottom-right corner
            (4, &[-4, 5, -1]),
            (4, &[2, 1, 3]),
            (5, &[20, -1, 2, 1, -1]),
            (5, &[0, 0, 0, 0, 0]),
        ];
        // Each box at a 1024-byte boundary of the image (the kernel aligns the image
        // to 1024), so that its swizzle pattern starts at its first byte.
        let mut dst = 0u32;
        let loads = boxes
            .iter()
            .map(|&(map, coords)| {
                let l = Load { map, coords: coords.to_vec(), dst };
                dst += (maps[map].box_bytes() as u32).div_ceil(1024) * 1024;
                l
            })
            .collect();
        Vectors { maps, src, loads, image_bytes: dst }
    }

    /// Checks the probe's image against the ISA; `who` names the backend.
    fn check(who: &str, x: &Vectors, out: &Outputs) {
        let want = expected_image(x, out.pad, ISA);
        assert_eq!(out.image.len(), want.len(), "{who}: image size");
        if let Some(at) = (0..want.len()).find(|&i| out.image[i] != want[i]) {
            let l = x.loads.iter().rev().find(|l| l.dst as usize <= at).expect("load 0 starts at 0");
            panic!(
                "{who}: shared byte {at} (byte {} of the box of {} at {:?}, swizzle {:?}): got {:#04x}, want {:#04x}",
                at - l.dst as usize,
                x.maps[l.map].name,
                l.coords,
                x.maps[l.map].swizzle,
                out.image[at],
                want[at]
            );
        }
    }

    #[test]
    fn hopper_tma_probe_args_are_the_kernels_parameter_list() {
        use super::super::KernelArgs;
        // Six 128-byte maps at 64-byte aligned offsets, as the kernel's
        // `.param .align 64 .b8 [128]` parameters, then the scalars.
        assert_eq!(ProbeTmaArgs::OFFSETS, &[0, 128, 256, 384, 512, 640, 768, 776, 780, 784, 792]);
        assert_eq!(std::mem::size_of::<ProbeTmaArgs>(), 832);
    }

    #[test]
    fn hopper_tma_vectors_are_valid_maps() {
        let x = vectors();
        for m in &x.maps {
            m.validate().unwrap();
        }
        assert!(x.maps.iter().all(|m| m.base % 16 == 0));
        // Every box lands inside the image, and the swizzled ones at a 1024-byte boundary.
        for l in &x.loads {
            assert_eq!(l.coords.len(), x.maps[l.map].rank());
            assert!(l.dst % 1024 == 0 && u64::from(l.dst) + x.maps[l.map].box_bytes() <= u64::from(x.image_bytes));
        }
    }

    #[test]
    fn hopper_tma_tables_can_fail() {
        // The swizzle as the ISA's figures draw it: in 128B mode the chunk of row r
        // moves to chunk c ^ (r % 8); in 32B only bit 0 of the chunk, by row bit 0.
        assert_eq!(swizzle(0x80, TmaSwizzle::B128), 0x90);
        assert_eq!(swizzle(0x3f0, TmaSwizzle::B128), 0x380);
        assert_eq!(swizzle(0x100, TmaSwizzle::B64), 0x120);
        assert_eq!(swizzle(0x180, TmaSwizzle::B64), 0x1b0);
        assert_eq!((swizzle(0x80, TmaSwizzle::B32), swizzle(0x100, TmaSwizzle::B32)), (0x90, 0x100));
        assert_eq!(swizzle(0x1234, TmaSwizzle::None), 0x1234);
        for mode in [TmaSwizzle::B32, TmaSwizzle::B64, TmaSwizzle::B128] {
            let mut seen: Vec<usize> = (0..1024).map(|o| swizzle(o, mode)).collect();
            seen.sort();
            assert!(seen.iter().copied().eq(0..1024), "{mode:?} permutes each 1024 bytes");
        }
        let x = vectors();
        let isa = expected_image(&x, 3, ISA);
        // Some boxes are partly filled, one wholly; none is all zeros by chance.
        assert!(isa.iter().filter(|&&b| b != 0).count() > isa.len() / 4);
        for wrong in
            [Rules { rotate_swizzle: true, clamp_oob: false }, Rules { rotate_swizzle: false, clamp_oob: true }]
        {
            assert_ne!(expected_image(&x, 3, wrong), isa, "{wrong:?} must change the expectation");
        }
        // And a probe that read the wrong bytes (another alignment pad) fails the check.
        let shifted = Outputs { image: expected_image(&x, 4, ISA), pad: 3 };
        assert!(std::panic::catch_unwind(|| check("shifted", &x, &shifted)).is_err());
        check("the ISA itself", &x, &Outputs { image: isa, pad: 3 });
    }

    #[cfg(feature = "cpu")]
    #[test]
    fn cpu_backend_hopper_tma_matches_the_isa() {
        let x = vectors();
        for (schedule, cpu) in crate::launch::cpu_backends_per_schedule() {
            let out = probe(&cpu, &x).unwrap();
            check(&format!("CPU backend ({schedule:?})"), &x, &out);
        }
    }

    /// An mbarrier phase waiting for bytes no copy brings never completes: the CPU
    /// backend reports the deadlock, naming the kernel, the block, the waiting warps
    /// and the barrier with what it still misses, instead of hanging.
    #[cfg(feature = "cpu")]
    #[test]
    fn hopper_mbarrier_wait_that_cannot_complete_is_a_reported_deadlock() {
        let cpu = crate::cpu::CpuBackend::new();
        let msg = probe_expecting(&cpu, &vectors(), 16).expect_err("a wait for 16 bytes never sent").to_string();
        for part in [
            "maskattn_probe_hopper_tma",
            "block (0,0,0)",
            "deadlock",
            "warp(s) {0,1,2,3}",
            "wait on the mbarrier at 0x",
            "for parity 0",
            "16 transaction bytes missing",
        ] {
            assert!(msg.contains(part), "{part:?} missing from: {msg}");
        }
    }

    /// The same loads on an sm_90 GPU: the hardware against the same rules, so that
    /// the CPU backend's emulation and the TMA agree wherever both pass.
    #[cfg(feature = "cuda")]
    #[test]
    fn gpu_hopper_tma_matches_the_isa() {
        let Some(gpu) = crate::launch::test_gpu("TMA conformance test", true) else { return };
        let x = vectors();
        let out = probe(&gpu, &x).unwrap();
        check("GPU", &x, &out);
    }
}
