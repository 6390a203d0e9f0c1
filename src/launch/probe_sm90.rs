//! wgmma's conformance test: csrc/hopper_probe.cu runs `wgmma.mma_async`
//! m64nNk16 (f16, bf16; N = 64 to 256; A from shared memory or registers; K-major
//! and MN-major operands in every swizzle mode; scale-d 0 and 1; two k16 steps in
//! one group) on shared-memory images, descriptors and registers built here, and
//! its accumulators are compared with what the PTX ISA defines, bit for bit. The
//! tables below are written from the ISA's figures (section "Register Fragments and
//! Shared Memory Matrix Layouts" of wgmma: the swizzle atoms of "Shared Memory Matrix
//! Layout", "Strides", "Matrix Descriptor Format", and the register fragment figures
//! for .m64nNk16), in the ISA's own terms of atoms, rows and 16-byte chunks,
//! independently of the CPU backend's maps (csrc/cpu/sm90_isa.cpp, which work on
//! address bits). The same vectors run on the CPU backend always and on an sm_90
//! GPU when there is one.

use super::{kernel_args, Backend, KernelLaunch};
use crate::error::Result;

kernel_args! {
    /// `maskattn_probe_hopper_wgmma`: see csrc/hopper_probe.cu for the layouts.
    WgmmaProbeArgs {
        image: u64,
        descs: u64,
        scale_d: u64,
        a_regs: u64,
        c_in: u64,
        d_out: u64,
    }
}

/// The cases the kernel runs, in its order.
const CASES: usize = 12;
/// Bytes of one case's shared-memory image.
const IMAGE_BYTES: usize = 32 * 1024;
const THREADS: usize = 128;
/// Accumulator words per thread in `c_in` and the output.
const ACC_WORDS: usize = 128;
/// A-fragment words per thread: four per k16 step, two steps.
const A_WORDS: usize = 8;

/// What the probe starts from, as raw words.
#[derive(Debug, Clone, PartialEq)]
struct Inputs {
    /// `[case][IMAGE_BYTES / 4]`: the shared memory of each case.
    image: Vec<u32>,
    /// `[case][desc_a, desc_b, advance_a, advance_b]`, each a u64 as (low, high) words.
    descs: Vec<u32>,
    /// `[case]`: the first wgmma's scale-d.
    scale_d: Vec<u32>,
    /// `[case][thread][step 0 a0..a3, step 1 a0..a3]`.
    a_regs: Vec<u32>,
    /// `[case][thread][ACC_WORDS]`: the initial accumulators, f32 bits.
    c_in: Vec<u32>,
}

