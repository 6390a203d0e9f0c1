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
    // The forward: both GEMMs, the 4-D TMA loads, the mbarriers, and setmaxnreg giving the
    // producer 56 registers (0x38) and the consumers 224 (0xe0).
    (
        "maskattn_hopper_fwd_bf16_d128",
        &[
            "HGMMA.64x128x16.F32.BF16",
            "UTMALDG.4D",
            "SYNCS.ARRIVE.TRANS64",
            "SYNCS.PHASECHK.TRANS64",
            "USETMAXREG.DEALLOC.CTAPOOL 0x38",
            "USETMAXREG.TRY_ALLOC.CTAPOOL UP1, 0xe0",
        ],
    ),
    (
        "maskattn_hopper_fwd_f16_d96",
        &["HGMMA.64x128x16.F32", "HGMMA.64x96x16.F32", "UTMALDG.4D", "USETMAXREG.DEALLOC.CTAPOOL 0x38"],
    ),
    (
        "maskattn_hopper_fwd_bf16_d64",
        &[
            "HGMMA.64x128x16.F32.BF16",
            "HGMMA.64x64x16.F32.BF16",
            "UTMALDG.4D",
            "USETMAXREG.TRY_ALLOC.CTAPOOL UP1, 0xe0",
        ],
    ),
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

/// The forward's wgmmas are pipelined, not serialized: ptxas serializes them (a
/// `WARPGROUP.DEPBAR.LE gsb0, 0x0` after every HGMMA, warning C7514/C7520) when a wgmma
/// is issued under a branch or a wait sits between two. Then there are as many waits as
/// HGMMAs; pipelined, a handful: one `wait_group 1` (S of the next tile, with P V in
/// flight) and the `wait_group 0`s of the first tile, the loop and the last P V.
#[test]
fn hopper_forward_wgmmas_are_pipelined() {
    let Some(tool) = Cuobjdump::find_or_skip() else { return };
    let fatbin = embedded_fatbin().unwrap();
    let sass = tool.sass(fatbin.path(), "sm_90a").unwrap();
    for dtype in ["f16", "bf16"] {
        for d in [64, 96, 128] {
            let kernel = format!("maskattn_hopper_fwd_{dtype}_d{d}");
            let code = sass.functions.get(&kernel).unwrap_or_else(|| panic!("{kernel} missing from the sm_90a SASS"));
            let (hgmma, waits) = (code.matches("HGMMA").count(), code.matches("WARPGROUP.DEPBAR").count());
            println!("{kernel}: {hgmma} HGMMA, {waits} WARPGROUP.DEPBAR");
            assert!(code.contains("WARPGROUP.DEPBAR.LE gsb0, 0x1"), "{kernel}: no wait_group 1");
            // S of the first tile, S and P V in the loop, the last tile's P V.
            assert_eq!(hgmma, 2 * (d / 16) + 2 * 8, "{kernel}: HGMMA");
            assert!(waits <= 4, "{kernel}: {waits} waits for {hgmma} HGMMA: serialized");
        }
    }
}
