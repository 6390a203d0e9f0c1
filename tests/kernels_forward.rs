//! Fuzz of the forward kernel on every backend (the CPU backend always, the GPU when
//! there is one): random batch, heads (GQA), lengths that are not tile multiples,
//! head dims, dtypes and masks of every family, compared with the f64 reference on
//! the same rounded inputs. The kernel's max error must stay within 2x that of a
//! plain same-dtype implementation on the same inputs (flash-attention's own
//! criterion). 200 cases on the CPU backend, 500 on a GPU, fixed seeds;
//! MASKATTN_GPU_FUZZ_CASES for more.
#![cfg(any(feature = "cuda", feature = "cpu"))]

mod common;

use common::{max_abs_diff, plain_attention, random_array};
use half::{bf16, f16};
use maskattn::{reference, Mask};
use maskattn::{KernelElement, Kernels};
use ndarray::Array4;
use proptest::prelude::*;

#[derive(Debug, Clone)]
struct Case {
    mask: Mask,
    batch: usize,
    heads: (usize, usize),
    head_dim: usize,
    bf16: bool,
    scale: Option<f64>,
    seed: u64,
}

fn arb_case() -> impl Strategy<Value = Case> {
    let masks = common::arb_gpu_mask();
    let heads = prop::sample::select(vec![(1usize, 1usize), (2, 1), (4, 2), (3, 1), (4, 4), (8, 1)]);
    (
        masks,
        1usize..3,
        heads,
        common::arb_head_dim(),
        any::<bool>(),
        prop::option::weighted(0.2, 0.05f64..0.5),
        any::<u64>(),
    )
        .prop_map(|(mask, batch, heads, head_dim, bf16, scale, seed)| {
            // Keep the f64 reference affordable on long video masks.
            let (batch, heads) =
                if mask.len_q() * mask.len_k() > 200_000 { (1, (heads.0.min(2), 1)) } else { (batch, heads) };
            Case { mask, batch, heads, head_dim, bf16, scale, seed }
        })
}

fn check<K: Kernels, T: KernelElement>(gpu: &K, c: &Case) -> Result<(), TestCaseError> {
    let (hq, hkv) = c.heads;
    let (lq, lk, d) = (c.mask.len_q(), c.mask.len_k(), c.head_dim);
    // Keys with a spread of norms make the softmax peaked in some rows, flat in others.
    let (q64, q) = common::rounded::<T>(random_array((c.batch, lq, hq, d), c.seed) * 1.5);
    let (k64, k) = common::rounded::<T>(random_array((c.batch, lk, hkv, d), c.seed ^ 1) * 1.5);
    let (v64, v) = common::rounded::<T>(random_array((c.batch, lk, hkv, d), c.seed ^ 2));
    let want = reference::attention(q64.view(), k64.view(), v64.view(), &c.mask, c.scale).unwrap();
    let scale = c.scale.unwrap_or(1.0 / (d as f64).sqrt());
    let (plain_out, plain_lse) = plain_attention::<T>(&q64, &k64, &v64, &c.mask, scale);
    let (out, lse) = gpu.attention(q.view(), k.view(), v.view(), &c.mask, c.scale.map(|s| s as f32)).unwrap();
    let out = out.mapv(T::to_f64);
    let lse = lse.mapv(f64::from);
    prop_assert!(out.iter().all(|x| x.is_finite()), "non-finite output");
    for (g, w) in lse.iter().zip(&want.lse) {
        prop_assert!((*w == f64::NEG_INFINITY) == (*g == f64::NEG_INFINITY), "lse {} where the reference has {}", g, w);
    }
    let (err, plain_err) = (max_abs_diff(&out, &want.out), max_abs_diff(&plain_out, &want.out));
    prop_assert!(err <= 2.0 * plain_err, "out error {:e} > 2 x plain {:e}", err, plain_err);
    let (lerr, plain_lerr) = (max_abs_diff(&lse, &want.lse), max_abs_diff(&plain_lse, &want.lse));
    prop_assert!(lerr <= 2.0 * plain_lerr, "lse error {:e} > 2 x plain {:e}", lerr, plain_lerr);
    Ok(())
}

