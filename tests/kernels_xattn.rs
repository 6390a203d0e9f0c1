//! Tests of the XAttention kernels (csrc/xattn.cu) on every backend (the CPU backend
//! always, the GPU when there is one) against the f64 CPU reference
//! `maskattn::xattention`: block scores within a tolerance set by fp32 arithmetic,
//! the selection kernel bit-for-bit on identical scores, and the end-to-end selection
//! equal to the reference's except at near-ties (counted, printed, bounded). Random
//! cases, fixed seeds: scores and selection 60 on the CPU backend, 200 on a GPU; the
//! selection kernel alone 100 on the CPU backend, 300 on a GPU;
//! MASKATTN_GPU_FUZZ_CASES sets both. The ptxas report (no GPU needed) and the
//! device-pointer API (`Gpu::xattn_select`, `Gpu::xattn_block_scores`) are tested
//! where the `cuda` feature is on; the latter only with a GPU.
#![cfg(any(feature = "cuda", feature = "cpu"))]

mod common;

use common::{random_array, xattn_structured_inputs};
use half::{bf16, f16};
use maskattn::xattention::{block_scores, select_blocks, BlockSelection, Tau, XAttnConfig, BLOCK};
use maskattn::{AttnShape, Error};
use maskattn::{KernelElement, Kernels};
use ndarray::{s, Array4};
use proptest::prelude::*;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Every XAttention kernel is in the fatbin for both SASS targets, without spills.
/// Needs no GPU (the report is ptxas's, captured by build.rs), but the `cuda` feature.
#[cfg(feature = "cuda")]
#[test]
fn xattn_kernels_are_built_for_sm80_and_sm90a_without_spills() {
    let all = maskattn::cuda::kernel_resources();
    let mut names = vec!["maskattn_xattn_select".to_string()];
    for dtype in ["bf16", "f16"] {
        for d in [64, 96, 128, 256] {
            for st in [8, 16] {
                names.push(format!("maskattn_xattn_scores_{dtype}_d{d}_s{st}"));
            }
        }
    }
    for name in &names {
        for arch in ["sm_80", "sm_90a"] {
            let r = all.iter().find(|r| r.name == *name && r.arch == arch);
            let r = r.unwrap_or_else(|| panic!("{name} missing for {arch}"));
            println!("{name:40} {arch:7} {:3} regs  spills {}/{} B", r.registers, r.spill_stores, r.spill_loads);
            assert!(r.spill_stores == 0 && r.spill_loads == 0, "{name} spills on {arch}: {r:?}");
        }
    }
}

/// Rounds to T; returns the rounded values as f64 and as T.
/// The yardstick of the scores' error: the reference's definition computed the
/// plain fp32 way (logits accumulated in f32 over the S*D products in order and
/// scaled in f32, softmax in f32, probabilities summed in f32), on the same rounded
/// inputs. The kernel also works in fp32 (tensor-core f32 accumulation, a
/// log-sum-exp per key block in base 2), so its error should be of the same order.
fn plain_f32_scores(q: &Array4<f64>, k: &Array4<f64>, stride: usize, causal: bool) -> Array4<f64> {
    let (b_n, lq, hq, d) = q.dim();
    let (_, lk, hkv, _) = k.dim();
    let (nqs, nks) = (lq.div_ceil(stride), lk.div_ceil(stride));
    let r = BLOCK / stride;
    let scale = (1.0 / (stride as f64 * (d as f64).sqrt())) as f32;
    let mut out = Array4::<f32>::zeros((b_n, hq, lq.div_ceil(BLOCK), lk.div_ceil(BLOCK)));
    let (q32, k32) = (q.mapv(|x| x as f32), k.mapv(|x| x as f32));
    let mut logits = Vec::with_capacity(nks);
    for b in 0..b_n {
        for h in 0..hq {
            let hk = h / (hq / hkv);
            for i in 0..nqs {
                let Some(last) = last_visible_column(stride, lq, lk, causal, i) else { continue };
                logits.clear();
                for j in 0..=last {
                    let mut a = 0.0f32;
                    for t in 0..stride {
                        let (qp, kp) = (i * stride + stride - 1 - t, j * stride + t);
                        if qp < lq && kp < lk {
                            for c in 0..d {
                                a += q32[[b, qp, h, c]] * k32[[b, kp, hk, c]];
                            }
                        }
                    }
                    logits.push(a * scale);
                }
                let m = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let z: f32 = logits.iter().map(|&x| (x - m).exp()).sum();
                for (j, &x) in logits.iter().enumerate() {
                    out[[b, h, i / r, j / r]] += (x - m).exp() / z;
                }
            }
        }
    }
    out.mapv(f64::from)
}

