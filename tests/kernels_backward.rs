//! Fuzz of the backward kernels on every backend (the CPU backend always, the GPU when
//! there is one), through [`Kernels::attention_grad`] (the kernels' forward, then the
//! backward): random batch, heads (GQA), lengths that are not tile multiples, head
//! dims, dtypes, both dQ modes and masks of every family (including video masks of 576
//! and 729 tokens per frame: up to two frames on a GPU, one on the CPU backend),
//! compared with the f64 reference backward on the same rounded inputs. Each of dQ, dK, dV must stay within 2x the error of a plain
//! same-dtype backward (`plain_backward`, what PyTorch's autograd of the math attention
//! computes in that dtype), flash-attention's own criterion. The deterministic mode must
//! also be bit-identical between two runs (on the CPU backend the second run has
//! another schedule seed: other warp interleavings and CTA orders). 100 cases on the
//! CPU backend, 200 on a GPU, fixed seed; MASKATTN_GPU_FUZZ_CASES for more. Half the
//! cases force the compact tile configuration (on the CPU backend under the 99 KB
//! budget of sm_86/89/120), as do three of the sanitizer cases.
//! The device-pointer API (`Gpu::attention_backward` with given O and LSE: the
//! reference forward's, strided layouts, its own input checks) is tested on a GPU only.
#![cfg(any(feature = "cuda", feature = "cpu"))]

mod common;

use common::{max_abs_diff, random_array};
use half::{bf16, f16};
use maskattn::tiles::TileConfig;
use maskattn::{reference, Element, Mask, VideoLayout};
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
    deterministic: bool,
    /// The compact tile configuration (the one 99 KB GPUs run at D = 96 and 128),
    /// forced, under a 99 KB budget on the CPU backend.
    compact: bool,
    seed: u64,
}

/// The fuzz cases on backend `b`. On the CPU backend (slow) the largest shapes are
/// smaller, to keep the suite within CI's time budget there: video masks have one
/// frame (at most ~860 tokens), not up to two, and a case has at most 400K scores
/// (batch x heads x Lq x Lk): one head on masks of over 200K scores, else batch 1 and
/// at most 2 query heads (GQA with more heads still runs on the smaller masks).
fn arb_case(b: &str) -> BoxedStrategy<Case> {
    let cpu = b != "gpu";
    let masks = if cpu { common::arb_kernel_mask(1).boxed() } else { common::arb_gpu_mask().boxed() };
    let heads = prop::sample::select(vec![(1usize, 1usize), (2, 1), (4, 2), (3, 1), (4, 4), (8, 1)]);
    (
        masks,
        1usize..3,
        heads,
        common::arb_head_dim(),
        any::<bool>(),
        prop::option::weighted(0.2, 0.05f64..0.5),
        any::<bool>(),
        any::<bool>(),
        any::<u64>(),
    )
        .prop_map(move |(mask, batch, heads, head_dim, bf16, scale, deterministic, compact, seed)| {
            // Keep the f64 reference and the plain backward affordable on long masks.
            let scores = mask.len_q() * mask.len_k();
            let (batch, heads) = if scores > 200_000 { (1, (heads.0.min(2), 1)) } else { (batch, heads) };
            let (batch, heads) = if !cpu || batch * heads.0 * scores <= 400_000 {
                (batch, heads)
            } else if scores > 200_000 {
                (1, (1, 1))
            } else {
                (1, (heads.0.min(2), 1))
            };
            // Class 256 has one configuration, for sm_90's budget only: not the 99 KB compact handle.
            let compact = compact && head_dim <= 128;
            Case { mask, batch, heads, head_dim, bf16, scale, deterministic, compact, seed }
        })
        .boxed()
}

