//! The Hopper kernels compile to the instructions they are written for: their sm_90a
//! SASS (the embedded fatbin, read back with cuobjdump) holds HGMMA (wgmma), UTMALDG
//! (TMA loads) and SYNCS (mbarrier) instructions, and the register reallocation of
//! warp specialisation (USETMAXREG). No GPU needed; spills are tests/ptxas_report.rs's.
#![cfg(feature = "cuda")]

mod common;

use common::cuobjdump::{embedded_fatbin, Cuobjdump};

/// Each Hopper kernel and instructions its sm_90a SASS must contain.
const EXPECTED: &[(&str, &[&str])] = &[
    (
        "maskattn_hopper_gemm_bf16_n128",
        &["HGMMA.64x128x16.F32.BF16", "UTMALDG.2D", "SYNCS.ARRIVE.TRANS64", "SYNCS.PHASECHK.TRANS64", "USETMAXREG"],
    ),
    (
        "maskattn_hopper_gemm_f16_n64",
        &["HGMMA.64x64x16.F32", "UTMALDG.2D", "SYNCS.ARRIVE.TRANS64", "SYNCS.PHASECHK.TRANS64", "USETMAXREG"],
    ),
    (
        "maskattn_hopper_fwd_bf16_d128",
        &[
            "HGMMA.64x128x16.F32.BF16",
            "UTMALDG.4D",
            "SYNCS.ARRIVE.TRANS64",
            "SYNCS.PHASECHK.TRANS64",
            "USETMAXREG",
        ],
    ),
    ("maskattn_hopper_fwd_f16_d96", &["HGMMA.64x128x16.F32", "HGMMA.64x96x16.F32", "UTMALDG.4D", "USETMAXREG"]),
    ("maskattn_hopper_fwd_bf16_d64", &["HGMMA.64x128x16.F32.BF16", "HGMMA.64x64x16.F32.BF16", "UTMALDG.4D"]),
    ("maskattn_probe_hopper_wgmma", &["HGMMA.64x256x16.F32.BF16", "HGMMA.64x96x16.F32"]),
    ("maskattn_probe_hopper_tma", &["UTMALDG.2D", "UTMALDG.3D", "UTMALDG.5D", "SYNCS.PHASECHK.TRANS64"]),
    ("maskattn_probe_hopper_mbarrier", &["SYNCS.ARRIVE.TRANS64", "SYNCS.PHASECHK.TRANS64"]),
];

#[test]
fn hopper_sass_has_hgmma_utmaldg_and_syncs() {
    let Some(tool) = Cuobjdump::find_or_skip() else { return };
    let fatbin = embedded_fatbin().unwrap();
    let sass = tool.sass(fatbin.path(), "sm_90a").unwrap();
    for (kernel, instructions) in EXPECTED {
        let code = sass.functions.get(*kernel).unwrap_or_else(|| panic!("{kernel} missing from the sm_90a SASS"));
        for i in *instructions {
            assert!(code.contains(i), "{kernel}: no {i} in its sm_90a SASS");
        }
        let hgmma = code.matches("HGMMA").count();
        println!(
            "{kernel}: {hgmma} HGMMA, {} UTMALDG, {} SYNCS",
            code.matches("UTMALDG").count(),
            code.matches("SYNCS").count()
        );
    }
}