/// Definition 3 of the reference, written out for the yardstick.
fn last_visible_column(stride: usize, lq: usize, lk: usize, causal: bool, i: usize) -> Option<usize> {
    let nks = lk.div_ceil(stride);
    if !causal {
        return Some(nks - 1);
    }
    let key = (i * stride + stride - 1).min(lq - 1) as i64 + lk as i64 - lq as i64;
    (key >= 0).then(|| (key as usize / stride).min(nks - 1))
}

/// Rows where the GPU selection differs from the reference's, and whether each
/// difference is a near-tie. `ok_within(eps)`: the GPU's row `g` would be a valid
/// selection for the reference scores perturbed by at most `eps` per block:
/// forced blocks in, only visible blocks, no unselected candidate scoring more
/// than `2 eps` above a selected one (ranking ambiguity), kept mass within
/// `2 V eps` of the threshold from above, and dropping the smallest selected
/// candidate would fall short of it within the same slack (minimality).
fn near_tie_ok(scores: &[f64], g: &[u8], v: usize, diag: usize, tau: f64, eps: f64) -> bool {
    if g[0] == 0 || g[diag] == 0 || g[v..].iter().any(|&x| x != 0) {
        return false;
    }
    let mass: f64 = scores[..v].iter().sum();
    let required = tau * mass;
    let slack = 2.0 * v as f64 * eps;
    let kept: f64 = (0..v).filter(|&j| g[j] != 0).map(|j| scores[j]).sum();
    let cand = |sel: bool| (1..v).filter(move |&j| j != diag && (g[j] != 0) == sel).map(|j| scores[j]);
    let min_sel = cand(true).fold(f64::INFINITY, f64::min);
    let max_unsel = cand(false).fold(f64::NEG_INFINITY, f64::max);
    let ranked = max_unsel <= min_sel + 2.0 * eps;
    let enough = kept >= required - slack || max_unsel == f64::NEG_INFINITY;
    let minimal = min_sel == f64::INFINITY || kept - min_sel < required + slack;
    ranked && enough && minimal
}

/// Visible key blocks of query block qb (definition 6), from the selection type.
fn visible(sel: &BlockSelection, qb: usize) -> usize {
    (0..sel.num_k_blocks()).take_while(|&kb| sel.is_block_visible(qb, kb)).count()
}

#[derive(Debug, Clone)]
struct Case {
    batch: usize,
    heads: (usize, usize),
    head_dim: usize,
    len_q: usize,
    len_k: usize,
    stride: usize,
    causal: bool,
    tau: Tau,
    bf16: bool,
    structured: bool,
    seed: u64,
}

impl Case {
    fn config(&self) -> XAttnConfig {
        XAttnConfig { stride: self.stride, tau: self.tau.clone(), causal: self.causal }
    }
    fn shape(&self) -> AttnShape {
        AttnShape {
            batch: self.batch,
            len_q: self.len_q,
            len_k: self.len_k,
            heads_q: self.heads.0,
            heads_kv: self.heads.1,
            head_dim: self.head_dim,
        }
    }
}

/// Lengths of every kind: tiny, multiples of S but not of 128, multiples of 128,
/// and arbitrary ones.
fn arb_len() -> impl Strategy<Value = usize> {
    prop_oneof![1usize..40, (1usize..70).prop_map(|n| n * 8), (1usize..5).prop_map(|n| n * 128), 1usize..640]
}