/// A plain same-dtype backward, the yardstick of kernel error: what PyTorch's autograd
/// of the math attention (`softmax(q k^T * scale + mask) v`) computes in dtype T, with
/// f32 accumulation inside each matrix product and a rounding to T after every
/// operation that produces a tensor:
/// forward as `common::plain_attention` (S = r(r(q.k) * r(scale)), P = r(softmax_f32(S)));
/// `dV = r(P^T dO)`, `dP = r(dO V^T)`, softmax backward in f32 on the T values
/// `dS = r(P (dP - sum_j P dP))`, the scale's backward `dS' = r(dS * r(scale))`,
/// `dQ = r(dS' K)`, `dK = r(dS'^T Q)`; with GQA each query head's dK, dV is rounded and
/// the group's sum (the backward of the head broadcast) is rounded again.
/// Rows with no visible key contribute nothing (PyTorch would give NaN there).
fn plain_backward<T: Element>(
    q: &Array4<f64>,
    k: &Array4<f64>,
    v: &Array4<f64>,
    d_out: &Array4<f64>,
    mask: &Mask,
    scale: f64,
) -> (Array4<f64>, Array4<f64>, Array4<f64>) {
    let r = |x: f32| T::from_f64(x as f64).to_f64() as f32;
    let (b, lq, hq, d) = q.dim();
    let (lk, hkv) = (k.dim().1, k.dim().2);
    let group = hq / hkv;
    let rs = r(scale as f32);
    // Every sum below runs over the same terms in the same order as the formulas
    // above, from the neutral element of f32's `Sum`; the flat row-major copies only
    // spare the test the cost of 4-d indexing in its innermost loops.
    let zero: f32 = std::iter::empty::<f32>().sum();
    let dot = |x: &[f32], y: &[f32]| -> f32 { x.iter().zip(y).map(|(a, b)| a * b).sum() };
    let flat = |a: &Array4<f64>| a.iter().map(|&x| x as f32).collect::<Vec<f32>>();
    let (q, k, v, d_out) = (flat(q), flat(k), flat(v), flat(d_out));
    let q_row = |bi: usize, i: usize, h: usize| ((bi * lq + i) * hq + h) * d;
    let kv_row = |bi: usize, j: usize, hk: usize| ((bi * lk + j) * hkv + hk) * d;
    let mut dq = Array4::<f64>::zeros((b, lq, hq, d));
    let mut dk_sum = Array4::<f32>::zeros((b, lk, hkv, d));
    let mut dv_sum = Array4::<f32>::zeros((b, lk, hkv, d));
    let mut acc = vec![zero; d];
    for bi in 0..b {
        for h in 0..hq {
            let hk = h / group;
            let mut dk_h = vec![0f32; lk * d];
            let mut dv_h = vec![0f32; lk * d];
            for (i, &[s0, e0, s1, e1]) in mask.intervals().iter().enumerate() {
                let keys: Vec<usize> = (s0..e0).chain(s1..e1).map(|j| j as usize).collect();
                if keys.is_empty() {
                    continue;
                }
                let qi = &q[q_row(bi, i, h)..][..d];
                let doi = &d_out[q_row(bi, i, h)..][..d];
                let s: Vec<f32> = keys.iter().map(|&j| r(r(dot(qi, &k[kv_row(bi, j, hk)..][..d])) * rs)).collect();
                let m = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let e: Vec<f32> = s.iter().map(|x| (x - m).exp()).collect();
                let sum: f32 = e.iter().sum();
                let p: Vec<f32> = e.iter().map(|x| r(x / sum)).collect();
                let dp: Vec<f32> = keys.iter().map(|&j| r(dot(doi, &v[kv_row(bi, j, hk)..][..d]))).collect();
                let pdp: f32 = p.iter().zip(&dp).map(|(a, b)| a * b).sum();
                let ds: Vec<f32> = p.iter().zip(&dp).map(|(&pj, &dpj)| r(r(pj * (dpj - pdp)) * rs)).collect();
                // dQ[c] = sum over the keys, in order, of dS'_j K[j][c].
                acc.fill(zero);
                for (&j, &x) in keys.iter().zip(&ds) {
                    for (a, &kc) in acc.iter_mut().zip(&k[kv_row(bi, j, hk)..][..d]) {
                        *a += x * kc;
                    }
                }
                for (c, &a) in acc.iter().enumerate() {
                    dq[[bi, i, h, c]] = r(a) as f64;
                }
                for ((&j, &pj), &dsj) in keys.iter().zip(&p).zip(&ds) {
                    let (dv_j, dk_j) = (&mut dv_h[j * d..][..d], &mut dk_h[j * d..][..d]);
                    for c in 0..d {
                        dv_j[c] += pj * doi[c];
                        dk_j[c] += dsj * qi[c];
                    }
                }
            }
            for j in 0..lk {
                for c in 0..d {
                    dk_sum[[bi, j, hk, c]] += r(dk_h[j * d + c]);
                    dv_sum[[bi, j, hk, c]] += r(dv_h[j * d + c]);
                }
            }
        }
    }
    (dq, dk_sum.mapv(|x| r(x) as f64), dv_sum.mapv(|x| r(x) as f64))
}

/// The criterion: the kernel's max error within twice the plain backward's, plus a
/// floor of 1e-5 (relative to the gradient's magnitude). The floor covers the cases
/// where the plain backward's roundings happen to be exact, e.g. rows that see a single
/// key, where its `dS = P (dP - P dP)` is exactly 0 while the kernel's
/// `P (dP - dO.O)` keeps f32 noise of ~1e-7 |dP|.
fn within_plain(name: &str, got: &Array4<f64>, plain: &Array4<f64>, want: &Array4<f64>) -> Result<(), TestCaseError> {
    prop_assert!(got.iter().all(|x| x.is_finite()), "{}: non-finite gradient", name);
    let (err, plain_err) = (max_abs_diff(got, want), max_abs_diff(plain, want));
    let floor = 1e-5 * (1.0 + want.iter().fold(0.0f64, |m, x| m.max(x.abs())));
    prop_assert!(err <= 2.0 * plain_err + floor, "{} error {:e} > 2 x plain {:e} + {:e}", name, err, plain_err, floor);
    Ok(())
}

fn bits<T: Element>(a: &Array4<T>) -> Vec<u64> {
    a.iter().map(|x| x.to_f64().to_bits()).collect()
}

