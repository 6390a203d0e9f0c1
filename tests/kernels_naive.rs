//! Fuzz of the naive baseline (csrc/naive_attention.cu) on every backend (the CPU
//! backend always, the GPU when there is one): random masks of every family, batch,
//! GQA heads, head dims (also ones that are not tile multiples) and dtypes, against
//! the f64 reference on the same rounded inputs, within 2x the error of a plain
//! same-dtype implementation (the criterion of tests/kernels_forward.rs). 40 cases on
//! the CPU backend, 100 on a GPU, fixed seed; MASKATTN_GPU_FUZZ_CASES for more.
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
    let heads = prop::sample::select(vec![(1usize, 1usize), (2, 1), (4, 2), (3, 1), (4, 4)]);
    (
        common::arb_mask(200),
        1usize..3,
        heads,
        prop::sample::select(vec![8usize, 40, 64, 72, 80, 96, 128, 256]),
        any::<bool>(),
        prop::option::weighted(0.2, 0.05f64..0.5),
        any::<u64>(),
    )
        .prop_map(|(mask, batch, heads, head_dim, bf16, scale, seed)| Case {
            mask,
            batch,
            heads,
            head_dim,
            bf16,
            scale,
            seed,
        })
}

fn check<K: Kernels, T: KernelElement>(kernels: &K, c: &Case) -> Result<(), TestCaseError> {
    let (hq, hkv) = c.heads;
    let (lq, lk, d) = (c.mask.len_q(), c.mask.len_k(), c.head_dim);
    let (q64, q) = common::rounded::<T>(random_array((c.batch, lq, hq, d), c.seed) * 1.5);
    let (k64, k) = common::rounded::<T>(random_array((c.batch, lk, hkv, d), c.seed ^ 1) * 1.5);
    let (v64, v) = common::rounded::<T>(random_array((c.batch, lk, hkv, d), c.seed ^ 2));
    let want = reference::attention(q64.view(), k64.view(), v64.view(), &c.mask, c.scale).unwrap();
    let scale = c.scale.unwrap_or(1.0 / (d as f64).sqrt());
    let (plain_out, plain_lse) = plain_attention::<T>(&q64, &k64, &v64, &c.mask, scale);
    let (out, lse) =
        kernels.naive_attention_host(q.view(), k.view(), v.view(), &c.mask, c.scale.map(|s| s as f32)).unwrap();
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
fn naive_matches_the_reference_within_twice_the_plain_error() {
    each_backend!(|backend, kernels| {
        let config = common::fuzz_config(backend, 100, 40, 0x6e61_6976);
        proptest!(config, |(c in arb_case())| {
            if c.bf16 { check::<_, bf16>(kernels, &c)? } else { check::<_, f16>(kernels, &c)? }
        });
    });
}

#[test]
fn bad_inputs_are_errors_before_any_launch() {
    each_backend!(|backend, kernels| {
        let mask = Mask::causal(10, 10).unwrap();
        let x = Array4::<bf16>::zeros((1, 10, 2, 64));
        let wrong_len = Array4::<bf16>::zeros((1, 9, 2, 64));
        let wrong_heads = Array4::<bf16>::zeros((1, 10, 3, 64));
        let naive = |q: &Array4<bf16>, kv: &Array4<bf16>, m: &Mask, s| {
            kernels.naive_attention_host(q.view(), kv.view(), kv.view(), m, s)
        };
        assert!(matches!(naive(&x, &wrong_len, &mask, None), Err(maskattn::Error::Shape(_))));
        assert!(matches!(naive(&x, &wrong_heads, &mask, None), Err(maskattn::Error::Shape(_))));
        assert!(matches!(naive(&x, &x, &Mask::causal(10, 12).unwrap(), None), Err(maskattn::Error::Shape(_))));
        for bad_scale in [f32::INFINITY, f32::NAN, 0.0, -0.1] {
            assert!(naive(&x, &x, &mask, Some(bad_scale)).is_err(), "scale {bad_scale}");
        }
        // 40000 x 40000 f32 scores are 6.4 GB: refused before any allocation.
        let big = Mask::full(40_000, 40_000).unwrap();
        let long = Array4::<bf16>::zeros((1, 40_000, 1, 8));
        assert!(matches!(naive(&long, &long, &big, None), Err(maskattn::Error::Unsupported(_))));
    });
}