/// Runs the probe (one warpgroup) on `b`: `[case][thread][ACC_WORDS]` accumulator bits.
fn probe<B: Backend>(b: &B, x: &Inputs) -> Result<Vec<u32>> {
    assert_eq!(
        (x.image.len(), x.descs.len(), x.scale_d.len(), x.a_regs.len(), x.c_in.len()),
        (CASES * IMAGE_BYTES / 4, CASES * 8, CASES, CASES * THREADS * A_WORDS, CASES * THREADS * ACC_WORDS)
    );
    let inputs = [&x.image, &x.descs, &x.scale_d, &x.a_regs, &x.c_in]
        .map(|v| b.upload(v.as_slice()))
        .into_iter()
        .collect::<Result<Vec<_>>>()?;
    let mut out = b.zeros::<u32>(CASES * THREADS * ACC_WORDS)?;
    {
        let ins: Vec<_> = inputs.iter().map(|buf| b.addr(buf)).collect();
        let d_out = b.addr_mut(&mut out);
        let i = |k: usize| ins[k].0;
        let launch = KernelLaunch {
            kernel: "maskattn_probe_hopper_wgmma".into(),
            grid: (1, 1, 1),
            block: (THREADS as u32, 1, 1),
            // The image and up to 1,024 bytes to align it on the 128B pattern.
            smem_bytes: (IMAGE_BYTES + 1024) as u32,
            params: WgmmaProbeArgs {
                image: i(0),
                descs: i(1),
                scale_d: i(2),
                a_regs: i(3),
                c_in: i(4),
                d_out: d_out.0,
            },
        };
        // SAFETY: every buffer has the length the kernel's layout needs (asserted
        // above; the output was allocated for it), the descriptors address only the
        // image (the tests build them inside it), and the accesses are held until
        // after the launch.
        unsafe { b.launch(&launch) }?;
    }
    b.download(&out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::{bf16, f16};

    use crate::splitmix::SplitMix;

    // ---- the ISA's tables -------------------------------------------------------

    /// The swizzling modes ("Shared Memory Matrix Layout").
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Swz {
        None,
        B32,
        B64,
        B128,
    }

    impl Swz {
        /// 16-byte chunks in one row of the swizzle atom (the atom is 8 rows of them).
        fn chunks(self) -> usize {
            match self {
                Swz::None => 1,
                Swz::B32 => 2,
                Swz::B64 => 4,
                Swz::B128 => 8,
            }
        }

        /// The descriptor's bits 62-63 ("Matrix Descriptor Format").
        fn field(self) -> u64 {
            match self {
                Swz::None => 0,
                Swz::B128 => 1,
                Swz::B64 => 2,
                Swz::B32 => 3,
            }
        }
    }

    /// An operand (A: mn = row m; B: mn = column n) in shared memory, in the
    /// descriptor's terms: byte offsets within the image.
    #[derive(Debug, Clone, Copy, PartialEq)]
    struct Smem {
        mn_major: bool,
        swizzle: Swz,
        start: usize,
        lbo: usize,
        sbo: usize,
    }

    /// Where element (mn, k) sits, after the ISA's figures. The matrix is a grid of
    /// swizzle atoms of 8 rows x w 16-byte chunks (w = 1, 2, 4, 8 for none, 32B, 64B,
    /// 128B), rows 16 w bytes apart. K-major: a row is one mn, its chunks run along
    /// k; MN-major: a row is one k, its chunks run along mn. Atoms are stepped by
    /// the strides of "Strides": K-major, SBO per 8 mn and (no swizzle only; a k16
    /// slice fits one swizzled row) LBO per 8 k; MN-major without swizzle, SBO per
    /// 8 mn and LBO per 8 k; MN-major swizzled, LBO per atom along mn (8 w elements)
    /// and SBO per 8 k. Inside an atom, the swizzle stores row r's chunk c at chunk
    /// c XOR (r w / 8): for 128B rows 0..7 XOR 0..7, for 64B rows pair up (0, 0, 1,
    /// 1, ...), for 32B rows 0-3 keep their order and rows 4-7 swap their two chunks.
    fn place(s: &Smem, mn: usize, k: usize) -> usize {
        let w = s.swizzle.chunks();
        let (atom, row, chunk, within) = if !s.mn_major {
            let k_atoms = if w == 1 { k / 8 * s.lbo } else { 0 };
            (mn / 8 * s.sbo + k_atoms, mn % 8, if w == 1 { 0 } else { k / 8 }, k % 8)
        } else if w == 1 {
            (mn / 8 * s.sbo + k / 8 * s.lbo, k % 8, 0, mn % 8)
        } else {
            (mn / (8 * w) * s.lbo + k / 8 * s.sbo, k % 8, mn % (8 * w) / 8, mn % 8)
        };
        s.start + atom + row * 16 * w + (chunk ^ (row * w / 8)) * 16 + within * 2
    }

    /// The descriptor of `s` ("Matrix Descriptor Format": start, LBO, SBO >> 4 at
    /// bits 0, 16, 32; base offset 0; swizzle at 62).
    fn descriptor(s: &Smem) -> u64 {
        let enc = |x: usize| (x as u64 & 0x3ffff) >> 4;
        enc(s.start) | enc(s.lbo) << 16 | enc(s.sbo) << 32 | s.swizzle.field() << 62
    }

    /// The operand of `rows` (64 for A, N for B) x 16 `steps` elements, starting at
    /// `start`: dense atoms, plus one atom of padding in the outer stride when `gap`
    /// (so a reader assuming dense atoms fails). Returns it, its bytes and the byte
    /// advance of the descriptor from one k16 slice to the next.
    fn layout(
        mn_major: bool,
        swizzle: Swz,
        rows: usize,
        steps: usize,
        start: usize,
        gap: bool,
    ) -> (Smem, usize, usize) {
        let w = swizzle.chunks();
        let atom = 128 * w;
        let pad = if gap { atom } else { 0 };
        let k_groups = 2 * steps;
        let (lbo, sbo, bytes, advance) = match (mn_major, w) {
            // Cores of 8 x 16 bytes: along k first, then the next 8 mn.
            (_, 1) => (128, 128 * k_groups + pad, rows / 8 * (128 * k_groups + pad), 2 * 128),
            // The k16 slice is 32 bytes of a swizzled row; LBO unused ("assumed 1").
            (false, _) => {
                assert!(32 * steps <= 16 * w, "the k extent fits one swizzled row");
                (16, atom + pad, rows / 8 * (atom + pad), 32)
            }
            (true, _) => {
                let lbo = atom * k_groups + pad;
                (lbo, atom, rows.div_ceil(8 * w) * lbo, 2 * atom)
            }
        };
        (Smem { mn_major, swizzle, start, lbo, sbo }, bytes, advance)
    }

    /// (row, col) of the accumulator's register i (0..N/2) in thread t ("WGMMA
    /// .m64nNk16 register fragment layout for accumulator matrix D"): warp t / 32
    /// owns rows 16 (t / 32)..+16; in it lane = 4 g + q holds, for each 8-column
    /// block j, the pairs (g, 8 j + 2 q + {0, 1}) then (g + 8, 8 j + 2 q + {0, 1}).
    fn d_frag(t: usize, i: usize) -> (usize, usize) {
        let (warp, g, q) = (t / 32, t % 32 / 4, t % 4);
        let (j, pair, half) = (i / 4, i % 4 / 2, i % 2);
        (16 * warp + g + 8 * pair, 8 * j + 2 * q + half)
    }

    /// (row, k) of half h of A register r (0..4) in thread t ("WGMMA .m64nNk16
    /// register fragment layout for matrix A"): warp t / 32's rows hold mma.m16n8k16's
    /// A fragment: a0 a1 (g, 2q + h), a2 a3 (g + 8, 2q + h), a4 a5 (g, 2q + 8 + h),
    /// a6 a7 (g + 8, 2q + 8 + h), two per register.
    fn a_frag(t: usize, r: usize, h: usize) -> (usize, usize) {
        let (warp, g, q) = (t / 32, t % 32 / 4, t % 4);
        let row = 16 * warp + g + if r == 1 || r == 3 { 8 } else { 0 };
        let k = 2 * q + h + if r >= 2 { 8 } else { 0 };
        (row, k)
    }

    // ---- the cases --------------------------------------------------------------

    /// One wgmma group: `a` None takes A from registers, else (MN-major, swizzle).
    #[derive(Debug, Clone, Copy)]
    struct Case {
        bf16: bool,
        n: usize,
        a: Option<(bool, Swz)>,
        b: (bool, Swz),
        scale_d: bool,
        steps: usize,
    }

    const fn case(bf16: bool, n: usize, a: Option<(bool, Swz)>, b: (bool, Swz), scale_d: bool, steps: usize) -> Case {
        Case { bf16, n, a, b, scale_d, steps }
    }

    const K: bool = false;
    const MN: bool = true;

    /// csrc/hopper_probe.cu's list, in its order (the template parameters there
    /// must match bf16, n, the majorness of A and B, registers and steps here).
    const CASE_LIST: [Case; CASES] = [
        case(false, 64, Some((K, Swz::B128)), (K, Swz::B128), true, 1),
        case(true, 64, Some((MN, Swz::B128)), (MN, Swz::B128), true, 1),
        case(false, 96, Some((K, Swz::B64)), (MN, Swz::B32), false, 1),
        case(true, 128, Some((MN, Swz::B32)), (K, Swz::B64), true, 1),
        case(false, 128, Some((K, Swz::None)), (K, Swz::None), true, 1),
        case(true, 192, Some((MN, Swz::None)), (MN, Swz::None), false, 1),
        case(false, 256, Some((K, Swz::B32)), (MN, Swz::B64), true, 1),
        case(true, 256, Some((MN, Swz::B64)), (K, Swz::B32), true, 1),
        case(false, 128, Some((K, Swz::B128)), (MN, Swz::B128), false, 2),
        case(true, 64, None, (K, Swz::None), true, 1),
        case(false, 96, None, (MN, Swz::B128), false, 1),
        case(true, 192, None, (K, Swz::B128), true, 2),
    ];

    /// A case's operands in the image: (A if from shared memory, its advance), (B, its advance).
    fn operands(c: &Case) -> (Option<(Smem, usize)>, (Smem, usize)) {
        let gap = c.n <= 128;
        let mut end = 0;
        let a = c.a.map(|(mn_major, swz)| {
            let (s, bytes, adv) = layout(mn_major, swz, 64, c.steps, 0, gap);
            end = bytes;
            (s, adv)
        });
        let (b, bytes, adv) = layout(c.b.0, c.b.1, c.n, c.steps, end.next_multiple_of(1024), gap);
        assert!(b.start + bytes <= IMAGE_BYTES, "{c:?}: the operands fit the image");
        (a, (b, adv))
    }

    /// k * 2^e with |k| <= 15, e in -2..=2 (as in probe.rs): every product has at
    /// most 8 significant bits, all within 2^-4..2^8, so a sum of 32 of them plus
    /// such a C is exact in f32 whatever order the accumulation takes.
    fn dyadic(rng: &mut SplitMix) -> f32 {
        let k = (rng.next() % 31) as i32 - 15;
        let e = (rng.next() % 5) as i32 - 2;
        k as f32 * 2f32.powi(e)
    }

    /// The matrices of one case: A (64 x K), B (N x K, element (n, k)), C (64 x N).
    struct Mats {
        a: Vec<f32>,
        b: Vec<f32>,
        c: Vec<f32>,
    }

    fn mats(c: &Case, rng: &mut SplitMix) -> Mats {
        let k = 16 * c.steps;
        let mut m = |n: usize| (0..n).map(|_| dyadic(rng)).collect::<Vec<f32>>();
        Mats { a: m(64 * k), b: m(c.n * k), c: m(64 * c.n) }
    }

    fn bits(c: &Case, x: f32) -> u16 {
        if c.bf16 {
            bf16::from_f32(x).to_bits()
        } else {
            f16::from_f32(x).to_bits()
        }
    }

    fn value(c: &Case, b: u16) -> f32 {
        if c.bf16 {
            bf16::from_bits(b).to_f32()
        } else {
            f16::from_bits(b).to_f32()
        }
    }

    /// NaN in f16 and in bf16: the bytes of the image no operand element owns.
    const FILL: u16 = 0xffff;

    /// The shared-memory image of a case: every element of A and B where `place`
    /// puts it for the given operands.
    fn image(c: &Case, m: &Mats, a: Option<&Smem>, b: &Smem) -> Vec<u16> {
        let k = 16 * c.steps;
        let mut img = vec![FILL; IMAGE_BYTES / 2];
        let mut put = |s: &Smem, rows: usize, mat: &[f32]| {
            for mn in 0..rows {
                for kk in 0..k {
                    // A misplaced layout (hopper_wgmma_tables_can_fail) may reach past the image.
                    if let Some(e) = img.get_mut(place(s, mn, kk) / 2) {
                        *e = bits(c, mat[mn * k + kk]);
                    }
                }
            }
        };
        if let Some(a) = a {
            put(a, 64, &m.a);
        }
        put(b, c.n, &m.b);
        img
    }

    /// What a wgmma reading `img` through `a` (or A's registers) and `b` leaves in
    /// each thread's registers: `[thread][i]` for i < N / 2. With the case's own
    /// operands this is the ISA's result; with altered ones, what an emulation
    /// misreading the descriptor would produce.
    fn wgmma_reading(c: &Case, m: &Mats, img: &[u16], a: Option<&Smem>, b: &Smem) -> Vec<Vec<u32>> {
        let k = 16 * c.steps;
        let read = |s: &Smem, mn: usize, kk: usize| img.get(place(s, mn, kk) / 2).map_or(f32::NAN, |&x| value(c, x));
        let a_at = |r: usize, kk: usize| match a {
            Some(a) => read(a, r, kk),
            None => value(c, bits(c, m.a[r * k + kk])),
        };
        let d = |r: usize, n: usize| {
            let s: f64 = (0..k).map(|kk| f64::from(a_at(r, kk)) * f64::from(read(b, n, kk))).sum();
            let acc = if c.scale_d { f64::from(m.c[r * c.n + n]) } else { 0.0 };
            (s + acc) as f32
        };
        (0..THREADS)
            .map(|t| {
                (0..c.n / 2)
                    .map(|i| {
                        let (r, n) = d_frag(t, i);
                        d(r, n).to_bits()
                    })
                    .collect()
            })
            .collect()
    }

    /// The inputs of every case and, per case, its expected registers.
    fn vectors() -> (Inputs, Vec<Vec<Vec<u32>>>) {
        let mut rng = SplitMix(0x7767_6d6d_61);
        let mut x = Inputs { image: vec![], descs: vec![], scale_d: vec![], a_regs: vec![], c_in: vec![] };
        let mut want = Vec::new();
        for c in &CASE_LIST {
            let m = mats(c, &mut rng);
            let (a, (b, adv_b)) = operands(c);
            let img = image(c, &m, a.as_ref().map(|(s, _)| s), &b);
            x.image.extend(img.chunks(2).map(|p| u32::from(p[0]) | u32::from(p[1]) << 16));
            let (desc_a, adv_a) = a.map_or((0, 0), |(s, adv)| (descriptor(&s), adv as u64));
            for word in [desc_a, descriptor(&b), adv_a, adv_b as u64] {
                x.descs.extend([word as u32, (word >> 32) as u32]);
            }
            x.scale_d.push(u32::from(c.scale_d));
            let k = 16 * c.steps;
            for t in 0..THREADS {
                for step in 0..2 {
                    for r in 0..4 {
                        let half = |h: usize| {
                            let (row, kk) = a_frag(t, r, h);
                            let kk = kk + 16 * step;
                            if kk < k {
                                u32::from(bits(c, m.a[row * k + kk]))
                            } else {
                                0
                            }
                        };
                        x.a_regs.push(half(0) | half(1) << 16);
                    }
                }
                // With scale-d 0 the accumulator's old value must not matter: NaN.
                x.c_in.extend((0..ACC_WORDS).map(|i| match (i < c.n / 2, c.scale_d) {
                    (true, true) => {
                        let (r, n) = d_frag(t, i);
                        m.c[r * c.n + n].to_bits()
                    }
                    (true, false) => f32::NAN.to_bits(),
                    (false, _) => 0,
                }));
            }
            want.push(wgmma_reading(c, &m, &img, a.as_ref().map(|(s, _)| s), &b));
        }
        (x, want)
    }

    /// Checks the probe's output against the ISA; `who` names the backend.
    fn check(who: &str, want: &[Vec<Vec<u32>>], out: &[u32]) {
        for (ci, c) in CASE_LIST.iter().enumerate() {
            for t in 0..THREADS {
                let got = &out[(ci * THREADS + t) * ACC_WORDS..][..c.n / 2];
                for (i, (&g, &w)) in got.iter().zip(&want[ci][t]).enumerate() {
                    assert_eq!(
                        g,
                        w,
                        "{who}: wgmma case {ci} {c:?} thread {t} d{i} = D{:?}: got {}, want {}",
                        d_frag(t, i),
                        f32::from_bits(g),
                        f32::from_bits(w)
                    );
                }
            }
        }
    }

    #[test]
    fn hopper_wgmma_probe_args_are_the_kernels_parameter_list() {
        use super::super::KernelArgs;
        assert_eq!(WgmmaProbeArgs::OFFSETS.to_vec(), vec![0, 8, 16, 24, 32, 40]);
    }

    #[cfg(feature = "cpu")]
    #[test]
    fn cpu_backend_hopper_wgmma_matches_the_isa() {
        let (x, want) = vectors();
        for (schedule, cpu) in crate::launch::cpu_backends_per_schedule() {
            let out = probe(&cpu, &x).unwrap();
            check(&format!("CPU backend ({schedule:?})"), &want, &out);
        }
    }

    /// The same vectors on an sm_90 GPU: the hardware against the same ISA tables.
    #[cfg(feature = "cuda")]
    #[test]
    fn gpu_hopper_wgmma_matches_the_isa() {
        let Some(gpu) = crate::launch::test_gpu("wgmma conformance test", true) else { return };
        let (x, want) = vectors();
        let out = probe(&gpu, &x).unwrap();
        check("GPU", &want, &out);
    }

    #[test]
    fn hopper_wgmma_tables_are_permutations() {
        // The accumulator and A-fragment tables name every element exactly once.
        for n in [64, 96, 128, 192, 256] {
            let mut d: Vec<_> = (0..THREADS).flat_map(|t| (0..n / 2).map(move |i| d_frag(t, i))).collect();
            d.sort();
            d.dedup();
            assert_eq!(d.len(), 64 * n);
            assert!(d.iter().all(|&(r, c)| r < 64 && c < n));
        }
        let mut a: Vec<_> =
            (0..THREADS).flat_map(|t| (0..4).flat_map(move |r| (0..2).map(move |h| a_frag(t, r, h)))).collect();
        a.sort();
        a.dedup();
        assert_eq!(a.len(), 64 * 16);
        assert!(a.iter().all(|&(r, k)| r < 64 && k < 16));
        // Every element of every case's operands has its own two bytes in the image.
        for c in &CASE_LIST {
            let (a, (b, _)) = operands(c);
            let k = 16 * c.steps;
            let mut at: Vec<usize> = a.iter().flat_map(|(s, _)| (0..64 * k).map(|e| place(s, e / k, e % k))).collect();
            at.extend((0..c.n * k).map(|e| place(&b, e / k, e % k)));
            let total = at.len();
            at.sort();
            at.dedup();
            assert_eq!(at.len(), total, "{c:?}: two elements share an address");
            assert!(at.iter().all(|&p| p % 2 == 0 && p < IMAGE_BYTES), "{c:?}");
        }
    }

    #[test]
    fn hopper_wgmma_tables_can_fail() {
        // An emulation (or a kernel) that misreads the swizzle mode or swaps LBO and
        // SBO reads other bytes: the expected registers and the images differ, so
        // the conformance check catches it, for every operand of every case.
        let mut rng = SplitMix(0x7767_6d6d_61);
        let mutants = |s: &Smem| {
            let other = match s.swizzle {
                Swz::None => Swz::B32,
                Swz::B32 => Swz::B64,
                Swz::B64 => Swz::B128,
                Swz::B128 => Swz::B64,
            };
            [Smem { swizzle: other, ..*s }, Smem { lbo: s.sbo, sbo: s.lbo, ..*s }]
        };
        for c in &CASE_LIST {
            let m = mats(c, &mut rng);
            let (a, (b, _)) = operands(c);
            let a = a.map(|(s, _)| s);
            let img = image(c, &m, a.as_ref(), &b);
            let want = wgmma_reading(c, &m, &img, a.as_ref(), &b);
            for bad in mutants(&b) {
                assert_ne!(wgmma_reading(c, &m, &img, a.as_ref(), &bad), want, "{c:?}: B as {bad:?}");
                assert_ne!(image(c, &m, a.as_ref(), &bad), img, "{c:?}: B as {bad:?}");
            }
            if let Some(a) = a {
                for bad in mutants(&a) {
                    assert_ne!(wgmma_reading(c, &m, &img, Some(&bad), &b), want, "{c:?}: A as {bad:?}");
                    assert_ne!(image(c, &m, Some(&bad), &b), img, "{c:?}: A as {bad:?}");
                }
            }
        }
        // The descriptor moves with each field.
        let s = Smem { mn_major: false, swizzle: Swz::B128, start: 1024, lbo: 16, sbo: 1024 };
        assert_eq!(descriptor(&s), 0x4000_0040_0001_0040);
        assert_ne!(descriptor(&Smem { lbo: s.sbo, sbo: s.lbo, ..s }), descriptor(&s));
    }
}
