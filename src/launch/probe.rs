//! The primitives' conformance test: csrc/primitives_probe.cu runs `mma.sync`
//! m16n8k16 (f16, bf16), `ldmatrix` x4 (with and without `.trans`), `cp.async`
//! (copy and zero-fill, `wait_group` 1 and 0), `cvt.rn.{f16x2,bf16x2}.f32` and
//! `ex2.approx.ftz.f32` once each on registers built here, and the outputs are
//! compared with what the PTX ISA defines, bit for bit. The fragment tables below
//! are written from the ISA's formulas (section "Matrix Fragments for mma.m16n8k16
//! with floating point type", and `ldmatrix`'s description), independently of the
//! CPU backend's emulation (csrc/cpu/isa_sm80.cpp) and of the kernels' comments. The
//! same vectors run on the CPU backend always and on the GPU when there is one.

use super::{kernel_args, Backend, KernelLaunch};
use crate::error::Result;

kernel_args! {
    /// `maskattn_probe_primitives`: see csrc/primitives_probe.cu for the layouts.
    ProbeArgs {
        mma_in: u64,
        mma_out: u64,
        ldm_tile: u64,
        ldm_offsets: u64,
        ldm_out: u64,
        cp_src: u64,
        cp_valid: u64,
        cp_out: u64,
        cvt_in: u64,
        cvt_out: u64,
        n_cvt: i32,
        ex2_in: u64,
        ex2_out: u64,
        n_ex2: i32,
    }
}

/// The registers and memory the probe starts from, as raw 32-bit words.
#[derive(Debug, Clone, PartialEq)]
struct Inputs {
    /// `[f16, bf16][lane][a0..a3, b0, b1, c0..c3]`.
    mma: Vec<u32>,
    /// The 512 bytes of shared memory `ldmatrix` reads.
    ldm_tile: Vec<u32>,
    /// Per lane, the byte offset of the row it addresses.
    ldm_offsets: Vec<u32>,
    /// `[chunk 0, chunk 1][lane][4 words]`.
    cp_src: Vec<u32>,
    /// `[chunk][lane]`: 1 copies, 0 zero-fills.
    cp_valid: Vec<u32>,
    /// `[pair][lo, hi]` f32 bits.
    cvt: Vec<u32>,
    /// f32 bits.
    ex2: Vec<u32>,
}

/// What the probe wrote.
#[derive(Debug, Clone, PartialEq)]
struct Outputs {
    /// `[f16, bf16][lane][d0..d3]`, f32 bits.
    mma: Vec<u32>,
    /// `[x4, x4.trans][lane][r0..r3]`.
    ldm: Vec<u32>,
    /// `[own chunk 0 after wait_group 1, next lane's chunk 0, its chunk 1][lane][4]`.
    cp: Vec<u32>,
    /// `[f16x2, bf16x2][pair]`.
    cvt: Vec<u32>,
    /// f32 bits.
    ex2: Vec<u32>,
}

const SMEM_BYTES: u32 = 512 + 2 * 32 * 16;