/// Other handles of the same backend: the one of the second run of the bit-identity
/// check (on the CPU backend with another schedule seed: warps and CTAs run in another
/// order, so an order-dependent dQ would show; on a GPU the same device), and the one
/// forced to the compact tile configuration (on the CPU backend under the 99 KB
/// budget of sm_86/89/120, which the compact kernels must fit).
trait Handles: Kernels {
    fn rerun(&self) -> &Self;
    fn compact(&self) -> &Self;
    /// The pipelined handle whose forward is the compact handle's: the backward reads
    /// the forward's O and LSE, and the Hopper forward (which does not fit 99 KB) does
    /// not round as the mma.sync one does.
    fn pipelined_like_compact(&self) -> &Self;
}

#[cfg(feature = "cpu")]
impl Handles for maskattn::cpu::CpuBackend {
    fn rerun(&self) -> &Self {
        use std::sync::OnceLock;
        static OTHER: [OnceLock<maskattn::cpu::CpuBackend>; 2] = [OnceLock::new(), OnceLock::new()];
        let options = self.options();
        OTHER[usize::from(options.tile_config == TileConfig::Compact)].get_or_init(|| {
            maskattn::cpu::CpuBackend::with_options(maskattn::cpu::CpuOptions {
                seed: options.seed ^ 0x5eed_5eed,
                ..options
            })
        })
    }

    fn compact(&self) -> &Self {
        static COMPACT: std::sync::OnceLock<maskattn::cpu::CpuBackend> = std::sync::OnceLock::new();
        COMPACT.get_or_init(|| {
            let options = maskattn::cpu::CpuOptions {
                tile_config: TileConfig::Compact,
                max_dynamic_smem: 99 * 1024,
                ..self.options()
            };
            maskattn::cpu::CpuBackend::with_options(options)
        })
    }

    fn pipelined_like_compact(&self) -> &Self {
        static PIPELINED: std::sync::OnceLock<maskattn::cpu::CpuBackend> = std::sync::OnceLock::new();
        PIPELINED.get_or_init(|| {
            let forward_path = maskattn::ForwardPath::Mma;
            maskattn::cpu::CpuBackend::with_options(maskattn::cpu::CpuOptions { forward_path, ..self.options() })
        })
    }
}

#[cfg(feature = "cuda")]
impl Handles for maskattn::cuda::Gpu {
    fn rerun(&self) -> &Self {
        self
    }

    fn compact(&self) -> &Self {
        static COMPACT: std::sync::OnceLock<maskattn::cuda::Gpu> = std::sync::OnceLock::new();
        COMPACT.get_or_init(|| self.clone().with_tile_config(TileConfig::Compact))
    }

    // The same device, budget and forward path.
    fn pipelined_like_compact(&self) -> &Self {
        self
    }
}

fn check<K: Handles, T: KernelElement>(kernels: &K, c: &Case) -> Result<(), TestCaseError> {
    let kernels = if c.compact { kernels.compact() } else { kernels };
    let (hq, hkv) = c.heads;
    let (lq, lk, d) = (c.mask.len_q(), c.mask.len_k(), c.head_dim);
    let (q64, q) = common::rounded::<T>(random_array((c.batch, lq, hq, d), c.seed) * 1.5);
    let (k64, k) = common::rounded::<T>(random_array((c.batch, lk, hkv, d), c.seed ^ 1) * 1.5);
    let (v64, v) = common::rounded::<T>(random_array((c.batch, lk, hkv, d), c.seed ^ 2));
    let (do64, d_out) = common::rounded::<T>(random_array((c.batch, lq, hq, d), c.seed ^ 3));
    let fwd = reference::attention(q64.view(), k64.view(), v64.view(), &c.mask, c.scale).unwrap();
    let want =
        reference::attention_backward(q64.view(), k64.view(), v64.view(), &fwd, do64.view(), &c.mask, c.scale).unwrap();
    let scale = c.scale.unwrap_or(1.0 / (d as f64).sqrt());
    let (plain_dq, plain_dk, plain_dv) = plain_backward::<T>(&q64, &k64, &v64, &do64, &c.mask, scale);
    let scale32 = c.scale.map(|s| s as f32);
    let grad = |kernels: &K| {
        kernels.attention_grad(q.view(), k.view(), v.view(), d_out.view(), &c.mask, scale32, c.deterministic).unwrap()
    };
    let (dq, dk, dv) = grad(kernels);
    let f = |a: &Array4<T>| a.mapv(T::to_f64);
    within_plain("dq", &f(&dq), &plain_dq, &want.dq)?;
    within_plain("dk", &f(&dk), &plain_dk, &want.dk)?;
    within_plain("dv", &f(&dv), &plain_dv, &want.dv)?;
    if c.deterministic {
        let (dq2, dk2, dv2) = grad(kernels.rerun());
        prop_assert!(bits(&dq) == bits(&dq2), "deterministic dq differs between two runs");
        prop_assert!(bits(&dk) == bits(&dk2) && bits(&dv) == bits(&dv2), "dk/dv differ between two runs");
    }
    Ok(())
}

