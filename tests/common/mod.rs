//! Shared test helpers: proptest settings, random masks and tensors, the GPU gate.
#![allow(dead_code)]

use std::io::Write;

pub mod cuobjdump;

use maskattn::{Mask, Segment, VideoLayout};
use ndarray::Array4;
use proptest::prelude::*;

/// Proptest settings: `cases` by default (>= 256), `MASKATTN_PROPTEST_CASES` overrides.
pub fn config(cases: u32) -> ProptestConfig {
    let cases = std::env::var("MASKATTN_PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(cases);
    ProptestConfig { cases, max_shrink_iters: 256, ..ProptestConfig::default() }
}

/// A layout of 1..=4 segments: text runs (possibly empty) and frame runs.
pub fn arb_layout(max_frames: usize, max_tokens: usize) -> impl Strategy<Value = VideoLayout> {
    let seg = prop_oneof![
        (0usize..24).prop_map(Segment::Text),
        (1..=max_frames, 1..=max_tokens).prop_map(|(frames, tokens)| Segment::Frames { frames, tokens }),
    ];
    prop::collection::vec(seg, 1..=4).prop_filter_map("empty layout", |s| VideoLayout::new(s).ok())
}

/// Random valid user intervals for `len_q` rows over `len_k` keys.
pub fn arb_intervals(len_q: usize, len_k: usize) -> impl Strategy<Value = Vec<[i32; 4]>> {
    let k = len_k as i32;
    prop::collection::vec(
        prop::array::uniform4(0..=k).prop_map(|mut v| {
            v.sort();
            // Some rows with one or both intervals empty.
            match v[0] % 5 {
                0 => [0, 0, 0, 0],
                1 => [v[0], v[1], v[3], v[3]],
                _ => v,
            }
        }),
        len_q,
    )
}

/// Any mask of the crate, at most about `max_len` rows and keys.
pub fn arb_mask(max_len: usize) -> impl Strategy<Value = Mask> {
    let small = max_len.max(8);
    prop_oneof![
        (1..=small, 1..=small).prop_map(|(q, k)| Mask::causal(q, k).unwrap()),
        (1..=small, 1..=small).prop_map(|(q, k)| Mask::full(q, k).unwrap()),
        arb_layout(4, small / 8).prop_filter_map("too many intervals", |l| Mask::frame_block_causal(&l).ok()),
        arb_layout(4, small / 8).prop_filter_map("too many intervals", |l| Mask::full_visual(&l).ok()),
        arb_layout(4, small / 8).prop_filter_map("too many intervals", |l| Mask::frame_block(&l).ok()),
        (1..=small, 1..=6usize, 1..=small / 4).prop_map(|(nq, t, n)| Mask::causal_cross(nq, t, n).unwrap()),
        (1..=6usize, 1..=small / 8, 1..=small / 6).prop_map(|(t, p, n)| Mask::cross_frame_local(t, p, n).unwrap()),
        (1..=small, 1..=small, 1..=small / 2, 0..=8usize)
            .prop_map(|(q, k, w, s)| Mask::sliding_window(q, k, w, s).unwrap()),
        (prop::collection::vec(1..=small / 3, 1..5), any::<bool>()).prop_map(|(d, c)| Mask::document(&d, c).unwrap()),
        (1..=small, 1..=small)
            .prop_flat_map(|(q, k)| arb_intervals(q, k).prop_map(move |iv| Mask::from_intervals(k, iv).unwrap())),
    ]
}

/// Masks for the GPU fuzz tests: any mask up to ~400 rows, video masks at the real
/// 576 and 729 tokens per frame (1 or 2 frames), and Video-CCAM masks.
pub fn arb_gpu_mask() -> impl Strategy<Value = Mask> {
    arb_kernel_mask(2)
}

/// Settings of a kernel fuzz test on backend `b` ("cpu" or "gpu"): a fixed seed, so a
/// failure reproduces on any machine; `cpu_cases` on the CPU backend (slow: every
/// thread is emulated), `gpu_cases` on a GPU; `MASKATTN_GPU_FUZZ_CASES` overrides both.
pub fn fuzz_config(b: &str, gpu_cases: u32, cpu_cases: u32, seed: u64) -> ProptestConfig {
    let default = if b.starts_with("gpu") { gpu_cases } else { cpu_cases };
    let cases = std::env::var("MASKATTN_GPU_FUZZ_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(default);
    // To the process's stderr itself, past libtest's capture of eprintln!, so that the
    // test command's log shows every fuzz test's case count, passing or not.
    let test = std::thread::current().name().unwrap_or("?").to_string();
    let _ = writeln!(std::io::stderr(), "{test}: {cases} cases on the {b} backend (seed {seed:#x})");
    ProptestConfig {
        cases,
        rng_seed: proptest::test_runner::RngSeed::Fixed(seed),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// The head dims a kernel fuzz draws: the compiled classes themselves (64, 96, 128),
/// the vision towers' and Gemma's (SigLIP 72, Qwen2.5-VL 80, 256), and any multiple of
/// 8 up to 256; class 256 (the costliest on the CPU backend) about one case in six.
pub fn arb_head_dim() -> impl Strategy<Value = usize> {
    prop_oneof![
        4 => prop::sample::select(vec![64usize, 96, 128]),
        2 => prop::sample::select(vec![72usize, 80, 256]),
        1 => (1usize..=32).prop_map(|i| 8 * i),
    ]
}

/// Counts the head dims a fuzz ran and, when dropped, writes them on the process's
/// stderr (past libtest's capture, like [`fuzz_config`]'s line), so that the test
/// command's log shows which head dims the fuzz drew.
pub struct HeadDimTally {
    test: String,
    dims: std::sync::Mutex<std::collections::BTreeMap<usize, u32>>,
}

impl HeadDimTally {
    pub fn new(backend: &str) -> Self {
        let test = std::thread::current().name().unwrap_or("?").to_string();
        Self { test: format!("{test} ({backend})"), dims: Default::default() }
    }

    pub fn record(&self, head_dim: usize) {
        *self.dims.lock().unwrap().entry(head_dim).or_default() += 1;
    }
}

impl Drop for HeadDimTally {
    fn drop(&mut self) {
        let dims = self.dims.lock().map(|d| d.clone()).unwrap_or_default();
        let list: Vec<String> = dims.iter().map(|(d, n)| format!("{d}x{n}")).collect();
        let _ = writeln!(std::io::stderr(), "{}: head dims run (D x cases): {}", self.test, list.join(" "));
    }
}

/// The CPU backend every kernel test runs on (the kernels' own source executed on
/// the host), one per test binary.
#[cfg(feature = "cpu")]
pub fn cpu() -> &'static maskattn::cpu::CpuBackend {
    static CPU: std::sync::OnceLock<maskattn::cpu::CpuBackend> = std::sync::OnceLock::new();
    CPU.get_or_init(maskattn::cpu::CpuBackend::new)
}

/// The CPU backend on the forward path [`cpu`] does not take, and that path's name:
/// the Hopper kernel, or the mma.sync kernel where `MASKATTN_FORWARD_PATH=hopper`
/// gave [`cpu`] the Hopper kernel. With [`cpu`], the forward suites run both paths.
#[cfg(feature = "cpu")]
pub fn cpu_other_path() -> (&'static maskattn::cpu::CpuBackend, &'static str) {
    use maskattn::{cpu::CpuBackend, cpu::CpuOptions, ForwardPath};
    static CPU: std::sync::OnceLock<(CpuBackend, &'static str)> = std::sync::OnceLock::new();
    let (cpu, name) = CPU.get_or_init(|| {
        let (path, name) = match std::env::var(maskattn::FORWARD_PATH_ENV).as_deref() {
            Ok("hopper") => (ForwardPath::Mma, "cpu-mma"),
            _ => (ForwardPath::Hopper, "cpu-hopper"),
        };
        (CpuBackend::with_options(CpuOptions { forward_path: path, ..CpuOptions::default() }), name)
    });
    (cpu, name)
}

/// The GPU on the forward path [`shared_gpu`] does not take, where the GPU has two
/// (sm_90: the Hopper kernel by default, the mma.sync kernel here).
#[cfg(feature = "cuda")]
pub fn shared_gpu_other_path() -> Option<(&'static maskattn::cuda::Gpu, &'static str)> {
    use maskattn::ForwardPath;
    static GPU: std::sync::OnceLock<Option<(maskattn::cuda::Gpu, &'static str)>> = std::sync::OnceLock::new();
    GPU.get_or_init(|| {
        let gpu = shared_gpu()?;
        match gpu.forward_path() {
            Ok(ForwardPath::Hopper) => Some((gpu.clone().with_forward_path(ForwardPath::Mma), "gpu-mma")),
            Ok(_) if gpu.compute_capability().ok() == Some((9, 0)) => {
                Some((gpu.clone().with_forward_path(ForwardPath::Hopper), "gpu-hopper"))
            }
            _ => None,
        }
    })
    .as_ref()
    .map(|(g, n)| (g, *n))
}

/// [`each_backend`] for the forward suites: each backend on each of its forward
/// paths (the CPU backend on both, an sm_90 GPU on both, other GPUs on mma.sync).
#[macro_export]
macro_rules! each_forward_path {
    (|$name:ident, $k:ident| $body:block) => {{
        each_backend!(|$name, $k| $body);
        #[cfg(feature = "cpu")]
        {
            #[allow(unused_variables)]
            let ($k, $name) = common::cpu_other_path();
            $body
        }
        #[cfg(feature = "cuda")]
        if let Some(($k, $name)) = common::shared_gpu_other_path() {
            let _ = $name;
            $body
        }
    }};
}

/// Runs `$body` with `$k` bound to each backend, named by `$name` ("cpu", "gpu"): the
/// CPU backend always, the GPU when there is one (else a skip message, or a failure
/// under MASKATTN_REQUIRE_GPU=1). Each expansion is statically typed, so the body
/// may call the generic methods of [`maskattn::Kernels`].
#[macro_export]
macro_rules! each_backend {
    (|$name:ident, $k:ident| $body:block) => {{
        #[cfg(feature = "cpu")]
        {
            #[allow(unused_variables)]
            let $name = "cpu";
            let $k = common::cpu();
            $body
        }
        #[cfg(feature = "cuda")]
        if let Some($k) = common::shared_gpu() {
            #[allow(unused_variables)]
            let $name = "gpu";
            $body
        }
    }};
}

/// `x` rounded to `T`: the rounded values as f64 (for the references) and as `T`
/// (for the kernels), so both see the same inputs.
pub fn rounded<T: maskattn::Element>(x: Array4<f64>) -> (Array4<f64>, Array4<T>) {
    let t = x.mapv(T::from_f64);
    (t.mapv(T::to_f64), t)
}

/// Small masks of several families with rows that see nothing, lengths that are not
/// tile multiples and Lq != Lk: the cases run under compute-sanitizer.
pub fn sanitizer_masks() -> Vec<Mask> {
    let layout: VideoLayout = "text:5,frames:2x70,text:9".parse().unwrap();
    vec![
        Mask::frame_block(&layout).unwrap(),
        Mask::causal(200, 130).unwrap(),
        Mask::causal_cross(33, 3, 29).unwrap(),
        Mask::from_intervals(77, vec![[0, 0, 0, 0], [3, 9, 40, 77], [0, 77, 0, 0]]).unwrap(),
    ]
}

/// Deterministic pseudo-random values in [-1, 1) (splitmix64), so tests need no rand crate.
pub fn random_array(shape: (usize, usize, usize, usize), seed: u64) -> Array4<f64> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(1);
    Array4::from_shape_simple_fn(shape, || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 52) as f64 - 1.0
    })
}

/// [`gpu`], opened once per test binary and shared by its tests.
#[cfg(feature = "cuda")]
pub fn shared_gpu() -> Option<&'static maskattn::cuda::Gpu> {
    static GPU: std::sync::OnceLock<Option<maskattn::cuda::Gpu>> = std::sync::OnceLock::new();
    GPU.get_or_init(gpu).as_ref()
}

/// The GPU for a GPU test: `None` (with a message) when there is none, unless
/// `MASKATTN_REQUIRE_GPU=1`, which turns the absence into a failure.
#[cfg(feature = "cuda")]
pub fn gpu() -> Option<maskattn::cuda::Gpu> {
    match maskattn::cuda::Gpu::new(0) {
        Ok(g) => Some(g),
        Err(e) if std::env::var("MASKATTN_REQUIRE_GPU").as_deref() == Ok("1") => {
            panic!("MASKATTN_REQUIRE_GPU=1 but no GPU is usable: {e}")
        }
        Err(e) => {
            eprintln!("skipping GPU test (set MASKATTN_REQUIRE_GPU=1 to make this a failure): {e}");
            None
        }
    }
}

/// A plain same-dtype attention, the yardstick of kernel error (as flash-attention's
/// tests use PyTorch's attention in the input dtype): Q K^T accumulated in f32 and
/// rounded to `T`, scaled in `T`, softmax in f32 rounded to `T`, P V accumulated in
/// f32 and rounded to `T`. Returns (out `[B, Lq, Hq, D]`, lse `[B, Hq, Lq]`) as f64.
pub fn plain_attention<T: maskattn::Element>(
    q: &Array4<f64>,
    k: &Array4<f64>,
    v: &Array4<f64>,
    mask: &Mask,
    scale: f64,
) -> (Array4<f64>, ndarray::Array3<f64>) {
    plain_attention_where::<T>(q, k, v, scale, |_, _, i, j| mask.is_visible(i, j))
}

/// [`plain_attention`] with any mask `visible(batch, head, q, k)` (e.g. a mask ANDed
/// with a block selection).
pub fn plain_attention_where<T: maskattn::Element>(
    q: &Array4<f64>,
    k: &Array4<f64>,
    v: &Array4<f64>,
    scale: f64,
    visible: impl Fn(usize, usize, usize, usize) -> bool,
) -> (Array4<f64>, ndarray::Array3<f64>) {
    let r = |x: f64| T::from_f64(x).to_f64();
    let (b, lq, hq, d) = q.dim();
    let (hkv, lk) = (k.dim().2, k.dim().1);
    // Contiguous f32 copies: the same values (inputs are rounded to T), row slices
    // instead of 4-d indexing in the inner loops.
    let to_f32 = |a: &Array4<f64>| a.as_standard_layout().iter().map(|&x| x as f32).collect::<Vec<f32>>();
    let (qf, kf, vf) = (to_f32(q), to_f32(k), to_f32(v));
    let row = |a: &[f32], heads: usize, bi: usize, l: usize, len: usize, h: usize| {
        let at = ((bi * len + l) * heads + h) * d;
        a[at..at + d].to_vec()
    };
    let mut out = Array4::zeros((b, lq, hq, d));
    let mut lse = ndarray::Array3::from_elem((b, hq, lq), f64::NEG_INFINITY);
    for bi in 0..b {
        for h in 0..hq {
            let hk = h / (hq / hkv);
            for i in 0..lq {
                let keys: Vec<usize> = (0..lk).filter(|&j| visible(bi, h, i, j)).collect();
                if keys.is_empty() {
                    continue;
                }
                let qi = row(&qf, hq, bi, i, lq, h);
                let s: Vec<f32> = keys
                    .iter()
                    .map(|&j| {
                        let kj = &kf[((bi * lk + j) * hkv + hk) * d..][..d];
                        let dot: f32 = qi.iter().zip(kj).map(|(a, b)| a * b).sum();
                        r(r(dot as f64) * r(scale)) as f32
                    })
                    .collect();
                let m = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let e: Vec<f32> = s.iter().map(|x| (x - m).exp()).collect();
                let sum: f32 = e.iter().sum();
                lse[[bi, h, i]] = (m + sum.ln()) as f64;
                let mut acc = vec![0f32; d];
                for (&j, &x) in keys.iter().zip(&e) {
                    let pj = r((x / sum) as f64) as f32;
                    let vj = &vf[((bi * lk + j) * hkv + hk) * d..][..d];
                    acc.iter_mut().zip(vj).for_each(|(a, v)| *a += pj * v);
                }
                for c in 0..d {
                    out[[bi, i, h, c]] = r(acc[c] as f64);
                }
            }
        }
    }
    (out, lse)
}

/// Largest |a - b| over two arrays of the same shape, with -inf == -inf counting 0.
pub fn max_abs_diff<'a>(a: impl IntoIterator<Item = &'a f64>, b: impl IntoIterator<Item = &'a f64>) -> f64 {
    a.into_iter().zip(b).map(|(x, y)| if x == y { 0.0 } else { (x - y).abs() }).fold(0.0, f64::max)
}

