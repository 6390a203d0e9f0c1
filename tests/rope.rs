//! Temporal-Aware Dual RoPE: properties of the f64 reference and of the position
//! multipliers on the CPU; the bf16/f16 kernel against the reference on every
//! backend (the CPU backend always, the GPU when there is one), 100 random cases on
//! the CPU backend and 200 on a GPU (fixed seed; MASKATTN_GPU_FUZZ_CASES for more).
//! The device-pointer API (in-place rotation of strided device tensors) is tested on
//! a GPU only.

mod common;

use maskattn::rope::{self, DualRope, RopeStyle, TimeIndex};
use maskattn::{Error, Segment, VideoLayout};
use ndarray::{Array1, Array4};
use proptest::prelude::*;

fn arb_style() -> impl Strategy<Value = RopeStyle> {
    prop_oneof![Just(RopeStyle::Half), Just(RopeStyle::Interleaved)]
}

fn arb_time() -> impl Strategy<Value = TimeIndex> {
    prop_oneof![Just(TimeIndex::Steps), Just(TimeIndex::Frames)]
}

fn arb_rope() -> impl Strategy<Value = DualRope> {
    (prop::sample::select(vec![10_000.0, 1e6, 500.0, 2.5]), -1.0f64..3.0, arb_style(), arb_time())
        .prop_map(|(base, gamma, style, time)| DualRope { base, gamma, style, time })
}

/// Plain RoPE written independently of the crate: `x * cos + rotate(x) * sin` with
/// the angle table duplicated over the pairs, as HF's `apply_rotary_pos_emb`
/// (Half) or as a complex product (Interleaved); `pos[l]` is the rotation position.
fn plain_rope(x: &Array4<f64>, pos: &[f64], base: f64, style: RopeStyle) -> Array4<f64> {
    let (b, l, h, d) = x.dim();
    let half = d / 2;
    let mut out = x.clone();
    for li in 0..l {
        // freq[j] for every coordinate j, and the partner/sign of rotate(x).
        let freq = |j: usize| match style {
            RopeStyle::Half => 1.0 / base.powf((2 * (j % half)) as f64 / d as f64),
            RopeStyle::Interleaved => 1.0 / base.powf((2 * (j / 2)) as f64 / d as f64),
        };
        let rotated = |v: &[f64], j: usize| match style {
            RopeStyle::Half if j < half => -v[j + half],
            RopeStyle::Half => v[j - half],
            RopeStyle::Interleaved if j % 2 == 0 => -v[j + 1],
            RopeStyle::Interleaved => v[j - 1],
        };
        for bi in 0..b {
            for hi in 0..h {
                let v: Vec<f64> = (0..d).map(|j| x[[bi, li, hi, j]]).collect();
                for j in 0..d {
                    let a = pos[li] * freq(j);
                    out[[bi, li, hi, j]] = v[j] * a.cos() + rotated(&v, j) * a.sin();
                }
            }
        }
    }
    out
}

/// Per token of `layout`, independently of the crate: (is text, frames that end at
/// or before it, text tokens before it).
fn brute_force_time(layout: &VideoLayout) -> Vec<(bool, u64, u64)> {
    // (is_text, frame end) per token.
    let mut tokens: Vec<(bool, usize)> = Vec::new();
    for s in layout.segments() {
        match *s {
            Segment::Text(n) => tokens.extend((0..n).map(|_| (true, 0))),
            Segment::Frames { frames, tokens: n } => {
                for _ in 0..frames {
                    let end = tokens.len() + n;
                    tokens.extend((0..n).map(|_| (false, end)));
                }
            }
        }
    }
    let mut frame_ends: Vec<usize> = tokens.iter().filter(|t| !t.0).map(|t| t.1).collect();
    frame_ends.dedup();
    (0..tokens.len())
        .map(|p| {
            let frames_done = frame_ends.iter().filter(|&&end| end <= p).count() as u64;
            let text_before = tokens[..p].iter().filter(|t| t.0).count() as u64;
            (tokens[p].0, frames_done, text_before)
        })
        .collect()
}