#[test]
fn backward_matches_the_reference_within_twice_the_plain_error() {
    each_backend!(|backend, kernels| {
        let tally = common::HeadDimTally::new(backend);
        proptest!(common::fuzz_config(backend, 200, 100, 0x6277_6421), |(c in arb_case(backend))| {
            tally.record(c.head_dim);
            if c.bf16 { check::<_, bf16>(kernels, &c)? } else { check::<_, f16>(kernels, &c)? }
        });
    });
}

/// A handful of small cases for compute-sanitizer (memcheck, racecheck), both dQ modes:
/// `compute-sanitizer --tool racecheck <kernels_backward binary> --exact sanitizer_subset_bwd`.
#[test]
fn sanitizer_subset_bwd() {
    each_backend!(|backend, kernels| {
        for c in sanitizer_cases() {
            let r = if c.bf16 { check::<_, bf16>(kernels, &c) } else { check::<_, f16>(kernels, &c) };
            r.unwrap_or_else(|e| panic!("{backend}: {c:?}: {e}"));
        }
    });
}

/// The cases of [`sanitizer_subset_bwd`]: the common sanitizer masks in every head-dim
/// class (72 and 200 padded), both dtypes and both dQ modes.
fn sanitizer_cases() -> Vec<Case> {
    let mut cases = Vec::new();
    for (i, mask) in common::sanitizer_masks().into_iter().enumerate() {
        for (head_dim, bf16, deterministic, compact) in [
            (64, true, false, false),
            (72, false, false, false),
            (96, false, true, false),
            (200, true, false, false),
            (256, false, true, false),
            (128, true, true, false),
            (128, false, false, false),
            (96, true, false, true),
            (128, false, true, true),
            (128, true, false, true),
        ] {
            let (batch, heads, scale, seed) = (2, (4, 2), None, i as u64);
            cases.push(Case { mask: mask.clone(), batch, heads, head_dim, bf16, scale, deterministic, compact, seed });
        }
    }
    cases
}

/// The head dims of video models' vision towers and of Gemma, always (the fuzz draws
/// them too, by chance): 72 and 80 in class 96, 256 and 136 (8 real columns in the
/// third of three 64-column output slices) in class 256, in both dQ modes.
#[test]
fn vision_and_gemma_head_dims_match_the_reference() {
    each_backend!(|backend, kernels| {
        let mask = Mask::frame_block_causal(&"text:7,frames:2x72,text:9".parse().unwrap()).unwrap();
        for (head_dim, bf16, deterministic) in
            [(72, true, false), (80, false, true), (256, true, true), (256, false, false), (136, true, false)]
        {
            let (batch, heads, scale, compact, seed) = (1, (2, 1), None, false, head_dim as u64);
            let c = Case { mask: mask.clone(), batch, heads, head_dim, bf16, scale, deterministic, compact, seed };
            let r = if bf16 { check::<_, bf16>(kernels, &c) } else { check::<_, f16>(kernels, &c) };
            r.unwrap_or_else(|e| panic!("{backend}: {c:?}: {e}"));
        }
    });
}

/// The two dQ modes agree to the accumulation order, and dK, dV (which never use
/// atomics) are bit-identical between them.
#[test]
fn atomic_and_deterministic_modes_agree() {
    each_backend!(|backend, kernels| {
        // One frame on the CPU backend (its two runs of 3 frames take over a minute).
        let layout = if backend == "gpu" { "text:33,frames:3x576,text:40" } else { "text:33,frames:1x576,text:40" };
        let mask = Mask::frame_block_causal(&layout.parse().unwrap()).unwrap();
        let (b, hq, hkv, d) = (1, 4, 2, 128);
        let (lq, lk) = (mask.len_q(), mask.len_k());
        let (_, q) = common::rounded::<bf16>(random_array((b, lq, hq, d), 21));
        let (_, k) = common::rounded::<bf16>(random_array((b, lk, hkv, d), 22));
        let (_, v) = common::rounded::<bf16>(random_array((b, lk, hkv, d), 23));
        let (_, d_out) = common::rounded::<bf16>(random_array((b, lq, hq, d), 24));
        let grad = |det| kernels.attention_grad(q.view(), k.view(), v.view(), d_out.view(), &mask, None, det).unwrap();
        let (a, det) = (grad(false), grad(true));
        assert!(bits(&a.1) == bits(&det.1) && bits(&a.2) == bits(&det.2), "{backend}: dk/dv depend on the dQ mode");
        let (x, y) = (a.0.mapv(|e| e.to_f64()), det.0.mapv(|e| e.to_f64()));
        let magnitude = y.iter().fold(0.0f64, |m, e| m.max(e.abs()));
        assert!(max_abs_diff(&x, &y) <= 1e-2 * magnitude, "{backend}: dq modes differ by {:e}", max_abs_diff(&x, &y));
    });
}