/// A copy of `maskattn::cuda::xattn_structured_inputs` (the same values for the same
/// seed; tests/kernels_xattn.rs checks it against the crate's where the `cuda` feature
/// is on), so that the XAttention tests can use its inputs in a build without it:
/// synthetic Q and K with the structure XAttention exploits in real models (a local
/// band along the bottom-right aligned diagonal, attention sinks), deterministic in
/// `seed`, O(1) values.
pub fn xattn_structured_inputs<T: maskattn::Element>(shape: &maskattn::AttnShape, seed: u64) -> (Array4<T>, Array4<T>) {
    let maskattn::AttnShape { batch, len_q, len_k, heads_q, heads_kv, head_dim: d } = *shape;
    let group = (heads_q / heads_kv.max(1)).max(1);
    let delta = len_k as i64 - len_q as i64;
    let first = delta.min(0); // smallest absolute position
    let n_pos = (len_k as i64 - first) as usize;
    let mut rng = StructuredRng(seed ^ 0x7861_7474_6e5f_7171);
    let rho: f64 = (-1.0f64 / 128.0).exp();
    let innov = (1.0 - rho * rho).sqrt();
    let (a_z, a_noise, a_probe, a_sink) = (0.8, 0.5, 0.3, 1.5);
    let span = 16usize;
    let sink_starts: Vec<(usize, usize)> =
        std::iter::once((0usize, 0usize)).chain((0..3).map(|s| ((rng.next() as usize) % len_k.max(1), s))).collect();
    let mut q = Array4::<T>::from_elem((batch, len_q, heads_q, d), T::from_f64(0.0));
    let mut k = Array4::<T>::from_elem((batch, len_k, heads_kv, d), T::from_f64(0.0));
    let mut z = vec![0.0f64; d];
    for b in 0..batch {
        for hk in 0..heads_kv {
            let dirs: Vec<Vec<f64>> = (0..3).map(|_| (0..d).map(|_| rng.unit()).collect()).collect();
            z.iter_mut().for_each(|x| *x = rng.unit());
            for pos in 0..n_pos {
                for x in z.iter_mut() {
                    *x = rho * *x + innov * rng.unit();
                }
                let abs = first + pos as i64;
                if abs >= 0 && (abs as usize) < len_k {
                    let kp = abs as usize;
                    let sinks: Vec<usize> =
                        sink_starts.iter().filter(|&&(s0, _)| kp >= s0 && kp < s0 + span).map(|&(_, s)| s).collect();
                    for c in 0..d {
                        let mut x = a_z * z[c] + a_noise * rng.unit();
                        for &s in &sinks {
                            x += a_sink * dirs[s][c];
                        }
                        k[[b, kp, hk, c]] = T::from_f64(x);
                    }
                }
                let qi = abs - delta;
                if qi >= 0 && (qi as usize) < len_q {
                    for h in hk * group..(hk + 1) * group {
                        for c in 0..d {
                            let probe: f64 = dirs.iter().map(|u| u[c]).sum::<f64>() * a_probe;
                            q[[b, qi as usize, h, c]] = T::from_f64(a_z * z[c] + a_noise * rng.unit() + probe);
                        }
                    }
                }
            }
        }
    }
    (q, k)
}