#[test]
fn forward_matches_the_reference_within_twice_the_plain_error() {
    each_forward_path!(|backend, gpu| {
        let tally = common::HeadDimTally::new(backend);
        proptest!(common::fuzz_config(backend, 500, 200, 0x6d61_736b), |(c in arb_case())| {
            tally.record(c.head_dim);
            if c.bf16 { check::<_, bf16>(gpu, &c)? } else { check::<_, f16>(gpu, &c)? }
        });
    });
}

/// A handful of small cases for compute-sanitizer (memcheck, racecheck), which slows
/// kernels down by orders of magnitude: `scripts/gpu-sanitize.sh` runs this test.
#[test]
fn sanitizer_subset() {
    each_forward_path!(|backend, gpu| {
        let masks = common::sanitizer_masks();
        for (i, mask) in masks.into_iter().enumerate() {
            // 80 runs in class 96 (padded columns), 256 with 8 warps.
            for (head_dim, bf16) in [(64, true), (80, false), (128, true), (256, false)] {
                let c =
                    Case { mask: mask.clone(), batch: 2, heads: (2, 1), head_dim, bf16, scale: None, seed: i as u64 };
                let r = if bf16 { check::<_, bf16>(gpu, &c) } else { check::<_, f16>(gpu, &c) };
                r.unwrap_or_else(|e| panic!("{c:?}: {e}"));
            }
        }
    });
}

/// The head dims of video models' vision towers and of Gemma, always (the fuzz draws
/// them too, by chance): SigLIP's 72 and Qwen2.5-VL's 80 in class 96, 136 and 256 in
/// class 256, 8 in class 64, on lengths that are not tile multiples.
#[test]
fn vision_and_gemma_head_dims_match_the_reference() {
    each_forward_path!(|_backend, gpu| {
        let masks = [
            Mask::frame_block_causal(&"text:7,frames:2x72,text:9".parse().unwrap()).unwrap(),
            Mask::causal(150, 150).unwrap(),
        ];
        for (i, mask) in masks.iter().enumerate() {
            for (head_dim, bf16) in [(72, true), (80, false), (256, true), (8, false), (136, true)] {
                let c =
                    Case { mask: mask.clone(), batch: 1, heads: (2, 1), head_dim, bf16, scale: None, seed: i as u64 };
                let r = if bf16 { check::<_, bf16>(gpu, &c) } else { check::<_, f16>(gpu, &c) };
                r.unwrap_or_else(|e| panic!("{c:?}: {e}"));
            }
        }
    });
}

/// Attention over key shards (mask sliced per shard, K/V as strided views into the
/// full buffers, no copies), merged through the LSE, equals attention over all keys.
#[test]
fn key_shards_merge_to_the_whole() {
    each_forward_path!(|backend, gpu| {
        let mask = Mask::frame_block_causal(&"text:33,frames:3x576,text:40".parse().unwrap()).unwrap();
        let (b, h, d, lk) = (2, 2, 128, mask.len_k());
        let (q64, q) = common::rounded::<bf16>(random_array((b, mask.len_q(), h, d), 7));
        let (k64, k) = common::rounded::<bf16>(random_array((b, lk, h, d), 8));
        let (v64, v) = common::rounded::<bf16>(random_array((b, lk, h, d), 9));
        let want = reference::attention(q64.view(), k64.view(), v64.view(), &mask, None).unwrap();
        let (plain_out, _) = plain_attention::<bf16>(&q64, &k64, &v64, &mask, 1.0 / (d as f64).sqrt());
        let plain_err = max_abs_diff(&plain_out, &want.out);
        for bounds in [vec![0, 1000, lk], vec![0, 64, 700, 1401, lk], vec![0, 600, 1200, 1500, lk]] {
            let parts: Vec<_> = bounds
                .windows(2)
                .map(|w| {
                    let s = ndarray::s![.., w[0]..w[1], .., ..];
                    let part_mask = mask.slice(0..mask.len_q(), w[0]..w[1]).unwrap();
                    let (o, l) = gpu.attention(q.view(), k.slice(s), v.slice(s), &part_mask, None).unwrap();
                    reference::AttentionOutput { out: o.mapv(|x| x.to_f64()), lse: l.mapv(f64::from) }
                })
                .collect();
            let merged = reference::merge_partials(&parts).unwrap();
            let err = max_abs_diff(&merged.out, &want.out);
            assert!(err <= 2.0 * plain_err, "shards {bounds:?}: error {err:e} > 2 x plain {plain_err:e}");
        }
    });
}