fn arb_case() -> impl Strategy<Value = Case> {
    let heads = prop::sample::select(vec![(1usize, 1usize), (2, 1), (4, 2), (3, 1), (2, 2), (8, 2)]);
    let tau = prop_oneof![
        (0.05f64..=1.0).prop_map(Tau::Scalar),
        Just(Tau::Scalar(0.9)),
        prop::collection::vec(0.05f64..=1.0, 8).prop_map(Tau::PerHead),
    ];
    (
        (1usize..3, heads, prop::sample::select(vec![64usize, 96, 128, 256])),
        (arb_len(), arb_len(), prop::sample::select(vec![8usize, 16]), any::<bool>()),
        (tau, any::<bool>(), prop::bool::weighted(0.3), any::<u64>()),
    )
        .prop_map(|((batch, heads, head_dim), (len_q, len_k, stride, causal), (tau, bf16, structured, seed))| {
            let tau = match tau {
                Tau::PerHead(v) => Tau::PerHead(v[..heads.0].to_vec()),
                t => t,
            };
            // Keep the CPU yardstick affordable.
            let batch = if len_q * len_k * heads.0 > 600_000 { 1 } else { batch };
            Case { batch, heads, head_dim, len_q, len_k, stride, causal, tau, bf16, structured, seed }
        })
}

/// Totals over a run: block rows compared, rows that differ at a near-tie.
#[derive(Default)]
struct Tally {
    rows: AtomicUsize,
    near_ties: AtomicUsize,
}

/// Checks one case; returns the density of the kernels' selection.
fn check<K: Kernels, T: KernelElement>(kernels: &K, c: &Case, tally: &Tally) -> Result<f64, TestCaseError> {
    let (hq, hkv) = c.heads;
    let (q64, q, k64, k) = if c.structured {
        let (q, k) = xattn_structured_inputs::<T>(&c.shape(), c.seed);
        (q.mapv(T::to_f64), q, k.mapv(T::to_f64), k)
    } else {
        // Amplitude 2: peaked rows for some heads, flat ones for others.
        let (q64, q) = common::rounded::<T>(random_array((c.batch, c.len_q, hq, c.head_dim), c.seed) * 2.0);
        let (k64, k) = common::rounded::<T>(random_array((c.batch, c.len_k, hkv, c.head_dim), c.seed ^ 1) * 2.0);
        (q64, q, k64, k)
    };
    let cfg = c.config();
    let want = block_scores(q64.view(), k64.view(), &cfg).unwrap();
    let plain = plain_f32_scores(&q64, &k64, c.stride, c.causal);
    let (got, got_sel) = kernels.xattn_select_blocks(q.view(), k.view(), &cfg).unwrap();
    prop_assert_eq!(got.shape(), want.shape());
    let got = got.mapv(f64::from);
    let nqb = want.shape()[2];
    let r = (BLOCK / c.stride) as f64;

    // Scores: within 4x the plain fp32 error, plus a floor of a few f32 ulps of the
    // largest possible score R (for cases where the plain error happens to be ~0).
    let err = got.iter().zip(&want).map(|(g, w)| (g - w).abs()).fold(0.0, f64::max);
    let plain_err = plain.iter().zip(&want).map(|(g, w)| (g - w).abs()).fold(0.0, f64::max);
    let tol = 4.0 * plain_err + 8.0 * r * f32::EPSILON as f64;
    prop_assert!(got.iter().all(|x| x.is_finite() && *x >= 0.0), "non-finite or negative score");
    prop_assert!(err <= tol, "score error {:e} > {:e} (plain fp32 error {:e})", err, tol, plain_err);
    for b in 0..c.batch {
        for h in 0..hq {
            for qb in 0..nqb {
                let v = visible(&got_sel, qb);
                // Invisible blocks are exactly 0; a block row sums to its valid rows.
                prop_assert!(got.slice(s![b, h, qb, v..]).iter().all(|&x| x == 0.0), "invisible block scored");
                let (row_sum, want_sum) = (got.slice(s![b, h, qb, ..]).sum(), want.slice(s![b, h, qb, ..]).sum());
                prop_assert!(
                    (row_sum - want_sum).abs() <= 1e-5 * r.max(want_sum),
                    "row sum {} vs {}",
                    row_sum,
                    want_sum
                );
            }
        }
    }

    // The selection kernel on the kernels' own scores is the reference's selection of
    // those scores, exactly (f64 sums in the reference's order).
    let ref_of_got = select_blocks(got.view(), &cfg, c.len_q, c.len_k).unwrap();
    prop_assert!(got_sel == ref_of_got, "selection differs from the reference's on the same scores");

    // End to end: the reference selection of the reference scores, except near-ties.
    let want_sel = select_blocks(want.view(), &cfg, c.len_q, c.len_k).unwrap();
    let mut near = 0;
    for b in 0..c.batch {
        for h in 0..hq {
            for qb in 0..nqb {
                let (g, w) = (got_sel.row(b, h, qb), want_sel.row(b, h, qb));
                if g == w {
                    continue;
                }
                let v = visible(&got_sel, qb);
                prop_assert!(v > 0, "a row without visible blocks differs");
                let diag = if c.causal { v - 1 } else { 0 };
                let row = want.slice(s![b, h, qb, ..]).to_vec();
                prop_assert!(
                    near_tie_ok(&row, g, v, diag, cfg.tau.for_head(h), tol),
                    "row (b {}, h {}, qb {}) selects {:?}, the reference {:?}, scores {:?}",
                    b,
                    h,
                    qb,
                    g,
                    w,
                    row
                );
                near += 1;
            }
        }
    }
    tally.rows.fetch_add(c.batch * hq * nqb, Ordering::Relaxed);
    tally.near_ties.fetch_add(near, Ordering::Relaxed);
    Ok(got_sel.density())
}

