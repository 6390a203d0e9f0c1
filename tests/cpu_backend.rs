//! The CPU backend's own guarantees: the work model the counters show (performance
//! evidence without a GPU), conflict-free shared-memory access patterns, results
//! that do not depend on the schedule, and launch errors as values.
#![cfg(feature = "cpu")]

mod common;

use common::random_array;
use half::bf16;
use maskattn::cpu::{Counters, CpuBackend, CpuOptions, Schedule};
use maskattn::tiles::{self, TileClass, TileConfig};
use maskattn::xattention::{Tau, XAttnConfig};
use maskattn::{ForwardPath, Kernels, Mask};

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
    // The mma.sync kernel's model (the Hopper kernel's: src/launch/forward.rs).
    let cpu = CpuBackend::with_options(CpuOptions { forward_path: ForwardPath::Mma, ..CpuOptions::default() });
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
    for (d, stride) in [(64, 8), (128, 16), (96, 16), (256, 8)] {
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

/// Under each GPU's budget enforced on the CPU backend, in every head-dim class (80
/// runs in class 96, padded) and both dtypes, with the configuration chosen as a GPU
/// chooses it (`TileConfig::Auto`): the forward, XAttention's scoring and selection
/// (at its head dims) and the backward in both dQ modes run, bit for bit as without a
/// limit. Forced, the pipelined backward (params.h: 84,992 / 117,760 / 150,528 /
/// 206,336 bytes in classes 64 / 96 / 128 / 256) runs exactly where it fits and is
/// otherwise an `Unsupported` error naming it, before any backward launch; the compact
/// one runs under 99 KB, bit for bit as the pipelined one (the same products in the
/// same order; with one key tile even the atomic dQ adds in one order). Class 256 has
/// one configuration, which only sm_90's budget holds: elsewhere every configuration
/// is that error.
#[test]
fn every_gpu_shared_memory_budget_at_every_head_dim() {
    fn check<T: maskattn::KernelElement>() {
        let mask = Mask::causal(70, 90).unwrap();
        for (d, pipelined_smem) in [(64, 84_992u32), (80, 117_760), (96, 117_760), (128, 150_528), (256, 206_336)] {
            let (_, q) = common::rounded::<T>(random_array((1, 70, 2, d), 1));
            let (_, k) = common::rounded::<T>(random_array((1, 90, 1, d), 2));
            let (_, v) = common::rounded::<T>(random_array((1, 90, 1, d), 3));
            let (_, g) = common::rounded::<T>(random_array((1, 70, 2, d), 4));
            let cfg = XAttnConfig { stride: 8, tau: Tau::Scalar(0.9), causal: true };
            let bits = |a: &ndarray::Array4<T>| a.iter().map(|x| x.to_f64().to_bits()).collect::<Vec<_>>();
            // One forward kernel at every budget (the Hopper one needs 230,528 bytes at D = 96 and 128), so that
            // the results can be compared bit for bit.
            let cpu = |max_dynamic_smem, tile_config| {
                let forward_path = ForwardPath::Mma;
                CpuBackend::with_options(CpuOptions {
                    max_dynamic_smem,
                    tile_config,
                    forward_path,
                    ..CpuOptions::default()
                })
            };
            let backward = |cpu: &CpuBackend| {
                [false, true].map(|deterministic| {
                    cpu.attention_grad(q.view(), k.view(), v.view(), g.view(), &mask, None, deterministic)
                        .map(|(dq, dk, dv)| [bits(&dq), bits(&dk), bits(&dv)])
                })
            };
            let others = |cpu: &CpuBackend| {
                let (out, _) = cpu.attention(q.view(), k.view(), v.view(), &mask, None).unwrap();
                let xattn = [64, 96, 128].contains(&d).then(|| {
                    let (scores, selection) = cpu.xattn_select_blocks(q.view(), k.view(), &cfg).unwrap();
                    (scores.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), selection)
                });
                (bits(&out), xattn)
            };
            let unlimited = cpu(u32::MAX, TileConfig::Pipelined);
            let (want_others, want_bwd) = (others(&unlimited), backward(&unlimited).map(Result::unwrap));
            for (budget, gpus) in GPU_BUDGETS {
                let what = format!("{} D = {d}, budget {budget} ({gpus})", T::KERNEL_NAME);
                let auto = cpu(budget, TileConfig::Auto);
                assert!(others(&auto) == want_others, "{what}: forward or XAttention");
                let mut forced = vec![(TileConfig::Pipelined, cpu(budget, TileConfig::Pipelined))];
                if budget == GPU_BUDGETS[0].0 {
                    forced.push((TileConfig::Compact, cpu(budget, TileConfig::Compact)));
                }
                for (config, cpu) in std::iter::once((TileConfig::Auto, auto)).chain(forced) {
                    for (deterministic, got) in [false, true].into_iter().zip(backward(&cpu)) {
                        let what = format!("{what}, {config:?}, deterministic {deterministic}");
                        let one_config = d == 256;
                        let runs = (config != TileConfig::Pipelined && !one_config) || pipelined_smem <= budget;
                        match got {
                            Ok(grads) => {
                                assert!(runs, "{what}: the pipelined backward ran over its budget");
                                assert!(grads == want_bwd[usize::from(deterministic)], "{what}: dq, dk or dv");
                            }
                            Err(e) => {
                                let msg = e.to_string();
                                assert!(!runs, "{what}: {msg}");
                                assert!(matches!(e, maskattn::Error::Unsupported(_)), "{what}: {msg}");
                                let kernel = format!("maskattn_bwd_{}", if deterministic { "dkdv_" } else { "" });
                                assert!(
                                    msg.contains(&format!("{pipelined_smem} bytes")) && msg.contains(&kernel),
                                    "{msg}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }
    check::<bf16>();
    check::<half::f16>();
}

/// XAttention's scoring at D = 256 needs 135,680 bytes of shared memory per block
/// (params.h): under the 99 KB of sm_86/89/120 it is an `Unsupported` error naming
/// the kernel before anything runs; under sm_80's 163 KB and sm_90's 227 KB it runs,
/// bit for bit as without a limit. Both dtypes, both strides.
#[test]
fn xattention_at_head_dim_256_under_every_gpu_budget() {
    fn check<T: maskattn::KernelElement>() {
        let (_, q) = common::rounded::<T>(random_array((1, 150, 2, 256), 6));
        let (_, k) = common::rounded::<T>(random_array((1, 170, 1, 256), 7));
        for stride in [8, 16] {
            let cfg = XAttnConfig { stride, tau: Tau::Scalar(0.9), causal: true };
            let run = |max_dynamic_smem| {
                let cpu = CpuBackend::with_options(CpuOptions { max_dynamic_smem, ..CpuOptions::default() });
                cpu.reset_counters();
                let got = cpu.xattn_select_blocks(q.view(), k.view(), &cfg);
                let got = got.map(|(scores, sel)| (scores.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), sel));
                (got, cpu.counters())
            };
            let (want, _) = run(u32::MAX);
            let want = want.unwrap();
            let kernel = format!("maskattn_xattn_scores_{}_d256_s{stride}", T::KERNEL_NAME);
            for (budget, gpus) in GPU_BUDGETS {
                let what = format!("{kernel}, budget {budget} ({gpus})");
                let (got, counters) = run(budget);
                if budget >= 135_680 {
                    assert!(got.unwrap() == want, "{what}: scores or selection differ from an unlimited run");
                    continue;
                }
                let e = got.err().unwrap_or_else(|| panic!("{what}: ran over its budget"));
                let msg = e.to_string();
                assert!(matches!(e, maskattn::Error::Unsupported(_)), "{what}: {msg}");
                let expected = format!("kernel {kernel} needs 135680 bytes of shared memory per block");
                assert!(msg.contains(&expected) && msg.contains(&format!("allows {budget}")), "{what}: {msg}");
                assert_eq!((counters.ctas, counters.mma), (0, 0), "{what}: something ran before the error");
            }
        }
    }
    check::<bf16>();
    check::<half::f16>();
}

/// The backward's two configurations on a video mask, per head dim: the compact one
/// does no more tensor-core work than the pipelined one (its finer query tiles skip at
/// least as much) in as many CTAs, and both load and read shared memory
/// without bank conflicts (the compact 32-row Q/dO tiles split their column groups
/// over two sets of warps). The counters are printed for bench/NOTES.md.
#[test]
fn compact_backward_work_model() {
    let mask = Mask::frame_block_causal(&"text:20,frames:1x576,text:31".parse().unwrap()).unwrap();
    let (lq, lk) = (mask.len_q(), mask.len_k());
    for d in [96, 128] {
        let (_, q) = common::rounded::<bf16>(random_array((1, lq, 2, d), 61));
        let (_, k) = common::rounded::<bf16>(random_array((1, lk, 1, d), 62));
        let (_, v) = common::rounded::<bf16>(random_array((1, lk, 1, d), 63));
        let (_, g) = common::rounded::<bf16>(random_array((1, lq, 2, d), 64));
        for deterministic in [false, true] {
            let counters = [TileConfig::Pipelined, TileConfig::Compact].map(|tile_config| {
                let cpu = CpuBackend::with_options(CpuOptions { tile_config, ..CpuOptions::default() });
                // The forward runs first; count from a second call's backward only.
                cpu.attention_grad(q.view(), k.view(), v.view(), g.view(), &mask, None, deterministic).unwrap();
                let all = cpu.counters();
                cpu.reset_counters();
                cpu.attention(q.view(), k.view(), v.view(), &mask, None).unwrap();
                let fwd = cpu.counters();
                let sub = |a: u64, b: u64| a - b;
                Counters {
                    ctas: sub(all.ctas, fwd.ctas),
                    mma: sub(all.mma, fwd.mma),
                    ldmatrix: sub(all.ldmatrix, fwd.ldmatrix),
                    ldmatrix_conflicts: sub(all.ldmatrix_conflicts, fwd.ldmatrix_conflicts),
                    cp_async: sub(all.cp_async, fwd.cp_async),
                    cp_async_zero_fill: sub(all.cp_async_zero_fill, fwd.cp_async_zero_fill),
                    bytes_global_to_shared: sub(all.bytes_global_to_shared, fwd.bytes_global_to_shared),
                    cp_async_conflicts: sub(all.cp_async_conflicts, fwd.cp_async_conflicts),
                    barriers: sub(all.barriers, fwd.barriers),
                    warp_syncs: sub(all.warp_syncs, fwd.warp_syncs),
                    key_tiles: [0, 1, 2].map(|i| sub(all.key_tiles[i], fwd.key_tiles[i])),
                    races: all.races,
                    wgmma: sub(all.wgmma, fwd.wgmma),
                    tma_loads: sub(all.tma_loads, fwd.tma_loads),
                    bytes_tma: sub(all.bytes_tma, fwd.bytes_tma),
                }
            });
            let [pipelined, compact] = &counters;
            println!("D = {d}, deterministic {deterministic}:\n  pipelined {pipelined:?}\n  compact   {compact:?}");
            let what = format!("D = {d}, deterministic {deterministic}");
            assert!(compact.mma <= pipelined.mma && compact.mma > 0, "{what}: mma.sync");
            assert_eq!(compact.ctas, pipelined.ctas, "{what}: CTAs");
            for c in &counters {
                assert_eq!((c.ldmatrix_conflicts, c.cp_async_conflicts), (0, 0), "{what}: bank conflicts {c:?}");
            }
        }
    }
}