#[test]
fn bad_inputs_are_errors_before_any_launch() {
    each_forward_path!(|backend, gpu| {
        let mask = Mask::causal(10, 10).unwrap();
        let x = Array4::<bf16>::zeros((1, 10, 2, 64));
        let wrong_len = Array4::<bf16>::zeros((1, 9, 2, 64));
        let wrong_heads = Array4::<bf16>::zeros((1, 10, 3, 64));
        // Head dims the kernels do not take: not a multiple of 8, above 256.
        for d in [12, 264] {
            let wrong_dim = Array4::<bf16>::zeros((1, 10, 2, d));
            let r = gpu.attention(wrong_dim.view(), wrong_dim.view(), wrong_dim.view(), &mask, None);
            assert!(matches!(r, Err(maskattn::Error::Unsupported(_))), "D = {d}: {r:?}");
        }
        assert!(matches!(
            gpu.attention(x.view(), wrong_len.view(), wrong_len.view(), &mask, None),
            Err(maskattn::Error::Shape(_))
        ));
        assert!(matches!(
            gpu.attention(x.view(), wrong_heads.view(), wrong_heads.view(), &mask, None),
            Err(maskattn::Error::Shape(_))
        ));
        for bad_scale in [f32::INFINITY, f32::NAN, 0.0, -0.1] {
            assert!(gpu.attention(x.view(), x.view(), x.view(), &mask, Some(bad_scale)).is_err(), "scale {bad_scale}");
        }
        let other_mask = Mask::causal(10, 12).unwrap();
        assert!(matches!(
            gpu.attention(x.view(), x.view(), x.view(), &other_mask, None),
            Err(maskattn::Error::Shape(_))
        ));
        // Zero heads, zero batch, zero head dim.
        for dims in [(1, 10, 0, 64), (0, 10, 2, 64), (1, 10, 2, 0)] {
            let empty = Array4::<bf16>::zeros(dims);
            let r = gpu.attention(empty.view(), empty.view(), empty.view(), &mask, None);
            assert!(matches!(r, Err(maskattn::Error::Shape(_))), "{dims:?}");
        }
        // More query tiles than the grid's 65535 (8M queries of one row broadcast:
        // nothing is allocated for them before the error).
        let lq = 65536 * 128;
        let long = Mask::causal(lq, 10).unwrap();
        let row = Array4::<bf16>::zeros((1, 1, 2, 64));
        let q = row.broadcast((1, lq, 2, 64)).unwrap();
        assert!(matches!(gpu.attention(q, x.view(), x.view(), &long, None), Err(maskattn::Error::Unsupported(_))));
        // A selection for other heads, or other lengths.
        let sel = maskattn::xattention::BlockSelection::full(1, 3, 10, 10, false).unwrap();
        assert!(gpu.attention_block_sparse(x.view(), x.view(), x.view(), &mask, &sel, None).is_err());
        let sel = maskattn::xattention::BlockSelection::full(1, 2, 10, 300, false).unwrap();
        assert!(gpu.attention_block_sparse(x.view(), x.view(), x.view(), &mask, &sel, None).is_err());
    });
}