fn report(name: &str, tally: &Tally) {
    let (rows, near) = (tally.rows.load(Ordering::Relaxed), tally.near_ties.load(Ordering::Relaxed));
    println!("{name}: {rows} block rows, {near} differ from the reference at a near-tie");
    assert!(near <= 3 + rows / 100, "{near} near-tie rows of {rows}: more than 1% (+3)");
}

#[test]
fn scores_and_selection_match_the_reference() {
    each_backend!(|backend, kernels| {
        let tally = Tally::default();
        proptest!(common::fuzz_config(backend, 200, 60, 0x7861_7474), |(c in arb_case())| {
            if c.bf16 { check::<_, bf16>(kernels, &c, &tally)?; } else { check::<_, f16>(kernels, &c, &tally)?; }
        });
        report(&format!("{backend}: random cases"), &tally);
    });
}

/// Longer sequences with the realistic structure (sinks, local band), both
/// strides, causal with Lq < Lk (KV cache) and not: scores, selection, density.
#[test]
fn structured_inputs_at_a_few_thousand_tokens() {
    each_backend!(|backend, kernels| {
        let tally = Tally::default();
        let cases = [(4096, 4096, 16, true), (3001, 3001, 8, true), (1000, 4500, 16, true), (2500, 2500, 16, false)];
        for (i, (len_q, len_k, stride, causal)) in cases.into_iter().enumerate() {
            let c = Case {
                batch: 1,
                heads: (4, 2),
                head_dim: 128,
                len_q,
                len_k,
                stride,
                causal,
                tau: Tau::Scalar(0.9),
                bf16: true,
                structured: true,
                seed: i as u64,
            };
            let density = check::<_, bf16>(kernels, &c, &tally).unwrap_or_else(|e| panic!("{c:?}: {e}"));
            println!("{backend}: {len_q} x {len_k}, S = {stride}, causal {causal}: density {density:.3}");
        }
        report(&format!("{backend}: structured cases"), &tally);
    });
}

