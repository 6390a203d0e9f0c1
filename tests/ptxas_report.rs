//! ptxas's report from the build: every kernel is there for every SASS target of the
//! fatbin (sm_80, sm_90a and, from CUDA 12.8, sm_120) and none spills registers to
//! local memory.
#![cfg(feature = "cuda")]

use maskattn::cuda::{kernel_resources, KERNEL_BUILD};

const KERNELS: &[&str] = &[
    "maskattn_tile_classes",
    "maskattn_fwd_f16_d64",
    "maskattn_fwd_f16_d96",
    "maskattn_fwd_f16_d128",
    "maskattn_fwd_f16_d256",
    "maskattn_fwd_bf16_d64",
    "maskattn_fwd_bf16_d96",
    "maskattn_fwd_bf16_d128",
    "maskattn_fwd_bf16_d256",
    "maskattn_hopper_fwd_f16_d64",
    "maskattn_hopper_fwd_f16_d96",
    "maskattn_hopper_fwd_f16_d128",
    "maskattn_hopper_fwd_bf16_d64",
    "maskattn_hopper_fwd_bf16_d96",
    "maskattn_hopper_fwd_bf16_d128",
    "maskattn_dual_rope_f16",
    "maskattn_dual_rope_bf16",
    "maskattn_bwd_f16_d64",
    "maskattn_bwd_dkdv_f16_d64",
    "maskattn_bwd_dq_f16_d64",
    "maskattn_bwd_f16_d96",
    "maskattn_bwd_dkdv_f16_d96",
    "maskattn_bwd_dq_f16_d96",
    "maskattn_bwd_f16_d128",
    "maskattn_bwd_dkdv_f16_d128",
    "maskattn_bwd_dq_f16_d128",
    "maskattn_bwd_f16_d256",
    "maskattn_bwd_dkdv_f16_d256",
    "maskattn_bwd_dq_f16_d256",
    "maskattn_bwd_f16_d96_compact",
    "maskattn_bwd_dkdv_f16_d96_compact",
    "maskattn_bwd_f16_d128_compact",
    "maskattn_bwd_dkdv_f16_d128_compact",
    "maskattn_bwd_preprocess_f16",
    "maskattn_bwd_dq_convert_f16",
    "maskattn_bwd_bf16_d64",
    "maskattn_bwd_dkdv_bf16_d64",
    "maskattn_bwd_dq_bf16_d64",
    "maskattn_bwd_bf16_d96",
    "maskattn_bwd_dkdv_bf16_d96",
    "maskattn_bwd_dq_bf16_d96",
    "maskattn_bwd_bf16_d128",
    "maskattn_bwd_dkdv_bf16_d128",
    "maskattn_bwd_dq_bf16_d128",
    "maskattn_bwd_bf16_d256",
    "maskattn_bwd_dkdv_bf16_d256",
    "maskattn_bwd_dq_bf16_d256",
    "maskattn_bwd_bf16_d96_compact",
    "maskattn_bwd_dkdv_bf16_d96_compact",
    "maskattn_bwd_bf16_d128_compact",
    "maskattn_bwd_dkdv_bf16_d128_compact",
    "maskattn_bwd_preprocess_bf16",
    "maskattn_bwd_dq_convert_bf16",
    "maskattn_naive_scores_f16",
    "maskattn_naive_scores_bf16",
    "maskattn_naive_softmax",
    "maskattn_naive_pv_f16",
    "maskattn_naive_pv_bf16",
];

#[test]
fn every_kernel_is_built_for_every_sass_target_without_spills() {
    let all = kernel_resources();
    for r in &all {
        println!(
            "{:28} {:7} {:3} regs {:6} B smem  stack {} B  spills {}/{} B",
            r.name, r.arch, r.registers, r.shared, r.stack_frame, r.spill_stores, r.spill_loads
        );
    }
    assert!(KERNEL_BUILD.sass.starts_with(&["sm_80", "sm_90a"]), "{:?}", KERNEL_BUILD.sass);
    for name in KERNELS {
        for &arch in KERNEL_BUILD.sass {
            assert!(all.iter().any(|r| r.name == *name && r.arch == arch), "{name} missing for {arch}");
        }
    }
    let spilling: Vec<_> = all.iter().filter(|r| r.spill_stores > 0 || r.spill_loads > 0).collect();
    assert!(spilling.is_empty(), "kernels spill registers: {spilling:#?}");
}
