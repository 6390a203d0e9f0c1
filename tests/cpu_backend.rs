//! The CPU backend's own guarantees: the work model the counters show (performance
//! evidence without a GPU), conflict-free shared-memory access patterns, results
//! that do not depend on the schedule, and launch errors as values.
#![cfg(feature = "cpu")]

mod common;

use common::random_array;
use half::bf16;
use maskattn::cpu::{Counters, CpuBackend, CpuOptions, Schedule};
use maskattn::tiles::{self, TileClass};
use maskattn::xattention::{Tau, XAttnConfig};
use maskattn::{Kernels, Mask};

fn forward(cpu: &CpuBackend, mask: &Mask, b: usize, h: usize, d: usize) -> (ndarray::Array4<bf16>, Counters) {
    let (_, q) = common::rounded::<bf16>(random_array((b, mask.len_q(), h, d), 1));
    let (_, k) = common::rounded::<bf16>(random_array((b, mask.len_k(), h, d), 2));
    let (_, v) = common::rounded::<bf16>(random_array((b, mask.len_k(), h, d), 3));
    cpu.reset_counters();
    let (out, _) = cpu.attention(q.view(), k.view(), v.view(), mask, None).unwrap();
    (out, cpu.counters())
}

/// The forward does exactly the work its tile classification allows: one CTA per
/// (batch, head, query tile); EMPTY key tiles never walked nor loaded (bytes copied =
/// the Q rows plus K and V rows of the walked tiles); mma.sync count = walked tiles x
/// BM x BN x D / 1024 (two GEMMs of m16n8k16); every tile load and ldmatrix free of
/// bank conflicts.
#[test]
fn forward_work_model() {
    let cpu = CpuBackend::new();
    let layout = "text:20,frames:3x100,text:17".parse().unwrap();
    let masks = [
        Mask::causal(300, 300).unwrap(),
        Mask::frame_block_causal(&layout).unwrap(),
        Mask::causal_cross(77, 3, 64).unwrap(),
        Mask::sliding_window(260, 260, 40, 3).unwrap(),
        Mask::from_intervals(150, (0..200).map(|i| if i < 130 { [0, 0, 0, 0] } else { [0, i - 60, 0, 0] }).collect())
            .unwrap(),
    ];
    for mask in &masks {
        for d in [64, 96, 128] {
            let (b, h) = (2, 3);
            let shape = tiles::forward_tiles(d).unwrap();
            let (bm, bn) = (shape.block_m(), shape.block_n());
            let classes = tiles::tile_classes(mask, shape);
            let n_kt = mask.len_k().div_ceil(bn);
            let walked: Vec<usize> = (0..classes.len()).filter(|&i| classes[i] != TileClass::Empty).collect();
            let count = |c: TileClass| (b * h * classes.iter().filter(|&&x| x == c).count()) as u64;
            let key_rows = |kt: usize| bn.min(mask.len_k() - kt * bn);
            let kv_rows: usize = walked.iter().map(|&i| key_rows(i % n_kt)).sum();
            let (_, got) = forward(&cpu, mask, b, h, d);
            let what = format!("{:?} D={d}", mask.kind());
            assert_eq!(got.ctas, (b * h * mask.len_q().div_ceil(bm)) as u64, "{what}: CTAs");
            assert_eq!(got.key_tiles, [0, count(TileClass::Full), count(TileClass::Partial)], "{what}: tiles walked");
            let bytes = (b * h * (mask.len_q() + 2 * kv_rows) * d * 2) as u64;
            assert_eq!(got.bytes_global_to_shared, bytes, "{what}: bytes global -> shared");
            assert_eq!(got.mma, (b * h * walked.len() * bm * bn * d / 1024) as u64, "{what}: mma.sync");
            assert_eq!(got.ldmatrix_conflicts, 0, "{what}: ldmatrix bank conflicts");
            assert_eq!(got.cp_async_conflicts, 0, "{what}: cp.async bank conflicts");
        }
    }
}

/// XAttention's scoring loads and ldmatrix reads are conflict-free too.
#[test]
fn xattention_scoring_is_conflict_free() {
    let cpu = CpuBackend::new();
    for (d, stride) in [(64, 8), (128, 16), (96, 16)] {
        let (_, q) = common::rounded::<bf16>(random_array((1, 300, 2, d), 4));
        let (_, k) = common::rounded::<bf16>(random_array((1, 300, 2, d), 5));
        let cfg = XAttnConfig { stride, tau: Tau::Scalar(0.9), causal: true };
        cpu.reset_counters();
        cpu.xattn_select_blocks(q.view(), k.view(), &cfg).unwrap();
        let c = cpu.counters();
        assert!(c.mma > 0 && c.ldmatrix > 0, "D={d}: the scoring ran on tensor-core fragments ({c:?})");
        assert_eq!((c.ldmatrix_conflicts, c.cp_async_conflicts), (0, 0), "D={d} S={stride}: {c:?}");
    }
}