/// The compact configuration computes the pipelined one's products in the same order
/// (its 32-row query tiles at D = 128 split each step's k16 steps over queries in two,
/// in order): dK, dV and the deterministic dQ are bit-identical to the pipelined
/// ones, the atomic dQ equal to the order of its additions. Several key tiles, GQA.
#[test]
fn compact_and_pipelined_configurations_agree() {
    each_backend!(|backend, kernels| {
        let mask = Mask::frame_block_causal(&"text:9,frames:2x100,text:13".parse().unwrap()).unwrap();
        let (b, hq, hkv) = (1, 4, 2);
        let (lq, lk) = (mask.len_q(), mask.len_k());
        for d in [96, 128] {
            let (_, q) = common::rounded::<f16>(random_array((b, lq, hq, d), 51));
            let (_, k) = common::rounded::<f16>(random_array((b, lk, hkv, d), 52));
            let (_, v) = common::rounded::<f16>(random_array((b, lk, hkv, d), 53));
            let (_, d_out) = common::rounded::<f16>(random_array((b, lq, hq, d), 54));
            for deterministic in [false, true] {
                let grad = |handle: &_| {
                    Kernels::attention_grad(
                        handle,
                        q.view(),
                        k.view(),
                        v.view(),
                        d_out.view(),
                        &mask,
                        None,
                        deterministic,
                    )
                    .unwrap()
                };
                let (pipelined, compact) = (grad(kernels.pipelined_like_compact()), grad(kernels.compact()));
                let what = format!("{backend} D = {d}, deterministic {deterministic}");
                assert!(bits(&pipelined.1) == bits(&compact.1), "{what}: dk");
                assert!(bits(&pipelined.2) == bits(&compact.2), "{what}: dv");
                if deterministic {
                    assert!(bits(&pipelined.0) == bits(&compact.0), "{what}: dq");
                } else {
                    let (x, y) = (pipelined.0.mapv(|e| e.to_f64()), compact.0.mapv(|e| e.to_f64()));
                    let magnitude = y.iter().fold(0.0f64, |m, e| m.max(e.abs()));
                    assert!(
                        max_abs_diff(&x, &y) <= 1e-2 * magnitude,
                        "{what}: dq differs by {:e}",
                        max_abs_diff(&x, &y)
                    );
                }
            }
        }
    });
}

/// [`Kernels::attention_grad`] (the kernels' forward, then the backward) on a video
/// mask and a causal one, against the f64 reference, within twice the error of the
/// plain forward followed by the plain backward on its rounded output.
#[test]
fn attention_grad_runs_forward_then_backward() {
    each_backend!(|backend, kernels| {
        let layout: VideoLayout = "text:20,frames:2x576,text:31".parse().unwrap();
        for (mask, deterministic) in
            [(Mask::frame_block_causal(&layout).unwrap(), false), (Mask::causal(333, 333).unwrap(), true)]
        {
            let (b, hq, hkv, d) = (1, 2, 1, 96);
            let (lq, lk) = (mask.len_q(), mask.len_k());
            let (q64, q) = common::rounded::<bf16>(random_array((b, lq, hq, d), 41) * 1.5);
            let (k64, k) = common::rounded::<bf16>(random_array((b, lk, hkv, d), 42) * 1.5);
            let (v64, v) = common::rounded::<bf16>(random_array((b, lk, hkv, d), 43));
            let (do64, d_out) = common::rounded::<bf16>(random_array((b, lq, hq, d), 44));
            let fwd = reference::attention(q64.view(), k64.view(), v64.view(), &mask, None).unwrap();
            let want =
                reference::attention_backward(q64.view(), k64.view(), v64.view(), &fwd, do64.view(), &mask, None)
                    .unwrap();
            let (plain_dq, plain_dk, plain_dv) =
                plain_backward::<bf16>(&q64, &k64, &v64, &do64, &mask, 1.0 / (d as f64).sqrt());
            let (dq, dk, dv) =
                kernels.attention_grad(q.view(), k.view(), v.view(), d_out.view(), &mask, None, deterministic).unwrap();
            let f = |a: &Array4<bf16>| a.mapv(|x| x.to_f64());
            let run = || -> Result<(), TestCaseError> {
                within_plain("dq", &f(&dq), &plain_dq, &want.dq)?;
                within_plain("dk", &f(&dk), &plain_dk, &want.dk)?;
                within_plain("dv", &f(&dv), &plain_dv, &want.dv)
            };
            run().unwrap_or_else(|e| panic!("{backend}: {:?}: {e}", mask.kind()));
        }
    });
}