/// Scores with many exact ties (quantised values) and garbage in invisible blocks.
fn arb_scores() -> impl Strategy<Value = (Array4<f32>, XAttnConfig, usize, usize)> {
    (1usize..3, 1usize..4, 1usize..3000, 1usize..3000, any::<bool>(), any::<bool>(), any::<u64>()).prop_flat_map(
        |(batch, heads, len_q, len_k, causal, quantised, seed)| {
            let tau = prop_oneof![
                (0.01f64..=1.0).prop_map(Tau::Scalar),
                prop::collection::vec(0.01f64..=1.0, heads).prop_map(Tau::PerHead),
            ];
            tau.prop_map(move |tau| {
                let (nqb, nkb) = (len_q.div_ceil(BLOCK), len_k.div_ceil(BLOCK));
                let x = random_array((batch, heads, nqb, nkb), seed);
                let scores = x.mapv(|u| {
                    let u = (u + 1.0) / 2.0; // [0, 1)
                    if quantised {
                        (u * 6.0).floor() as f32 / 4.0
                    } else {
                        (-8.0 * u).exp() as f32 * 3.0
                    }
                });
                (scores, XAttnConfig { stride: 16, tau, causal }, len_q, len_k)
            })
        },
    )
}

/// The selection kernel alone: on the same f32 scores it is the reference's
/// selection bit for bit (the kernel sums in f64 in the reference's order; an f32
/// implementation would differ where kept and tau * mass round differently).
#[test]
fn selection_kernel_equals_the_reference_on_the_same_scores() {
    each_backend!(|backend, kernels| {
        proptest!(common::fuzz_config(backend, 300, 100, 0x7861_7474), |((scores, cfg, len_q, len_k) in arb_scores())| {
            let want = select_blocks(scores.mapv(f64::from).view(), &cfg, len_q, len_k).unwrap();
            let got = kernels.xattn_select_scores(scores.view(), &cfg, len_q, len_k).unwrap();
            prop_assert!(got == want, "{:?}, Lq {}, Lk {}", cfg, len_q, len_k);
        });
    });
}

/// Full-size rows: 1024 key blocks (128K tokens, the largest case of DESIGN.md) and
/// 3001 (not a power of two; Lq < Lk), with exact ties.
#[test]
fn selection_kernel_on_long_rows() {
    each_backend!(|backend, kernels| {
        for (len_q, len_k, causal) in
            [(131072usize, 131072usize, true), (131072, 131072, false), (5000, 3001 * 128 - 5, true)]
        {
            let (nqb, nkb) = (len_q.div_ceil(BLOCK), len_k.div_ceil(BLOCK));
            let scores =
                random_array((1, 2, nqb, nkb), len_k as u64).mapv(|u| ((u + 1.0) * 50.0).floor() as f32 / 64.0);
            for tau in [0.3, 0.9, 1.0] {
                let cfg = XAttnConfig { stride: 8, tau: Tau::Scalar(tau), causal };
                let want = select_blocks(scores.mapv(f64::from).view(), &cfg, len_q, len_k).unwrap();
                let got = kernels.xattn_select_scores(scores.view(), &cfg, len_q, len_k).unwrap();
                assert!(got == want, "{backend}: Lq {len_q}, Lk {len_k}, causal {causal}, tau {tau}");
            }
        }
    });
}

/// A few small cases for compute-sanitizer (memcheck, racecheck, synccheck).
#[test]
fn sanitizer_subset() {
    each_backend!(|backend, kernels| {
        let tally = Tally::default();
        let shapes =
            [(1, 1, 8, true), (200, 130, 8, true), (130, 200, 16, true), (77, 300, 16, false), (300, 77, 8, true)];
        for (i, (len_q, len_k, stride, causal)) in shapes.into_iter().enumerate() {
            for (head_dim, bf16) in [(64, true), (96, false), (128, true), (256, false), (256, true)] {
                let c = Case {
                    batch: 2,
                    heads: (2, 1),
                    head_dim,
                    len_q,
                    len_k,
                    stride,
                    causal,
                    tau: Tau::PerHead(vec![0.5, 0.95]),
                    bf16,
                    structured: i % 2 == 0,
                    seed: i as u64,
                };
                let r = if bf16 { check::<_, bf16>(kernels, &c, &tally) } else { check::<_, f16>(kernels, &c, &tally) };
                r.unwrap_or_else(|e| panic!("{backend}: {c:?}: {e}"));
            }
        }
    });
}