fn max_diff(a: &Array4<f64>, b: &Array4<f64>) -> f64 {
    common::max_abs_diff(a.iter(), b.iter())
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// One vector rotated by multiplier `m`, through the reference.
fn rotate_vec(v: &[f64], m: f64, rope: &DualRope) -> Vec<f64> {
    let x = Array4::from_shape_vec((1, 1, 1, v.len()), v.to_vec()).unwrap();
    rope::apply_reference(x.view(), &[m], rope).unwrap().iter().copied().collect()
}

proptest! {
    #![proptest_config(common::config(256))]

    #[test]
    fn gamma_zero_is_plain_rope_at_the_global_positions(
        layout in common::arb_layout(4, 6),
        (style, time) in (arb_style(), arb_time()),
        base in prop::sample::select(vec![10_000.0, 1e6]),
        (b, h, half) in (1usize..3, 1usize..3, 1usize..9),
        seed in any::<u64>(),
    ) {
        let dual = DualRope { base, gamma: 0.0, style, time };
        let m = rope::positions(&layout, &dual).unwrap();
        let p: Vec<f64> = (0..layout.len()).map(|p| p as f64).collect();
        prop_assert_eq!(&m, &p);
        let x = common::random_array((b, layout.len(), h, 2 * half), seed);
        let got = rope::apply_reference(x.view(), &m, &dual).unwrap();
        let want = plain_rope(&x, &p, base, style);
        prop_assert!(max_diff(&got, &want) < 1e-12, "differs by {}", max_diff(&got, &want));
    }

    #[test]
    fn rotation_preserves_the_norm_of_every_pair(
        rope in arb_rope(),
        (l, half) in (1usize..6, 1usize..65),
        raw in prop::collection::vec(0.0f64..300_000.0, 6),
        seed in any::<u64>(),
    ) {
        let d = 2 * half;
        let x = common::random_array((2, l, 2, d), seed);
        let y = rope::apply_reference(x.view(), &raw[..l], &rope).unwrap();
        for ((bi, li, hi), i) in ndarray::indices((2, l, 2)).into_iter().flat_map(|t| (0..half).map(move |i| (t, i))) {
            let (a, c) = rope.style.pair(d, i);
            let n0 = x[[bi, li, hi, a]].hypot(x[[bi, li, hi, c]]);
            let n1 = y[[bi, li, hi, a]].hypot(y[[bi, li, hi, c]]);
            prop_assert!((n0 - n1).abs() <= 1e-14 + 1e-13 * n0, "pair {i}: {n0} -> {n1}");
        }
    }

    #[test]
    fn scores_depend_only_on_the_difference_of_multipliers(
        rope in arb_rope(),
        half in 1usize..65,
        (a, b, shift) in (-200_000.0f64..200_000.0, -200_000.0f64..200_000.0, -200_000.0f64..200_000.0),
        seed in any::<u64>(),
    ) {
        let d = 2 * half;
        let qk = common::random_array((1, 2, 1, d), seed);
        let q: Vec<f64> = (0..d).map(|j| qk[[0, 0, 0, j]]).collect();
        let k: Vec<f64> = (0..d).map(|j| qk[[0, 1, 0, j]]).collect();
        let s = dot(&rotate_vec(&q, a, &rope), &rotate_vec(&k, b, &rope));
        let shifted = dot(&rotate_vec(&q, a + shift, &rope), &rotate_vec(&k, b + shift, &rope));
        let relative = dot(&rotate_vec(&q, a - b, &rope), &k);
        // Angles of up to ~4e5 rad carry f64 rounding of ~1e-10 rad.
        let tol = 1e-8 * d as f64;
        prop_assert!((s - shifted).abs() < tol, "{s} vs {shifted}");
        prop_assert!((s - relative).abs() < tol, "{s} vs {relative}");
    }

    #[test]
    fn temporal_index_counts_frames_and_text_as_documented(
        layout in common::arb_layout(5, 7),
        gamma in -2.0f64..4.0,
    ) {
        let brute = brute_force_time(&layout);
        let steps = rope::time_indices(&layout, TimeIndex::Steps);
        let frames = rope::time_indices(&layout, TimeIndex::Frames);
        for (p, &(_, done, text_before)) in brute.iter().enumerate() {
            prop_assert_eq!(frames[p], done, "Frames, token {}", p);
            prop_assert_eq!(steps[p], done + text_before, "Steps, token {}", p);
        }
        // Text tokens: Steps advances by one per text token, Frames not at all, and
        // the first text token after a frame follows it.
        for p in 1..brute.len() {
            let (text, prev_text) = (brute[p].0, brute[p - 1].0);
            if text {
                prop_assert_eq!(steps[p], steps[p - 1] + 1);
                prop_assert_eq!(frames[p], frames[p - 1] + u64::from(!prev_text));
            }
        }
        for time in [TimeIndex::Steps, TimeIndex::Frames] {
            let dual = DualRope { gamma, time, ..DualRope::default() };
            let t = rope::time_indices(&layout, time);
            let m = rope::positions(&layout, &dual).unwrap();
            for p in 0..layout.len() {
                prop_assert_eq!(m[p], p as f64 + gamma * t[p] as f64);
            }
        }
    }

    #[test]
    fn position_ranges_are_slices_and_continue_as_text(
        layout in common::arb_layout(4, 6),
        rope in arb_rope(),
        (extra, a, b) in (0usize..20, 0usize..200, 0usize..200),
    ) {
        let total = layout.len() + extra;
        let (start, end) = (a.min(b) % (total + 1), a.max(b) % (total + 1));
        let (start, end) = (start.min(end), start.max(end));
        let mut segments = layout.segments().to_vec();
        segments.push(Segment::Text(extra));
        let longer = VideoLayout::new(segments).unwrap();
        let all = rope::positions(&longer, &rope).unwrap();
        let got = rope::positions_range(&layout, &rope, start..end).unwrap();
        prop_assert_eq!(&got[..], &all[start..end]);
    }

    #[test]
    fn dual_rotation_is_the_global_then_the_temporal_rotation(
        layout in common::arb_layout(4, 6),
        rope in arb_rope(),
        (h, half) in (1usize..3, 1usize..17),
        seed in any::<u64>(),
    ) {
        let (l, d) = (layout.len(), 2 * half);
        let x = common::random_array((1, l, h, d), seed);
        let global: Vec<f64> = (0..l).map(|p| p as f64).collect();
        let temporal: Vec<f64> =
            rope::time_indices(&layout, rope.time).iter().map(|&t| rope.gamma * t as f64).collect();
        let twice = rope::apply_reference(
            rope::apply_reference(x.view(), &global, &rope).unwrap().view(), &temporal, &rope).unwrap();
        let once = rope::apply_reference(x.view(), &rope::positions(&layout, &rope).unwrap(), &rope).unwrap();
        prop_assert!(max_diff(&twice, &once) < 1e-12);
    }

    #[test]
    fn interleaved_is_half_up_to_a_permutation_of_coordinates(
        rope in arb_rope(),
        (l, half) in (1usize..5, 1usize..33),
        positions in prop::collection::vec(-1e5f64..1e5, 5),
        seed in any::<u64>(),
    ) {
        let d = 2 * half;
        let x = common::random_array((1, l, 2, d), seed);
        // Interleaved slot of Half coordinate j: pair i = j mod D/2, second if j >= D/2.
        let slot = |j: usize| 2 * (j % half) + usize::from(j >= half);
        let mut xp = x.clone();
        for ((b, li, h, j), v) in x.indexed_iter() {
            xp[[b, li, h, slot(j)]] = *v;
        }
        let (halves, pairs) =
            (DualRope { style: RopeStyle::Half, ..rope }, DualRope { style: RopeStyle::Interleaved, ..rope });
        let half_style = rope::apply_reference(x.view(), &positions[..l], &halves).unwrap();
        let inter = rope::apply_reference(xp.view(), &positions[..l], &pairs).unwrap();
        let back = Array4::from_shape_fn((1, l, 2, d), |(b, li, h, j)| inter[[b, li, h, slot(j)]]);
        prop_assert!(max_diff(&half_style, &back) < 1e-12);
    }
}

#[test]
fn brute_force_formula_on_a_tiny_input() {
    // text:2, frames:2x3, text:1; D = 4, base 10000: theta = [1, 0.01].
    let layout: VideoLayout = "text:2,frames:2x3,text:1".parse().unwrap();
    assert_eq!(rope::time_indices(&layout, TimeIndex::Steps), [0, 1, 2, 2, 2, 3, 3, 3, 4]);
    assert_eq!(rope::time_indices(&layout, TimeIndex::Frames), [0, 0, 0, 0, 0, 1, 1, 1, 2]);
    let steps = DualRope { gamma: 0.5, ..DualRope::default() };
    assert_eq!(rope::positions(&layout, &steps).unwrap(), [0.0, 1.5, 3.0, 4.0, 5.0, 6.5, 7.5, 8.5, 10.0]);
    let frames = DualRope { gamma: 2.0, time: TimeIndex::Frames, ..DualRope::default() };
    assert_eq!(rope::positions(&layout, &frames).unwrap(), [0.0, 1.0, 2.0, 3.0, 4.0, 7.0, 8.0, 9.0, 12.0]);
    assert_eq!(steps.frequencies(4).unwrap(), [1.0, 0.01]);

    let m = rope::positions(&layout, &steps).unwrap();
    let x = Array1::from(vec![0.3, -1.2, 0.7, 2.0]).into_shape_with_order((1, 1, 1, 4)).unwrap();
    let x = x.broadcast((1, 9, 1, 4)).unwrap().to_owned();
    for style in [RopeStyle::Half, RopeStyle::Interleaved] {
        let y = rope::apply_reference(x.view(), &m, &DualRope { style, ..steps }).unwrap();
        for (l, &ml) in m.iter().enumerate() {
            let [x0, x1, x2, x3] = [0.3, -1.2, 0.7, 2.0];
            let (c0, s0, c1, s1) = (ml.cos(), ml.sin(), (0.01 * ml).cos(), (0.01 * ml).sin());
            let want = match style {
                // pairs (0, 2) at theta 1 and (1, 3) at theta 0.01
                RopeStyle::Half => [x0 * c0 - x2 * s0, x1 * c1 - x3 * s1, x0 * s0 + x2 * c0, x1 * s1 + x3 * c1],
                // pairs (0, 1) at theta 1 and (2, 3) at theta 0.01
                RopeStyle::Interleaved => [x0 * c0 - x1 * s0, x0 * s0 + x1 * c0, x2 * c1 - x3 * s1, x2 * s1 + x3 * c1],
            };
            for (j, w) in want.iter().enumerate() {
                assert!((y[[0, l, 0, j]] - w).abs() < 1e-14, "{style:?} token {l} coord {j}");
            }
        }
    }
}

#[test]
fn bad_inputs_are_typed_errors() {
    let d = DualRope::default();
    let x = Array4::<f32>::zeros((1, 3, 1, 8));
    let odd = Array4::<f32>::zeros((1, 3, 1, 7));
    let empty = Array4::<f32>::zeros((1, 0, 1, 8));
    assert!(matches!(rope::apply_reference(odd.view(), &[0.0; 3], &d), Err(Error::Shape(_))));
    assert!(matches!(rope::apply_reference(empty.view(), &[], &d), Err(Error::Shape(_))));
    assert!(matches!(rope::apply_reference(x.view(), &[0.0; 2], &d), Err(Error::Shape(_))));
    assert!(matches!(
        rope::apply_reference(x.view(), &[0.0, f64::NAN, 1.0], &d),
        Err(Error::InvalidParameter { what: "positions", .. })
    ));
    for bad in [DualRope { base: 0.0, ..d }, DualRope { base: f64::INFINITY, ..d }, DualRope { gamma: f64::NAN, ..d }] {
        assert!(matches!(rope::apply_reference(x.view(), &[0.0; 3], &bad), Err(Error::InvalidParameter { .. })));
        assert!(rope::positions(&"text:3".parse().unwrap(), &bad).is_err());
    }
    assert!(matches!(d.frequencies(0), Err(Error::Shape(_))));
    let layout: VideoLayout = "text:3".parse().unwrap();
    #[allow(clippy::reversed_empty_ranges)]
    let reversed = 3..1;
    assert!(rope::positions_range(&layout, &d, reversed).is_err());
    assert!(rope::positions_range(&layout, &d, 0..(i32::MAX as usize + 1)).is_err());
}

#[cfg(any(feature = "cuda", feature = "cpu"))]
mod kernels {
    use half::{bf16, f16};
    use maskattn::rope::{self, DualRope};
    use maskattn::{Element, Error, KernelElement, Kernels, VideoLayout};
    use ndarray::Array4;
    use proptest::prelude::*;

    use super::{arb_style, arb_time, common};
    use crate::each_backend;

    /// The plain same-dtype implementation of the yardstick: HF-style `f32`
    /// frequencies and angles `(m as f32) * inv_freq`, `f32` sin/cos and rotation,
    /// rounded to `T`.
    fn plain_f32<T: Element>(x: &Array4<f64>, positions: &[f64], rope: &DualRope) -> Array4<f64> {
        let (b, _, h, d) = x.dim();
        let inv: Vec<f32> = (0..d / 2).map(|i| 1.0 / (rope.base as f32).powf((2 * i) as f32 / d as f32)).collect();
        let mut out = x.clone();
        for (li, &m) in positions.iter().enumerate() {
            for (i, &f) in inv.iter().enumerate() {
                let (s, c) = ((m as f32) * f).sin_cos();
                let (ia, ib) = rope.style.pair(d, i);
                for (bi, hi) in ndarray::indices((b, h)) {
                    let (xa, xb) = (x[[bi, li, hi, ia]] as f32, x[[bi, li, hi, ib]] as f32);
                    out[[bi, li, hi, ia]] = T::from_f64((xa * c - xb * s) as f64).to_f64();
                    out[[bi, li, hi, ib]] = T::from_f64((xa * s + xb * c) as f64).to_f64();
                }
            }
        }
        out
    }

    /// Half an ulp relative: 2^-8 for bf16, 2^-11 for f16.
    fn half_ulp<T: KernelElement>() -> f64 {
        if T::KERNEL_NAME == "bf16" {
            2f64.powi(-8)
        } else {
            2f64.powi(-11)
        }
    }

    /// Kernel error within 2x the plain implementation's, and within one rounding of
    /// the f64 result plus the ~1e-7 relative error of the f32 angles and rotation.
    pub(super) fn check_close<T: KernelElement>(
        what: &str,
        got: &Array4<T>,
        x: &Array4<f64>,
        positions: &[f64],
        rope: &DualRope,
    ) -> Result<(), TestCaseError> {
        let want = rope::apply_reference(x.view(), positions, rope).unwrap();
        let plain = plain_f32::<T>(x, positions, rope);
        let got = got.mapv(T::to_f64);
        let err = common::max_abs_diff(got.iter(), want.iter());
        let plain_err = common::max_abs_diff(plain.iter(), want.iter());
        let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        let bound = (half_ulp::<T>() + 1e-6) * scale + 1e-7;
        prop_assert!(err <= 2.0 * plain_err + 1e-7, "{what}: kernel error {err} > 2 x plain {plain_err}");
        prop_assert!(err <= bound, "{what}: kernel error {err} > {bound}");
        Ok(())
    }

    #[derive(Debug, Clone)]
    struct Case {
        layout: VideoLayout,
        batch: usize,
        heads: (usize, usize),
        head_dim: usize,
        bf16: bool,
        rope: DualRope,
        shift: f64,
        seed: u64,
    }

    fn arb_case() -> impl Strategy<Value = Case> {
        let rope = (prop::sample::select(vec![10_000.0, 1e6, 500_000.0]), 0.0f64..2.0, arb_style(), arb_time())
            .prop_map(|(base, gamma, style, time)| DualRope { base, gamma, style, time });
        (
            common::arb_layout(4, 48),
            1usize..3,
            prop::sample::select(vec![(1usize, 1usize), (4, 1), (4, 2), (3, 3), (8, 2)]),
            prop::sample::select(vec![64usize, 96, 128]),
            any::<bool>(),
            rope,
            prop_oneof![Just(0.0), 0.0f64..262_144.0],
            any::<u64>(),
        )
            .prop_map(|(layout, batch, heads, head_dim, bf16, rope, shift, seed)| Case {
                layout,
                batch,
                heads,
                head_dim,
                bf16,
                rope,
                shift,
                seed,
            })
    }

    fn check_case<K: Kernels, T: KernelElement>(kernels: &K, c: &Case) -> Result<(), TestCaseError> {
        let l = c.layout.len();
        // `shift` moves every multiplier, as a long prefix or a KV cache would.
        let positions: Vec<f64> = rope::positions(&c.layout, &c.rope).unwrap().iter().map(|m| m + c.shift).collect();
        let (q, q_t) = common::rounded::<T>(common::random_array((c.batch, l, c.heads.0, c.head_dim), c.seed));
        let (k, k_t) = common::rounded::<T>(common::random_array((c.batch, l, c.heads.1, c.head_dim), c.seed ^ 0xABCD));
        let (gq, gk) = kernels.dual_rope_qk(q_t.view(), k_t.view(), &positions, &c.rope).unwrap();
        check_close("q", &gq, &q, &positions, &c.rope)?;
        check_close("k", &gk, &k, &positions, &c.rope)?;
        let gq1 = kernels.dual_rope(q_t.view(), &positions, &c.rope).unwrap();
        prop_assert!(gq1.iter().zip(&gq).all(|(a, b)| a.to_f64() == b.to_f64()), "one- and two-tensor launches differ");
        Ok(())
    }

    #[test]
    fn kernel_matches_the_reference_within_twice_plain_error() {
        each_backend!(|backend, kernels| {
            let config = common::fuzz_config(backend, 200, 100, 0x726f_7065);
            proptest!(config, |(c in arb_case())| {
                if c.bf16 { check_case::<_, bf16>(kernels, &c)? } else { check_case::<_, f16>(kernels, &c)? }
            });
        });
    }

    #[test]
    fn bad_inputs_are_errors_before_any_launch() {
        each_backend!(|backend, kernels| {
            let rope = DualRope::default();
            let x = Array4::<bf16>::zeros((1, 4, 2, 64));
            assert!(matches!(kernels.dual_rope(x.view(), &[0.0; 3], &rope), Err(Error::Shape(_))));
            assert!(matches!(
                kernels.dual_rope(x.view(), &[0.0, 1.0, f64::NAN, 2.0], &rope),
                Err(Error::InvalidParameter { .. })
            ));
            let d72 = Array4::<bf16>::zeros((1, 4, 2, 72));
            assert!(matches!(kernels.dual_rope(d72.view(), &[0.0; 4], &rope), Err(Error::Unsupported(_))));
            let d63 = Array4::<f16>::zeros((1, 4, 2, 63));
            assert!(matches!(kernels.dual_rope(d63.view(), &[0.0; 4], &rope), Err(Error::Shape(_))));
            let k = Array4::<bf16>::zeros((1, 5, 2, 64));
            assert!(matches!(kernels.dual_rope_qk(x.view(), k.view(), &[0.0; 4], &rope), Err(Error::Shape(_))));
            let bad_base = DualRope { base: -1.0, ..rope };
            assert!(
                matches!(kernels.dual_rope(x.view(), &[0.0; 4], &bad_base), Err(Error::InvalidParameter { .. })),
                "{backend}"
            );
        });
    }
}

/// The device-pointer API of the RoPE kernel (in place, strided device tensors), on a
/// GPU only: the CPU backend has no such API.
#[cfg(feature = "cuda")]
mod device {
    use half::{bf16, f16};
    use maskattn::cuda::{DeviceTensorMut, Gpu, Layout4};
    use maskattn::rope::{self, DualRope, RopeStyle};
    use maskattn::{Error, KernelElement, VideoLayout};
    use ndarray::Array4;

    use super::common;
    use super::kernels::check_close;

    fn gpu() -> Option<&'static Gpu> {
        let gpu = common::shared_gpu();
        if gpu.is_none() {
            eprintln!("skipping: the device-pointer API needs a GPU");
        }
        gpu
    }

    /// Rotates `dims` viewed with `strides` inside a buffer of `len` elements and
    /// checks the rotated elements and that no other element changed.
    fn check_strided<T: KernelElement>(gpu: &Gpu, dims: [usize; 4], strides: [usize; 4], len: usize, rope: &DualRope) {
        let layout: VideoLayout = format!("text:3,frames:3x{},text:2", (dims[1] - 5) / 3).parse().unwrap();
        assert_eq!(layout.len(), dims[1]);
        let positions = rope::positions(&layout, rope).unwrap();
        let buffer: Vec<T> = common::random_array((1, 1, 1, len), 7).iter().map(|&v| T::from_f64(v)).collect();
        let mut dev = gpu.upload(&buffer).unwrap();
        let dpos = gpu.upload(&positions).unwrap();
        let l4 = Layout4 { dims, strides };
        gpu.dual_rope_inplace(&mut DeviceTensorMut { data: dev.as_view_mut(), layout: l4 }, &dpos.as_view(), rope)
            .unwrap();
        let out = gpu.download(&dev).unwrap();
        let at = |(b, l, h, d): (usize, usize, usize, usize)| {
            b * strides[0] + l * strides[1] + h * strides[2] + d * strides[3]
        };
        let x = Array4::from_shape_fn(dims, |i| buffer[at(i)].to_f64());
        let got = Array4::from_shape_fn(dims, |i| out[at(i)]);
        check_close(&format!("strided {strides:?}"), &got, &x, &positions, rope).unwrap();
        let mut touched = vec![false; len];
        for i in ndarray::indices(dims) {
            touched[at(i)] = true;
        }
        for (j, t) in touched.iter().enumerate() {
            if !t {
                assert_eq!(out[j].to_f64(), buffer[j].to_f64(), "element {j} outside the tensor changed");
            }
        }
    }

    #[test]
    fn strided_and_fused_layouts() {
        let Some(gpu) = gpu() else { return };
        let (b, l, h, d) = (2, 38, 3, 128);
        for style in [RopeStyle::Half, RopeStyle::Interleaved] {
            let rope = DualRope { style, gamma: 0.75, ..DualRope::default() };
            // [B, H, L, D] storage seen as [B, L, H, D].
            check_strided::<bf16>(gpu, [b, l, h, d], [h * l * d, d, l * d, 1], b * h * l * d, &rope);
            // Padded rows.
            check_strided::<f16>(
                gpu,
                [b, l, h, 96],
                [l * (h * 96 + 16), h * 96 + 16, 96, 1],
                b * l * (h * 96 + 16),
                &rope,
            );
            // Q and K heads of a fused [B, L, 3, H, D] QKV buffer as 2H heads; V untouched.
            check_strided::<bf16>(
                gpu,
                [b, l, 2 * h, 64],
                [l * 3 * h * 64, 3 * h * 64, 64, 1],
                b * l * 3 * h * 64,
                &rope,
            );
        }
    }

    #[test]
    fn bad_launches_are_errors_before_the_kernel() {
        let Some(gpu) = gpu() else { return };
        let rope = DualRope::default();
        let mut empty = gpu.zeros::<bf16>(64).unwrap();
        let mut t = DeviceTensorMut { data: empty.as_view_mut(), layout: Layout4::contiguous([0, 4, 2, 64]) };
        let pos4 = gpu.upload(&[0.0f64; 4]).unwrap();
        assert!(matches!(gpu.dual_rope_inplace(&mut t, &pos4.as_view(), &rope), Err(Error::Shape(_))));
        // A view starting one element in is not 16-byte aligned.
        let mut buf = gpu.zeros::<bf16>(4 * 2 * 64 + 8).unwrap();
        let pos = gpu.upload(&[0.0f64; 4]).unwrap();
        let view = buf.slice_mut(1..);
        let mut t = DeviceTensorMut { data: view, layout: Layout4::contiguous([1, 4, 2, 64]) };
        assert!(matches!(gpu.dual_rope_inplace(&mut t, &pos.as_view(), &rope), Err(Error::Shape(_))));
    }
}