/// splitmix64 with uniform unit-variance draws (the generator of [`xattn_structured_inputs`]).
struct StructuredRng(u64);

impl StructuredRng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform on [-sqrt(3), sqrt(3)): mean 0, variance 1.
    fn unit(&mut self) -> f64 {
        ((self.next() >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) * 3f64.sqrt()
    }
}

/// The kernel fuzz tests' masks, with video masks of 1 to `max_frames` frames: fewer
/// on the CPU backend, where the kernels of one 2-frame video case (up to ~1600
/// tokens) take tens of seconds.
pub fn arb_kernel_mask(max_frames: usize) -> impl Strategy<Value = Mask> {
    let video = (prop::sample::select(vec![576usize, 729]), 1..max_frames + 1, 0usize..100, 0usize..3).prop_map(
        |(n, t, text, kind)| {
            let layout: VideoLayout = format!("text:{text},frames:{t}x{n},text:{}", text / 3 + 1).parse().unwrap();
            match kind {
                0 => Mask::frame_block_causal(&layout).unwrap(),
                1 => Mask::frame_block(&layout).unwrap(),
                _ => Mask::full_visual(&layout).unwrap(),
            }
        },
    );
    let ccam = (1usize..300, 1usize..5, prop::sample::select(vec![1usize, 64, 100, 729]))
        .prop_map(|(nq, t, n)| Mask::causal_cross(nq, t, n).unwrap());
    prop_oneof![
        6 => arb_mask(400),
        1 => video,
        1 => ccam,
    ]
}