#[test]
fn bad_inputs_are_errors_before_any_launch() {
    each_backend!(|backend, kernels| {
        let cfg = XAttnConfig { stride: 16, tau: Tau::Scalar(0.9), causal: true };
        let x = Array4::<bf16>::zeros((1, 300, 2, 64));
        let bad_stride = XAttnConfig { stride: 4, ..cfg.clone() };
        let bad_tau = XAttnConfig { tau: Tau::Scalar(0.0), ..cfg.clone() };
        let short_tau = XAttnConfig { tau: Tau::PerHead(vec![0.9]), ..cfg.clone() };
        let invalid = |r: Result<_, Error>| matches!(r, Err(Error::InvalidParameter { .. }));
        assert!(invalid(kernels.xattn_select_blocks(x.view(), x.view(), &bad_stride)));
        assert!(invalid(kernels.xattn_select_blocks(x.view(), x.view(), &bad_tau)));
        assert!(invalid(kernels.xattn_select_blocks(x.view(), x.view(), &short_tau)));
        // Head dims without a scoring kernel: a typed error naming the supported ones.
        for d in [72, 80, 192, 512] {
            let x = Array4::<bf16>::zeros((1, 300, 2, d));
            match kernels.xattn_select_blocks(x.view(), x.view(), &cfg) {
                Err(Error::Unsupported(msg)) => assert!(msg.contains("[64, 96, 128, 256]"), "D = {d}: {msg}"),
                other => panic!("{backend}: D = {d}: {other:?}"),
            }
        }
        let three_heads = Array4::<bf16>::zeros((1, 300, 3, 64));
        assert!(matches!(kernels.xattn_select_blocks(x.view(), three_heads.view(), &cfg), Err(Error::Shape(_))));
        let other_batch = Array4::<bf16>::zeros((2, 300, 2, 64));
        assert!(matches!(kernels.xattn_select_blocks(x.view(), other_batch.view(), &cfg), Err(Error::Shape(_))));
        // Host scores of the wrong size for the lengths (3 x 3 blocks per head; Lk = 500
        // has 4 key blocks), and too many key blocks.
        let scores = Array4::<f32>::zeros((1, 2, 3, 3));
        assert!(matches!(kernels.xattn_select_scores(scores.view(), &cfg, 300, 500), Err(Error::Shape(_))));
        assert!(kernels.xattn_select_scores(scores.view(), &cfg, 300, 300).is_ok());
        assert!(kernels.xattn_select_scores(scores.view(), &cfg, 300, 384).is_ok());
        let huge = Array4::<f32>::zeros((1, 1, 1, 8193));
        assert!(matches!(kernels.xattn_select_scores(huge.view(), &cfg, 100, 8193 * 128), Err(Error::Unsupported(_))));
        let f16_x = Array4::<f16>::zeros((1, 300, 2, 64));
        assert!(kernels.xattn_select_blocks(f16_x.view(), f16_x.view(), &cfg).is_ok(), "{backend}");
    });
}