#[test]
fn bad_inputs_are_errors_before_any_launch() {
    each_backend!(|backend, kernels| {
        let mask = Mask::causal(10, 10).unwrap();
        let x = Array4::<bf16>::zeros((1, 10, 2, 64));
        let grad = |q: &Array4<bf16>, kv: &Array4<bf16>, d_out: &Array4<bf16>, m: &Mask, s, det| {
            kernels.attention_grad(q.view(), kv.view(), kv.view(), d_out.view(), m, s, det)
        };
        let ok = grad(&x, &x, &x, &mask, None, false);
        assert!(ok.is_ok(), "{backend}: {ok:?}");
        let wrong_len = Array4::<bf16>::zeros((1, 9, 2, 64));
        let wrong_heads = Array4::<bf16>::zeros((1, 10, 3, 64));
        // Head dims the kernels do not take: not a multiple of 8, above 256.
        for d in [12, 264] {
            let wrong_dim = Array4::<bf16>::zeros((1, 10, 2, d));
            let r = grad(&wrong_dim, &wrong_dim, &wrong_dim, &mask, None, false);
            assert!(matches!(r, Err(maskattn::Error::Unsupported(_))), "{backend}: D = {d}: {r:?}");
        }
        assert!(matches!(grad(&x, &wrong_len, &x, &mask, None, false), Err(maskattn::Error::Shape(_))));
        assert!(matches!(grad(&x, &wrong_heads, &x, &mask, None, true), Err(maskattn::Error::Shape(_))));
        assert!(matches!(grad(&x, &x, &wrong_len, &mask, None, false), Err(maskattn::Error::Shape(_))));
        for bad_scale in [f32::INFINITY, f32::NAN, 0.0, -0.1] {
            assert!(grad(&x, &x, &x, &mask, Some(bad_scale), false).is_err(), "{backend}: scale {bad_scale}");
        }
        let other_mask = Mask::causal(10, 12).unwrap();
        assert!(matches!(grad(&x, &x, &x, &other_mask, None, false), Err(maskattn::Error::Shape(_))));
    });
}

/// The device-pointer API of the backward (`Gpu::attention_backward`, given O and
/// LSE), on a GPU only: the CPU backend has no such API.
#[cfg(feature = "cuda")]
mod device {
    use super::*;
    use maskattn::cuda::{DeviceTensor, DeviceTensorMut, Gpu, Layout4};
    use ndarray::Array3;

