//! Static checks of the embedded fatbin, read back with cuobjdump (no GPU): the
//! targets build.rs chose for its nvcc are all there, every kernel is in the SASS of
//! every target, and each cubin records the toolkit that built it (the version
//! `Gpu::new` compares with the driver's). Spills: tests/ptxas_report.rs.
#![cfg(feature = "cuda")]

mod common;

use std::collections::BTreeSet;

use common::cuobjdump::{
    embedded_fatbin, parse_cubin_infos, parse_ptx_entries, parse_ptx_isa, parse_sass, targets_of_listing, CubinInfo,
    Cuobjdump,
};
use maskattn::cuda::{kernel_resources, KERNEL_BUILD};

/// Kernels every build must have (a sample of each family): the PTX's entries are
/// the full list, this guards against that list shrinking unnoticed.
const SAMPLE: &[&str] = &[
    "maskattn_tile_classes",
    "maskattn_fwd_bf16_d128",
    "maskattn_fwd_f16_d64",
    "maskattn_bwd_bf16_d128",
    "maskattn_bwd_dkdv_f16_d96_compact",
    "maskattn_bwd_dq_bf16_d64",
    "maskattn_xattn_scores_f16_d128_s16",
    "maskattn_xattn_select",
    "maskattn_dual_rope_f16",
    "maskattn_naive_softmax",
    "maskattn_probe_primitives",
];

#[test]
fn every_kernel_for_every_target_and_the_toolkit_recorded() {
    let Some(tool) = Cuobjdump::find_or_skip() else { return };
    let fatbin = embedded_fatbin().unwrap();
    let path = fatbin.path();
    let b = &KERNEL_BUILD;
    println!(
        "fatbin: {} bytes, nvcc {} ({}), SASS {:?}, PTX {}, compress-mode {:?}; read by {}",
        b.fatbin.len(),
        b.toolkit,
        b.nvcc,
        b.sass,
        b.ptx,
        b.compress_mode,
        tool.version().unwrap()
    );

    assert_eq!(tool.list_elf(path).unwrap(), b.sass, "SASS targets");
    assert_eq!(tool.list_ptx(path).unwrap(), [b.ptx], "PTX targets");

    let ptx = tool.ptx(path).unwrap();
    let kernels = parse_ptx_entries(&ptx);
    for k in SAMPLE {
        assert!(kernels.contains(*k), "{k} missing from the PTX ({} entries)", kernels.len());
    }
    // The PTX ISA's major version is the toolkit's minus 4 (CUDA 12: 8.x, 13: 9.x).
    let isa = parse_ptx_isa(&ptx).expect(".version in the PTX");
    assert_eq!(isa.0 + 4, b.toolkit.major, "PTX ISA {isa:?} from nvcc {}", b.toolkit);

    let reported = kernel_resources();
    for &arch in b.sass {
        let sass = tool.sass(path, arch).unwrap();
        let in_sass: BTreeSet<String> = sass.functions.keys().cloned().collect();
        assert_eq!(in_sass, kernels, "{arch}: SASS kernels differ from the PTX entries");
        for (name, code) in &sass.functions {
            // The Hopper kernels' primitives exist on sm_90a only: elsewhere they are
            // trap stubs (csrc/prims/sm90.cuh), which never reach an EXIT.
            let stub = arch != "sm_90a" && name.contains("hopper");
            if stub {
                assert!(code.contains("BPT.TRAP") && !code.contains("HGMMA"), "{arch}: {name} is not a trap stub");
            } else {
                assert!(code.contains("EXIT"), "{arch}: {name} without EXIT");
            }
        }
        let in_report: BTreeSet<String> = reported.iter().filter(|r| r.arch == arch).map(|r| r.name.clone()).collect();
        assert_eq!(in_report, kernels, "{arch}: ptxas report and fatbin disagree");
    }
    println!("{} kernels in each of {:?} and in the {} PTX (ISA {}.{})", kernels.len(), b.sass, b.ptx, isa.0, isa.1);

    let cubins = tool.cubins(path).unwrap_or_else(|e| {
        panic!("{e}\n(a cuobjdump older than nvcc {} may not read its cubins: run scripts/setup-cuda.sh)", b.toolkit)
    });
    assert_eq!(cubins.iter().map(|c| c.arch.as_str()).collect::<Vec<_>>(), b.sass);
    let release = format!("release {}", b.toolkit);
    for c in &cubins {
        assert_eq!(c.toolkit, b.toolkit.to_string(), "{c:?}");
        assert!(c.tool_version.contains(&release), "{c:?} not built by nvcc {}", b.toolkit);
        println!("{}: toolkit={}, ptxas \"{}\"", c.arch, c.toolkit, c.tool_version);
    }
}

#[test]
fn parses_cuobjdump_output() {
    assert_eq!(
        targets_of_listing("ELF file    1: k.sm_80.cubin\nELF file    2: k.sm_90a.cubin\n", ".cubin"),
        ["sm_80", "sm_90a"]
    );
    let sass = parse_sass(
        "\tcode for sm_90a\n\t\tFunction : a\n\tHGMMA.64x128x16 ;\n\t\tFunction : b\n\tEXIT ;\nFatbin elf code:\n",
    );
    assert_eq!(sass.keys().collect::<Vec<_>>(), ["a", "b"]);
    assert!(sass["a"].contains("HGMMA") && !sass["b"].contains("HGMMA"));
    let ptx = ".version 9.0\n.target sm_80\n.visible .entry k1(\n.entry k2(\n";
    assert_eq!(parse_ptx_entries(ptx).into_iter().collect::<Vec<_>>(), ["k1", "k2"]);
    assert_eq!(parse_ptx_isa(ptx), Some((9, 0)));
    let elf = "64-bit ELF: type=ET_EXEC, ABI=8, sm=90a, toolkit=13.0, flags=0xa005a04\n\
               \tTool Name: ptxas\n\tTool Version: Cuda compilation tools, release 13.0, V13.0.88\n";
    assert_eq!(
        parse_cubin_infos(elf),
        [CubinInfo {
            arch: "sm_90a".into(),
            toolkit: "13.0".into(),
            tool_version: "Cuda compilation tools, release 13.0, V13.0.88".into()
        }]
    );
}
