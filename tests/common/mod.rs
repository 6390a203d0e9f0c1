//! Shared test helpers: proptest settings, random masks and tensors, the GPU gate.
#![allow(dead_code)]

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
/// 576 and 729 tokens per frame, and Video-CCAM masks.
pub fn arb_gpu_mask() -> impl Strategy<Value = Mask> {
    let video = (prop::sample::select(vec![576usize, 729]), 1usize..3, 0usize..100, 0usize..3).prop_map(
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

/// Settings of a GPU fuzz test: a fixed seed, so a failure reproduces on any machine;
/// `cases` by default, `MASKATTN_GPU_FUZZ_CASES` overrides.
pub fn gpu_fuzz_config(cases: u32, seed: u64) -> ProptestConfig {
    let cases = std::env::var("MASKATTN_GPU_FUZZ_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(cases);
    ProptestConfig {
        cases,
        rng_seed: proptest::test_runner::RngSeed::Fixed(seed),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
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
                let s: Vec<f32> = keys
                    .iter()
                    .map(|&j| {
                        let dot: f32 = (0..d).map(|c| q[[bi, i, h, c]] as f32 * k[[bi, j, hk, c]] as f32).sum();
                        r(r(dot as f64) * r(scale)) as f32
                    })
                    .collect();
                let m = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let e: Vec<f32> = s.iter().map(|x| (x - m).exp()).collect();
                let sum: f32 = e.iter().sum();
                lse[[bi, h, i]] = (m + sum.ln()) as f64;
                let p: Vec<f32> = e.iter().map(|x| r((x / sum) as f64) as f32).collect();
                for c in 0..d {
                    let acc: f32 = keys.iter().zip(&p).map(|(&j, &pj)| pj * v[[bi, j, hk, c]] as f32).sum();
                    out[[bi, i, h, c]] = r(acc as f64);
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