    fn gpu() -> Option<&'static Gpu> {
        let gpu = common::shared_gpu();
        if gpu.is_none() {
            eprintln!("skipping: the device-pointer API needs a GPU");
        }
        gpu
    }

    /// The device API on host arrays: uploads, [`Gpu::attention_backward`] with the given
    /// forward results, downloads (dq, dk, dv).
    #[allow(clippy::too_many_arguments, clippy::type_complexity)]
    fn gpu_backward<T: KernelElement>(
        gpu: &Gpu,
        q: &Array4<T>,
        k: &Array4<T>,
        v: &Array4<T>,
        out: &Array4<T>,
        lse: &Array3<f32>,
        d_out: &Array4<T>,
        mask: &Mask,
        scale: Option<f32>,
        deterministic: bool,
    ) -> maskattn::Result<(Array4<T>, Array4<T>, Array4<T>)> {
        let dims = |a: &Array4<T>| <[usize; 4]>::try_from(a.shape()).unwrap();
        let up = |a: &Array4<T>| gpu.upload(a.as_standard_layout().as_slice().unwrap());
        let (qd, kd, vd, od, dod) = (up(q)?, up(k)?, up(v)?, up(out)?, up(d_out)?);
        let lse_d = gpu.upload(lse.as_standard_layout().as_slice().unwrap())?;
        let mut dq = gpu.zeros::<T>(q.len())?;
        let mut dk = gpu.zeros::<T>(k.len())?;
        let mut dv = gpu.zeros::<T>(k.len())?;
        let mask_d = gpu.upload_backward_mask(mask, q.shape()[3])?;
        fn t<T>(s: &cudarc_slice::Slice<T>, d: [usize; 4]) -> DeviceTensor<'_, T> {
            DeviceTensor { data: s.as_view(), layout: Layout4::contiguous(d) }
        }
        gpu.attention_backward(
            &t(&qd, dims(q)),
            &t(&kd, dims(k)),
            &t(&vd, dims(v)),
            &t(&od, dims(q)),
            &lse_d.as_view(),
            &t(&dod, dims(q)),
            &mask_d,
            scale,
            deterministic,
            &mut DeviceTensorMut { data: dq.as_view_mut(), layout: Layout4::contiguous(dims(q)) },
            &mut DeviceTensorMut { data: dk.as_view_mut(), layout: Layout4::contiguous(dims(k)) },
            &mut DeviceTensorMut { data: dv.as_view_mut(), layout: Layout4::contiguous(dims(k)) },
        )?;
        let host =
            |s: &cudarc_slice::Slice<T>, d: [usize; 4]| Array4::from_shape_vec(d, gpu.download(s).unwrap()).unwrap();
        Ok((host(&dq, dims(q)), host(&dk, dims(k)), host(&dv, dims(k))))
    }

    mod cudarc_slice {
        pub type Slice<T> = maskattn::cuda::cudarc::driver::CudaSlice<T>;
    }

    /// The backward alone, given the f64 reference forward's O (rounded to the dtype)
    /// and LSE (rounded to f32), as a caller's own forward would hand them over: the
    /// criterion of the fuzz on the cases of the sanitizer subset.
    #[test]
    fn backward_given_the_reference_forward() {
        let Some(gpu) = gpu() else { return };
        for c in sanitizer_cases() {
            let r =
                if c.bf16 { given_reference_forward::<bf16>(gpu, &c) } else { given_reference_forward::<f16>(gpu, &c) };
            r.unwrap_or_else(|e| panic!("{c:?}: {e}"));
        }
    }

    fn given_reference_forward<T: KernelElement>(gpu: &Gpu, c: &Case) -> Result<(), TestCaseError> {
        let gpu = if c.compact { gpu.compact() } else { gpu };
        let (hq, hkv) = c.heads;
        let (lq, lk, d) = (c.mask.len_q(), c.mask.len_k(), c.head_dim);
        let (q64, q) = common::rounded::<T>(random_array((c.batch, lq, hq, d), c.seed) * 1.5);
        let (k64, k) = common::rounded::<T>(random_array((c.batch, lk, hkv, d), c.seed ^ 1) * 1.5);
        let (v64, v) = common::rounded::<T>(random_array((c.batch, lk, hkv, d), c.seed ^ 2));
        let (do64, d_out) = common::rounded::<T>(random_array((c.batch, lq, hq, d), c.seed ^ 3));
        let fwd = reference::attention(q64.view(), k64.view(), v64.view(), &c.mask, c.scale).unwrap();
        let out = fwd.out.mapv(T::from_f64);
        let lse = fwd.lse.mapv(|x| x as f32);
        let want =
            reference::attention_backward(q64.view(), k64.view(), v64.view(), &fwd, do64.view(), &c.mask, c.scale)
                .unwrap();
        let scale = c.scale.unwrap_or(1.0 / (d as f64).sqrt());
        let (plain_dq, plain_dk, plain_dv) = plain_backward::<T>(&q64, &k64, &v64, &do64, &c.mask, scale);
        let scale32 = c.scale.map(|s| s as f32);
        let (dq, dk, dv) =
            gpu_backward(gpu, &q, &k, &v, &out, &lse, &d_out, &c.mask, scale32, c.deterministic).unwrap();
        let f = |a: &Array4<T>| a.mapv(T::to_f64);
        within_plain("dq", &f(&dq), &plain_dq, &want.dq)?;
        within_plain("dk", &f(&dk), &plain_dk, &want.dk)?;
        within_plain("dv", &f(&dv), &plain_dv, &want.dv)?;
        if c.deterministic {
            let (dq2, dk2, dv2) = gpu_backward(gpu, &q, &k, &v, &out, &lse, &d_out, &c.mask, scale32, true).unwrap();
            prop_assert!(bits(&dq) == bits(&dq2), "deterministic dq differs between two runs");
            prop_assert!(bits(&dk) == bits(&dk2) && bits(&dv) == bits(&dv2), "dk/dv differ between two runs");
        }
        Ok(())
    }

    /// Strided layouts (`[B, H, L, D]` storage seen as `[B, L, H, D]`, for inputs and
    /// outputs) give the contiguous layout's results bit for bit.
    #[test]
    fn strided_layouts_match_contiguous() {
        let Some(gpu) = gpu() else { return };
        let mask = Mask::causal_cross(100, 3, 45).unwrap();
        let (b, hq, hkv, d) = (2, 4, 2, 64);
        let (lq, lk) = (mask.len_q(), mask.len_k());
        let (q64, q) = common::rounded::<f16>(random_array((b, lq, hq, d), 31));
        let (k64, k) = common::rounded::<f16>(random_array((b, lk, hkv, d), 32));
        let (v64, v) = common::rounded::<f16>(random_array((b, lk, hkv, d), 33));
        let (_, d_out) = common::rounded::<f16>(random_array((b, lq, hq, d), 34));
        let fwd = reference::attention(q64.view(), k64.view(), v64.view(), &mask, None).unwrap();
        let (out, lse) = (fwd.out.mapv(f16::from_f64), fwd.lse.mapv(|x| x as f32));
        let want = gpu_backward(gpu, &q, &k, &v, &out, &lse, &d_out, &mask, None, true).unwrap();

        // [B, L, H, D] -> [B, H, L, D] storage, and the layout that reads it as [B, L, H, D].
        let bhld = |a: &Array4<f16>| a.view().permuted_axes([0, 2, 1, 3]).as_standard_layout().into_owned();
        let layout = |[b, l, h, d]: [usize; 4]| Layout4 { dims: [b, l, h, d], strides: [h * l * d, d, l * d, 1] };
        let (qs, ks, vs, os, dos) = (bhld(&q), bhld(&k), bhld(&v), bhld(&out), bhld(&d_out));
        let up = |a: &Array4<f16>| gpu.upload(a.as_slice().unwrap()).unwrap();
        let (qd, kd, vd, od, dod) = (up(&qs), up(&ks), up(&vs), up(&os), up(&dos));
        let lse_d = gpu.upload(lse.as_slice().unwrap()).unwrap();
        let (qdims, kdims) = ([b, lq, hq, d], [b, lk, hkv, d]);
        let (mut dq, mut dk, mut dv) = (
            gpu.zeros::<f16>(q.len()).unwrap(),
            gpu.zeros::<f16>(k.len()).unwrap(),
            gpu.zeros::<f16>(k.len()).unwrap(),
        );
        let mask_d = gpu.upload_backward_mask(&mask, d).unwrap();
        gpu.attention_backward(
            &DeviceTensor { data: qd.as_view(), layout: layout(qdims) },
            &DeviceTensor { data: kd.as_view(), layout: layout(kdims) },
            &DeviceTensor { data: vd.as_view(), layout: layout(kdims) },
            &DeviceTensor { data: od.as_view(), layout: layout(qdims) },
            &lse_d.as_view(),
            &DeviceTensor { data: dod.as_view(), layout: layout(qdims) },
            &mask_d,
            None,
            true,
            &mut DeviceTensorMut { data: dq.as_view_mut(), layout: layout(qdims) },
            &mut DeviceTensorMut { data: dk.as_view_mut(), layout: layout(kdims) },
            &mut DeviceTensorMut { data: dv.as_view_mut(), layout: layout(kdims) },
        )
        .unwrap();
        let back = |s: &cudarc_slice::Slice<f16>, [b, l, h, d]: [usize; 4]| {
            Array4::from_shape_vec((b, h, l, d), gpu.download(s).unwrap()).unwrap().permuted_axes([0, 2, 1, 3])
        };
        assert!(bits(&back(&dq, qdims)) == bits(&want.0), "dq");
        assert!(bits(&back(&dk, kdims)) == bits(&want.1), "dk");
        assert!(bits(&back(&dv, kdims)) == bits(&want.2), "dv");
    }

    #[test]
    fn device_api_bad_inputs_are_errors_before_any_launch() {
        let Some(gpu) = gpu() else { return };
        let mask = Mask::causal(10, 10).unwrap();
        let x = Array4::<bf16>::zeros((1, 10, 2, 64));
        let lse = Array3::<f32>::zeros((1, 2, 10));
        let ok = gpu_backward(gpu, &x, &x, &x, &x, &lse, &x, &mask, None, false);
        assert!(ok.is_ok(), "{ok:?}");
        let wrong_dim = Array4::<bf16>::zeros((1, 10, 2, 68));
        let wrong_len = Array4::<bf16>::zeros((1, 9, 2, 64));
        let wrong_heads = Array4::<bf16>::zeros((1, 10, 3, 64));
        let wdl = Array3::<f32>::zeros((1, 2, 10));
        assert!(matches!(
            gpu_backward(gpu, &wrong_dim, &wrong_dim, &wrong_dim, &wrong_dim, &wdl, &wrong_dim, &mask, None, false),
            Err(maskattn::Error::Unsupported(_))
        ));
        assert!(matches!(
            gpu_backward(gpu, &x, &wrong_len, &wrong_len, &x, &lse, &x, &mask, None, false),
            Err(maskattn::Error::Shape(_))
        ));
        assert!(matches!(
            gpu_backward(gpu, &x, &wrong_heads, &wrong_heads, &x, &lse, &x, &mask, None, true),
            Err(maskattn::Error::Shape(_))
        ));
        assert!(matches!(
            gpu_backward(gpu, &x, &x, &x, &wrong_len, &lse, &x, &mask, None, false),
            Err(maskattn::Error::Shape(_))
        ));
        let short_lse = Array3::<f32>::zeros((1, 2, 9));
        assert!(matches!(
            gpu_backward(gpu, &x, &x, &x, &x, &short_lse, &x, &mask, None, false),
            Err(maskattn::Error::Shape(_))
        ));
        for bad_scale in [f32::INFINITY, f32::NAN, 0.0, -0.1] {
            assert!(
                gpu_backward(gpu, &x, &x, &x, &x, &lse, &x, &mask, Some(bad_scale), false).is_err(),
                "scale {bad_scale}"
            );
        }
        let other_mask = Mask::causal(10, 12).unwrap();
        assert!(matches!(
            gpu_backward(gpu, &x, &x, &x, &x, &lse, &x, &other_mask, None, false),
            Err(maskattn::Error::Shape(_))
        ));
        // A mask uploaded for another head dim.
        let m96 = gpu.upload_backward_mask(&mask, 96).unwrap();
        let s = gpu.upload(x.as_slice().unwrap()).unwrap();
        let mut o1 = gpu.zeros::<bf16>(x.len()).unwrap();
        let mut o2 = gpu.zeros::<bf16>(x.len()).unwrap();
        let mut o3 = gpu.zeros::<bf16>(x.len()).unwrap();
        let l = gpu.upload(lse.as_slice().unwrap()).unwrap();
        let t = || DeviceTensor { data: s.as_view(), layout: Layout4::contiguous([1, 10, 2, 64]) };
        let r = gpu.attention_backward(
            &t(),
            &t(),
            &t(),
            &t(),
            &l.as_view(),
            &t(),
            &m96,
            None,
            false,
            &mut DeviceTensorMut { data: o1.as_view_mut(), layout: Layout4::contiguous([1, 10, 2, 64]) },
            &mut DeviceTensorMut { data: o2.as_view_mut(), layout: Layout4::contiguous([1, 10, 2, 64]) },
            &mut DeviceTensorMut { data: o3.as_view_mut(), layout: Layout4::contiguous([1, 10, 2, 64]) },
        );
        assert!(matches!(r, Err(maskattn::Error::Shape(_))), "{r:?}");
    }
}