/// The same inputs under every schedule (and copies landing at random moments) give
/// bit-identical outputs: the forward has no order-dependent race.
#[test]
fn results_do_not_depend_on_the_schedule() {
    let mask = Mask::frame_block(&"text:9,frames:2x70,text:5".parse().unwrap()).unwrap();
    let (first, _) = forward(&CpuBackend::new(), &mask, 1, 2, 64);
    for (schedule, seed, early_landing) in
        [(Schedule::RoundRobin, 0, false), (Schedule::Victim, 3, true), (Schedule::Random, 11, true)]
    {
        let cpu = CpuBackend::with_options(CpuOptions { seed, schedule, early_landing, ..CpuOptions::default() });
        let (out, _) = forward(&cpu, &mask, 1, 2, 64);
        assert!(out.iter().zip(&first).all(|(a, b)| a.to_bits() == b.to_bits()), "{schedule:?} seed {seed}");
    }
}

/// A launch over the shared-memory budget is an `Unsupported` error naming the
/// kernel, returned before anything runs.
#[test]
fn a_launch_over_the_shared_memory_budget_is_an_error() {
    let cpu = CpuBackend::with_options(CpuOptions { max_dynamic_smem: 48 * 1024, ..CpuOptions::default() });
    let x = ndarray::Array4::<bf16>::zeros((1, 64, 1, 128));
    let err = cpu.attention(x.view(), x.view(), x.view(), &Mask::causal(64, 64).unwrap(), None).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, maskattn::Error::Unsupported(_)) && msg.contains("maskattn_fwd_bf16_d128"), "{msg}");
    assert!(msg.contains("67840 bytes of shared memory") && msg.contains("allows 49152"), "{msg}");
}

/// The opt-in shared memory per block of the GPUs maskattn targets: sm_86, sm_89
/// and sm_120 (RTX 30/40/50, A10, L4, L40S), sm_80 (A100), sm_90 (H100/H200).
const GPU_BUDGETS: [(u32, &str); 3] = [(99 * 1024, "sm_86/89/120"), (163 * 1024, "sm_80"), (227 * 1024, "sm_90")];

/// Under each GPU's budget enforced on the CPU backend, at every head dim and both
/// dtypes: the forward, XAttention's scoring and selection, and the deterministic
/// dQ pass run, bit for bit as without a limit; the backward's main kernel runs
/// where its tiles fit (params.h: 84,992 / 117,760 / 150,528 bytes at D = 64 / 96 /
/// 128) and is otherwise an `Unsupported` error naming it, returned before any
/// backward launch.
#[test]
fn every_gpu_shared_memory_budget_at_every_head_dim() {
    fn check<T: maskattn::KernelElement>() {
        let mask = Mask::causal(70, 90).unwrap();
        for (d, bwd_smem) in [(64, 84_992u32), (96, 117_760), (128, 150_528)] {
            let (_, q) = common::rounded::<T>(random_array((1, 70, 2, d), 1));
            let (_, k) = common::rounded::<T>(random_array((1, 90, 1, d), 2));
            let (_, v) = common::rounded::<T>(random_array((1, 90, 1, d), 3));
            let (_, g) = common::rounded::<T>(random_array((1, 70, 2, d), 4));
            let cfg = XAttnConfig { stride: 8, tau: Tau::Scalar(0.9), causal: true };
            let bits = |a: &ndarray::Array4<T>| a.iter().map(|x| x.to_f64().to_bits()).collect::<Vec<_>>();
            // One backend per budget: forward, XAttention scores and both backward modes.
            let run = |budget: u32| {
                let cpu = CpuBackend::with_options(CpuOptions { max_dynamic_smem: budget, ..CpuOptions::default() });
                let (out, _) = cpu.attention(q.view(), k.view(), v.view(), &mask, None).unwrap();
                let (scores, selection) = cpu.xattn_select_blocks(q.view(), k.view(), &cfg).unwrap();
                let bwd = [false, true].map(|deterministic| {
                    cpu.attention_grad(q.view(), k.view(), v.view(), g.view(), &mask, None, deterministic)
                });
                (bits(&out), scores.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), selection, bwd)
            };
            let (want_out, want_scores, want_selection, want_bwd) = run(u32::MAX);
            for (budget, gpus) in GPU_BUDGETS {
                let what = format!("{} D = {d}, budget {budget} ({gpus})", T::KERNEL_NAME);
                let (out, scores, selection, bwd) = run(budget);
                assert_eq!(out, want_out, "{what}: forward");
                assert!(scores == want_scores && selection == want_selection, "{what}: XAttention");
                for ((deterministic, got), want) in [false, true].into_iter().zip(bwd).zip(&want_bwd) {
                    let what = format!("{what}, deterministic {deterministic}");
                    let want = want.as_ref().unwrap();
                    match got {
                        Ok((dq, dk, dv)) => {
                            assert!(bwd_smem <= budget, "{what}: the backward ran over its budget");
                            assert_eq!(bits(&dq), bits(&want.0), "{what}: dq");
                            assert_eq!(bits(&dk), bits(&want.1), "{what}: dk");
                            assert_eq!(bits(&dv), bits(&want.2), "{what}: dv");
                        }
                        Err(e) => {
                            let msg = e.to_string();
                            assert!(bwd_smem > budget, "{what}: {msg}");
                            assert!(matches!(e, maskattn::Error::Unsupported(_)), "{what}: {msg}");
                            assert!(
                                msg.contains(&format!("{bwd_smem} bytes")) && msg.contains("maskattn_bwd_"),
                                "{msg}"
                            );
                        }
                    }
                }
            }
        }
    }
    check::<bf16>();
    check::<half::f16>();
}