/// Runs the probe (one warp) on `b`.
fn probe<B: Backend>(b: &B, x: &Inputs) -> Result<Outputs> {
    assert_eq!(
        (x.mma.len(), x.ldm_tile.len(), x.ldm_offsets.len(), x.cp_src.len(), x.cp_valid.len(), x.cvt.len() % 2),
        (640, 128, 32, 256, 64, 0)
    );
    assert!(x.ldm_offsets.iter().all(|&o| o % 16 == 0 && o + 16 <= 512), "rows inside the tile, 16-byte aligned");
    let (n_cvt, n_ex2) = (x.cvt.len() / 2, x.ex2.len());
    let inputs = [&x.mma, &x.ldm_tile, &x.ldm_offsets, &x.cp_src, &x.cp_valid, &x.cvt, &x.ex2]
        .map(|v| b.upload(v.as_slice()))
        .into_iter()
        .collect::<Result<Vec<_>>>()?;
    let mut outputs =
        [256, 256, 384, 2 * n_cvt, n_ex2].map(|n| b.zeros::<u32>(n)).into_iter().collect::<Result<Vec<_>>>()?;
    {
        let ins: Vec<_> = inputs.iter().map(|buf| b.addr(buf)).collect();
        let outs: Vec<_> = outputs.iter_mut().map(|buf| b.addr_mut(buf)).collect();
        let (i, o) = (|k: usize| ins[k].0, |k: usize| outs[k].0);
        let launch = KernelLaunch {
            kernel: "maskattn_probe_primitives".into(),
            grid: (1, 1, 1),
            block: (32, 1, 1),
            smem_bytes: SMEM_BYTES,
            params: ProbeArgs {
                mma_in: i(0),
                mma_out: o(0),
                ldm_tile: i(1),
                ldm_offsets: i(2),
                ldm_out: o(1),
                cp_src: i(3),
                cp_valid: i(4),
                cp_out: o(2),
                cvt_in: i(5),
                cvt_out: o(3),
                n_cvt: n_cvt as i32,
                ex2_in: i(6),
                ex2_out: o(4),
                n_ex2: n_ex2 as i32,
            },
        };
        // SAFETY: every buffer has the length the kernel's layout needs (asserted
        // above; the outputs were allocated for it), the row offsets stay inside the
        // tile, and the accesses are held until after the launch.
        unsafe { b.launch(&launch) }?;
    }
    let mut d = outputs.iter().map(|buf| b.download(buf));
    let mut next = || d.next().expect("five outputs");
    Ok(Outputs { mma: next()?, ldm: next()?, cp: next()?, cvt: next()?, ex2: next()? })
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::{bf16, f16};

    use crate::splitmix::SplitMix;

    // ---- the ISA's tables -------------------------------------------------------
    // groupID = lane >> 2, threadID_in_group = lane % 4.

    /// (row, col) of element a_i (i in 0..8) of matrix A (16 x 16) in `lane`.
    fn a_frag(lane: usize, i: usize) -> (usize, usize) {
        let (g, t) = (lane >> 2, lane % 4);
        let row = if i < 2 || (4..6).contains(&i) { g } else { g + 8 };
        let col = t * 2 + (i & 1) + if i < 4 { 0 } else { 8 };
        (row, col)
    }

    /// (row = k, col = n) of element b_i (i in 0..4) of matrix B (16 x 8).
    fn b_frag(lane: usize, i: usize) -> (usize, usize) {
        let (g, t) = (lane >> 2, lane % 4);
        (t * 2 + (i & 1) + if i < 2 { 0 } else { 8 }, g)
    }

    /// (row, col) of element c_i (i in 0..4) of the accumulator C/D (16 x 8).
    fn c_frag(lane: usize, i: usize) -> (usize, usize) {
        let (g, t) = (lane >> 2, lane % 4);
        (if i < 2 { g } else { g + 8 }, t * 2 + (i & 1))
    }

    /// ldmatrix .x4: lanes 8j..8j+7 address rows 0..7 of matrix j; register j of a
    /// lane holds row lane / 4, columns 2 (lane % 4) + {0, 1} of matrix j (low half
    /// first); with .trans, rows 2 (lane % 4) + {0, 1} of column lane / 4.
    fn ldmatrix_expected(tile: &[u16], offsets: &[u32], trans: bool) -> Vec<u32> {
        let elem =
            |matrix: usize, row: usize, col: usize| u32::from(tile[offsets[8 * matrix + row] as usize / 2 + col]);
        let mut out = Vec::new();
        for lane in 0..32 {
            for j in 0..4 {
                let (r, c) = (lane / 4, 2 * (lane % 4));
                let (lo, hi) =
                    if trans { (elem(j, c, r), elem(j, c + 1, r)) } else { (elem(j, r, c), elem(j, r, c + 1)) };
                out.push(lo | hi << 16);
            }
        }
        out
    }

    // ---- the vectors ------------------------------------------------------------

    /// k * 2^e with |k| <= 15, e in -2..=2: every product of two has at most 8
    /// significant bits and exponents within 8 of each other, so a sum of 16 of
    /// them plus such a C is exact in f32 whatever order or width the
    /// accumulation uses: the hardware's result is then fully determined.
    fn dyadic(rng: &mut SplitMix) -> f32 {
        let k = (rng.next() % 31) as i32 - 15;
        let e = (rng.next() % 5) as i32 - 2;
        k as f32 * 2f32.powi(e)
    }

    /// Matrices A (16 x 16), B (16 x 8, k x n), C (16 x 8).
    type Mma = (Vec<f32>, Vec<f32>, Vec<f32>);

    fn mma_case(rng: &mut SplitMix) -> Mma {
        let mut m = |n: usize| (0..n).map(|_| dyadic(rng)).collect::<Vec<f32>>();
        (m(256), m(128), m(128))
    }

    fn mma_registers(case: &Mma, bits: impl Fn(f32) -> u16) -> Vec<u32> {
        let (a, b, c) = case;
        let pair = |lo: f32, hi: f32| u32::from(bits(lo)) | u32::from(bits(hi)) << 16;
        let mut regs = Vec::new();
        for lane in 0..32 {
            let at = |i| {
                let (r, k) = a_frag(lane, i);
                a[r * 16 + k]
            };
            let bt = |i| {
                let (k, n) = b_frag(lane, i);
                b[k * 8 + n]
            };
            regs.extend((0..4).map(|r| pair(at(2 * r), at(2 * r + 1))));
            regs.extend((0..2).map(|r| pair(bt(2 * r), bt(2 * r + 1))));
            regs.extend((0..4).map(|i| {
                let (r, n) = c_frag(lane, i);
                c[r * 8 + n].to_bits()
            }));
        }
        regs
    }

    /// D = A B + C, exact (the inputs are exact in both dtypes), as each lane holds it.
    fn mma_expected(case: &Mma) -> Vec<u32> {
        let (a, b, c) = case;
        let d = |r: usize, n: usize| {
            let s: f64 = (0..16).map(|k| f64::from(a[r * 16 + k]) * f64::from(b[k * 8 + n])).sum();
            (s + f64::from(c[r * 8 + n])) as f32
        };
        (0..32).flat_map(|lane| (0..4).map(move |i| c_frag(lane, i))).map(|(r, n)| d(r, n).to_bits()).collect()
    }

    /// Hand-written conversions: (f32 bits, f16 bits, bf16 bits), from the formats'
    /// definitions and round to nearest even (ties to the even significand).
    const CVT_TABLE: &[(u32, u16, u16)] = &[
        (0x3f80_0000, 0x3c00, 0x3f80), // 1
        (0x8000_0000, 0x8000, 0x8000), // -0
        (0xc020_0000, 0xc100, 0xc020), // -2.5
        (0x477f_e000, 0x7bff, 0x4780), // 65504, f16's largest
        (0x477f_f000, 0x7c00, 0x4780), // 65520: tie between 65504 and 2^16, the even one overflows
        (0x477f_efff, 0x7bff, 0x4780), // just below that tie
        (0x3f80_1000, 0x3c00, 0x3f80), // 1 + 2^-11: f16 tie, to the even 1
        (0x3f80_3000, 0x3c02, 0x3f80), // 1 + 3 * 2^-11: f16 tie, to the even 1 + 2^-9
        (0x3f80_1001, 0x3c01, 0x3f80), // just above the first tie
        (0x3f80_8000, 0x3c04, 0x3f80), // 1 + 2^-8: bf16 tie, to the even 1
        (0x3f81_8000, 0x3c0c, 0x3f82), // 1 + 3 * 2^-8: bf16 tie, to the even 1 + 2^-6
        (0x3f80_8001, 0x3c04, 0x3f81), // just above the bf16 tie
        (0x3380_0000, 0x0001, 0x3380), // 2^-24, f16's smallest subnormal
        (0x3300_0000, 0x0000, 0x3300), // 2^-25: tie between 0 and 2^-24, to 0
        (0x3340_0000, 0x0001, 0x3340), // 1.5 * 2^-25: above that tie
        (0x3880_0000, 0x0400, 0x3880), // 2^-14, f16's smallest normal
        (0x387f_e000, 0x0400, 0x3880), // 2^-14 - 2^-25: tie between 1023 and 1024 * 2^-24, to 1024
        (0x387f_c000, 0x03ff, 0x3880), // 1023 * 2^-24: the largest f16 subnormal
        (0x0000_0001, 0x0000, 0x0000), // f32's smallest subnormal
        (0x0001_8000, 0x0000, 0x0002), // f32 subnormal 3 * 2^-134 (bf16 tie, to the even 2 * 2^-133)
        (0x7f7f_ffff, 0x7c00, 0x7f80), // f32's largest: bf16 rounds up to infinity
        (0x7f7f_7fff, 0x7c00, 0x7f7f), // below bf16's overflow tie
        (0x7f80_0000, 0x7c00, 0x7f80), // +inf
        (0xff80_0000, 0xfc00, 0xff80), // -inf
        (0x7fc0_0000, 0x7fff, 0x7fff), // NaN: the canonical NaN
        (0xffc0_1234, 0x7fff, 0x7fff), // NaN with sign and payload: the canonical NaN
        (0x501502f9, 0x7c00, 0x5015),  // 1e10
    ];

    fn vectors() -> (Inputs, Vec<Mma>) {
        let mut rng = SplitMix(0x0070_726f_6265);
        let cases = vec![mma_case(&mut rng), mma_case(&mut rng)];
        let mut mma = mma_registers(&cases[0], |x| f16::from_f32(x).to_bits());
        mma.extend(mma_registers(&cases[1], |x| bf16::from_f32(x).to_bits()));

        // Every 16-bit element distinct; the 32 rows in a shuffled order (a row of
        // 8 elements is 16 bytes; the tile holds 32 of them).
        // (An odd multiplier is a bijection of the 16-bit values.)
        let elem = |e: u32| (e * 40_503) & 0xffff;
        let tile: Vec<u32> = (0..128u32).map(|i| elem(2 * i) | elem(2 * i + 1) << 16).collect();
        let ldm_offsets: Vec<u32> = (0..32u32).map(|lane| ((lane * 13 + 7) % 32) * 16).collect();

        let cp_src: Vec<u32> = (0..256).map(|_| rng.next() as u32).collect();
        let cp_valid: Vec<u32> = (0..64u32).map(|i| u32::from(i % 3 != 0 && i % 7 != 5)).collect();

        // The hand-written table, then random floats of every magnitude.
        let mut cvt: Vec<u32> = CVT_TABLE.iter().map(|&(x, _, _)| x).collect();
        if cvt.len() % 2 == 1 {
            cvt.push(0x3f80_0000);
        }
        cvt.extend((0..128).map(|_| {
            let x = rng.next() as u32;
            // Mostly the exponents f16 can hold, some anywhere but infinity and NaN
            // (the table has those).
            if x % 4 != 0 {
                (x & 0x807f_ffff) | ((x >> 23) % 40 + 103) << 23
            } else if (x >> 23) & 0xff == 0xff {
                x ^ 0x4000_0000
            } else {
                x
            }
        }));

        let mut ex2: Vec<f32> = (-130..=130).map(|n| n as f32).collect();
        ex2.extend([f32::INFINITY, f32::NEG_INFINITY, -0.0, f32::from_bits(1), f32::from_bits(0x8000_0001)]);
        ex2.extend((0..64).map(|_| (rng.next() % 2_000_000) as f32 / 10_000.0 - 100.0));
        let inputs = Inputs {
            mma,
            ldm_tile: tile,
            ldm_offsets,
            cp_src,
            cp_valid,
            cvt,
            ex2: ex2.into_iter().map(f32::to_bits).collect(),
        };
        (inputs, cases)
    }

    /// Checks every output of `probe` against the ISA; `who` names the backend.
    fn check(who: &str, x: &Inputs, cases: &[Mma], out: &Outputs) {
        let mut want_mma = mma_expected(&cases[0]);
        want_mma.extend(mma_expected(&cases[1]));
        for (k, (&got, &want)) in out.mma.iter().zip(&want_mma).enumerate() {
            let (dtype, lane, i) = (["f16", "bf16"][k / 128], k % 128 / 4, k % 4);
            assert_eq!(
                got,
                want,
                "{who}: mma {dtype} lane {lane} d{i} {:?}: got {}, want {}",
                c_frag(lane, i),
                f32::from_bits(got),
                f32::from_bits(want)
            );
        }

        let tile: Vec<u16> = x.ldm_tile.iter().flat_map(|&w| [w as u16, (w >> 16) as u16]).collect();
        for (trans, got) in [false, true].into_iter().zip(out.ldm.chunks(128)) {
            let want = ldmatrix_expected(&tile, &x.ldm_offsets, trans);
            for (k, (&g, &w)) in got.iter().zip(&want).enumerate() {
                assert_eq!(
                    g,
                    w,
                    "{who}: ldmatrix x4{} lane {} r{}: {g:#010x} vs {w:#010x}",
                    if trans { ".trans" } else { "" },
                    k / 4,
                    k % 4
                );
            }
        }

        let chunk = |c: usize, lane: usize| -> Vec<u32> {
            if x.cp_valid[32 * c + lane] != 0 {
                x.cp_src[128 * c + 4 * lane..][..4].to_vec()
            } else {
                vec![0; 4]
            }
        };
        for lane in 0..32 {
            let next = (lane + 1) % 32;
            assert_eq!(
                out.cp[4 * lane..][..4],
                chunk(0, lane)[..],
                "{who}: cp.async lane {lane}'s chunk 0 after wait_group 1"
            );
            assert_eq!(
                out.cp[128 + 4 * lane..][..4],
                chunk(0, next)[..],
                "{who}: cp.async chunk 0 of lane {next} after the barrier"
            );
            assert_eq!(
                out.cp[256 + 4 * lane..][..4],
                chunk(1, next)[..],
                "{who}: cp.async chunk 1 of lane {next} after the barrier"
            );
        }

        let n_cvt = x.cvt.len() / 2;
        for (i, &bits) in x.cvt.iter().enumerate() {
            let (f16_got, bf16_got) =
                ((out.cvt[i / 2] >> (16 * (i % 2))) as u16, (out.cvt[n_cvt + i / 2] >> (16 * (i % 2))) as u16);
            let (f16_want, bf16_want) = match CVT_TABLE.iter().find(|&&(x, _, _)| x == bits) {
                Some(&(_, h, b)) => (h, b),
                // half's own conversions (round to nearest even), for the random floats.
                None => {
                    let f = f32::from_bits(bits);
                    assert!(!f.is_nan());
                    (f16::from_f32(f).to_bits(), bf16::from_f32(f).to_bits())
                }
            };
            assert_eq!(
                f16_got,
                f16_want,
                "{who}: cvt.rn.f16x2 of {bits:#010x} ({}), half {}",
                f32::from_bits(bits),
                i % 2
            );
            assert_eq!(
                bf16_got,
                bf16_want,
                "{who}: cvt.rn.bf16x2 of {bits:#010x} ({}), half {}",
                f32::from_bits(bits),
                i % 2
            );
        }

        for (&xb, &yb) in x.ex2.iter().zip(&out.ex2) {
            let (x, y) = (f32::from_bits(xb), f32::from_bits(yb));
            // .ftz: a subnormal input is 0, a subnormal result +0.
            let x = if x.is_subnormal() { 0.0 } else { x };
            let exact = 2f64.powf(f64::from(x));
            let want = if exact < f64::from(f32::MIN_POSITIVE) {
                0.0
            } else if exact > f64::from(f32::MAX) {
                f64::INFINITY
            } else {
                exact
            };
            if x.fract() == 0.0 || x.is_infinite() || want == 0.0 || want.is_infinite() {
                // Powers of two, infinities and flushed results are exact.
                assert_eq!(f64::from(y), want, "{who}: ex2.approx.ftz of {x}: got {y}");
                assert!(y.is_sign_positive(), "{who}: ex2 of {x} is {y}");
            } else {
                // The ISA promises an approximation; a few ulp of f32.
                let rel = (f64::from(y) - want).abs() / want;
                assert!(rel <= 2f64.powi(-21), "{who}: ex2.approx.ftz of {x}: got {y}, relative error {rel:e}");
            }
        }
    }

    #[test]
    fn probe_args_are_the_kernels_parameter_list() {
        use super::super::KernelArgs;
        let offsets: Vec<usize> = ProbeArgs::OFFSETS.to_vec();
        assert_eq!(offsets, vec![0, 8, 16, 24, 32, 40, 48, 56, 64, 72, 80, 88, 96, 104]);
    }

    #[cfg(feature = "cpu")]
    #[test]
    fn cpu_backend_primitives_match_the_isa() {
        let (x, cases) = vectors();
        for (schedule, cpu) in crate::launch::cpu_backends_per_schedule() {
            let out = probe(&cpu, &x).unwrap();
            check(&format!("CPU backend ({schedule:?})"), &x, &cases, &out);
        }
    }

    /// The same vectors on the GPU: the hardware against the same ISA tables, so
    /// that the CPU backend's emulation and the GPU agree wherever both pass.
    #[cfg(feature = "cuda")]
    #[test]
    fn gpu_primitives_match_the_isa() {
        let Some(gpu) = crate::launch::test_gpu("primitive conformance test", false) else { return };
        let (x, cases) = vectors();
        let out = probe(&gpu, &x).unwrap();
        check("GPU", &x, &cases, &out);
    }

    #[test]
    fn the_tables_are_permutations() {
        // Each fragment table names every element of its matrix exactly once.
        let mut a: Vec<_> = (0..32).flat_map(|l| (0..8).map(move |i| a_frag(l, i))).collect();
        let mut b: Vec<_> = (0..32).flat_map(|l| (0..4).map(move |i| b_frag(l, i))).collect();
        let mut c: Vec<_> = (0..32).flat_map(|l| (0..4).map(move |i| c_frag(l, i))).collect();
        for v in [&mut a, &mut b, &mut c] {
            v.sort();
            v.dedup();
        }
        assert_eq!((a.len(), b.len(), c.len()), (256, 128, 128));
        assert!(a.iter().all(|&(r, k)| r < 16 && k < 16) && b.iter().all(|&(k, n)| k < 16 && n < 8));
    }
}