/// Block-sparse forward: a random XAttention-style selection ANDed with random masks,
/// against the f64 sparse reference, within 2x the plain same-dtype error.
#[test]
fn block_sparse_forward_matches_the_sparse_reference() {
    each_forward_path!(|backend, gpu| {
        let config = common::fuzz_config(backend, 150, 50, 0x7370_6172);
        proptest!(config, |(c in arb_case(), density in 0.0f64..1.0)| {
            let (hq, hkv) = c.heads;
            let (lq, lk, d) = (c.mask.len_q(), c.mask.len_k(), c.head_dim);
            let sel = maskattn::xattention::BlockSelection::from_fn(c.batch, hq, lq, lk, false, |b, h, qb, kb| {
                let x = (c.seed ^ ((b * 7919 + h * 104_729 + qb * 1_299_709 + kb) as u64)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                ((x >> 40) % 1000) as f64 / 1000.0 < density
            }).unwrap();
            let (q64, q) = common::rounded::<bf16>(random_array((c.batch, lq, hq, d), c.seed) * 1.5);
            let (k64, k) = common::rounded::<bf16>(random_array((c.batch, lk, hkv, d), c.seed ^ 1) * 1.5);
            let (v64, v) = common::rounded::<bf16>(random_array((c.batch, lk, hkv, d), c.seed ^ 2));
            let want = maskattn::xattention::sparse_attention(q64.view(), k64.view(), v64.view(), &c.mask, &sel, None).unwrap();
            let visible = |b, h, i, j| sel.visible(&c.mask, b, h, i, j);
            let (plain_out, _) = common::plain_attention_where::<bf16>(&q64, &k64, &v64, 1.0 / (d as f64).sqrt(), visible);
            let (out, lse) = gpu.attention_block_sparse(q.view(), k.view(), v.view(), &c.mask, &sel, None).unwrap();
            let out = out.mapv(|x| x.to_f64());
            for (g, w) in lse.iter().zip(&want.lse) {
                prop_assert!((*w == f64::NEG_INFINITY) == (*g == f32::NEG_INFINITY), "lse {} where the reference has {}", g, w);
            }
            let (err, plain_err) = (max_abs_diff(&out, &want.out), max_abs_diff(&plain_out, &want.out));
            prop_assert!(err <= 2.0 * plain_err, "out error {:e} > 2 x plain {:e}", err, plain_err);
        });
    });
}

/// On a GPU: the default forward path is the Hopper kernel on sm_90 and the mma.sync
/// kernel elsewhere; the Hopper path forced on another GPU is `Unsupported` at the
/// forward, before any launch. Skips (with a message) without a GPU.
#[cfg(feature = "cuda")]
#[test]
fn gpu_forward_path_follows_the_architecture() {
    use maskattn::{Error, ForwardPath};
    let Some(gpu) = common::shared_gpu() else { return };
    let sm90 = gpu.compute_capability().unwrap() == (9, 0);
    if std::env::var(maskattn::FORWARD_PATH_ENV).is_err() {
        let want = if sm90 { ForwardPath::Hopper } else { ForwardPath::Mma };
        assert_eq!(gpu.forward_path().unwrap(), want);
    }
    let hopper = gpu.clone().with_forward_path(ForwardPath::Hopper);
    let x = Array4::<bf16>::zeros((1, 64, 1, 64));
    let got = hopper.attention(x.view(), x.view(), x.view(), &Mask::causal(64, 64).unwrap(), None);
    match (sm90, got) {
        (true, Ok(_)) => {}
        (false, Err(Error::Unsupported(msg))) => assert!(msg.contains("sm_90"), "{msg}"),
        (_, other) => panic!("sm_90 {sm90}: {:?}", other.map(|_| ())),
    }
}