/// The whole XAttention pipeline (scores, selection, block-sparse attention) against
/// the f64 sparse reference run with the selection the kernels made (selection
/// equality itself is tested above), within 2x the plain bf16 error.
#[test]
fn xattention_pipeline_end_to_end() {
    each_backend!(|backend, kernels| {
        for (len, hq, hkv, causal) in [(1000usize, 4usize, 2usize, true), (2049, 2, 1, true), (700, 2, 2, false)] {
            let sh = AttnShape { batch: 1, len_q: len, len_k: len, heads_q: hq, heads_kv: hkv, head_dim: 128 };
            let (q, k) = xattn_structured_inputs::<bf16>(&sh, len as u64);
            let v = random_array((1, len, hkv, 128), 5).mapv(bf16::from_f64);
            let mask = if causal {
                maskattn::Mask::causal(len, len).unwrap()
            } else {
                maskattn::Mask::full(len, len).unwrap()
            };
            let cfg = XAttnConfig { stride: 16, tau: Tau::Scalar(0.9), causal };
            let got = kernels.xattention_host(q.view(), k.view(), v.view(), &cfg, &mask).unwrap();
            let f = |a: &Array4<bf16>| a.mapv(f64::from);
            let (q64, k64, v64) = (f(&q), f(&k), f(&v));
            let want =
                maskattn::xattention::sparse_attention(q64.view(), k64.view(), v64.view(), &mask, &got.selection, None)
                    .unwrap();
            let sel = &got.selection;
            let (plain, _) =
                common::plain_attention_where::<bf16>(&q64, &k64, &v64, 1.0 / 128f64.sqrt(), |b, h, i, j| {
                    sel.visible(&mask, b, h, i, j)
                });
            let err = common::max_abs_diff(&got.out.mapv(f64::from), &want.out);
            let plain_err = common::max_abs_diff(&plain, &want.out);
            eprintln!(
                "{backend}: L={len} causal={causal}: density {:.3}, error {err:e} (plain {plain_err:e})",
                sel.density()
            );
            assert!(err <= 2.0 * plain_err, "{backend}: L={len}: error {err:e} > 2 x plain {plain_err:e}");
        }
    });
}

/// The copy of the structured inputs in tests/common is the crate's.
#[cfg(feature = "cuda")]
#[test]
fn structured_inputs_are_the_crates() {
    for sh in [
        AttnShape { batch: 2, len_q: 100, len_k: 300, heads_q: 4, heads_kv: 2, head_dim: 64 },
        AttnShape { batch: 1, len_q: 700, len_k: 500, heads_q: 3, heads_kv: 1, head_dim: 128 },
    ] {
        for seed in [0, 7, u64::MAX] {
            let (q, k) = xattn_structured_inputs::<f64>(&sh, seed);
            let (cq, ck) = maskattn::cuda::xattn_structured_inputs::<f64>(&sh, seed);
            assert!(q == cq && k == ck, "{sh:?}, seed {seed}");
        }
    }
}

/// The device-pointer API of the XAttention kernels, on a GPU only: the CPU backend
/// has no such API.
#[cfg(feature = "cuda")]
#[test]
fn device_api_bad_inputs_are_errors_before_any_launch() {
    let Some(gpu) = common::shared_gpu() else {
        eprintln!("skipping: the device-pointer API needs a GPU");
        return;
    };
    let cfg = XAttnConfig { stride: 16, tau: Tau::Scalar(0.9), causal: true };
    // Scores of the wrong size for the lengths (3 x 3 blocks per head; Lk = 500 has 4
    // key blocks), and too many key blocks.
    let scores = gpu.zeros::<f32>(2 * 3 * 3).unwrap();
    assert!(matches!(gpu.xattn_select(&scores, 1, 2, &cfg, 300, 500), Err(Error::Shape(_))));
    assert!(gpu.xattn_select(&scores, 1, 2, &cfg, 300, 300).is_ok());
    assert!(gpu.xattn_select(&scores, 1, 2, &cfg, 300, 384).is_ok());
    let huge = gpu.zeros::<f32>(8193).unwrap();
    assert!(matches!(gpu.xattn_select(&huge, 1, 1, &cfg, 100, 8193 * 128), Err(Error::Unsupported(_))));
    // A misaligned view of Q (offset by one element).
    let buf = gpu.upload(&vec![bf16::ZERO; 300 * 2 * 64 + 8]).unwrap();
    let dims = [1, 300, 2, 64];
    let q = maskattn::cuda::DeviceTensor { data: buf.slice(1..), layout: maskattn::cuda::Layout4::contiguous(dims) };
    let k = maskattn::cuda::DeviceTensor { data: buf.slice(..), layout: maskattn::cuda::Layout4::contiguous(dims) };
    assert!(matches!(gpu.xattn_block_scores(&q, &k, &cfg), Err(Error::Shape(_))));
}
