//! `MASKATTN_FORWARD_PATH` picks the forward kernel of a backend whose option says
//! `Auto`, and an explicit option wins over it. Its own test binary with one test:
//! the variable is process-wide, and no other test may see it change.
#![cfg(feature = "cpu")]

use half::bf16;
use maskattn::cpu::{CpuBackend, CpuOptions};
use maskattn::{Error, ForwardPath, Kernels, Mask, FORWARD_PATH_ENV};
use ndarray::Array4;

/// (wgmma, mma) instructions of one forward on `cpu`, or its error.
fn instructions(cpu: &CpuBackend) -> Result<(u64, u64), Error> {
    let mask = Mask::causal(200, 200).unwrap();
    let q = Array4::from_elem((1, 200, 2, 64), bf16::ONE);
    cpu.reset_counters();
    cpu.attention(q.view(), q.view(), q.view(), &mask, None)?;
    let c = cpu.counters();
    Ok((c.wgmma, c.mma))
}

fn set(value: &str) {
    // The binary's only test, so no other thread reads the environment meanwhile.
    std::env::set_var(FORWARD_PATH_ENV, value);
}

#[test]
fn the_environment_picks_the_forward_path_where_the_option_is_auto() {
    let auto = CpuBackend::new();
    let forced_mma = CpuBackend::with_options(CpuOptions { forward_path: ForwardPath::Mma, ..CpuOptions::default() });

    set("hopper");
    let (wgmma, mma) = instructions(&auto).unwrap();
    assert!(wgmma > 0 && mma == 0, "hopper: {wgmma} wgmma, {mma} mma");
    let (wgmma, mma) = instructions(&forced_mma).unwrap();
    assert!(wgmma == 0 && mma > 0, "the option wins: {wgmma} wgmma, {mma} mma");

    set("mma");
    let (wgmma, mma) = instructions(&auto).unwrap();
    assert!(wgmma == 0 && mma > 0, "mma: {wgmma} wgmma, {mma} mma");

    set("wgmma");
    match instructions(&auto) {
        Err(Error::InvalidParameter { what: "forward path", reason }) => assert!(reason.contains("wgmma"), "{reason}"),
        other => panic!("a value naming no path: {other:?}"),
    }

    std::env::remove_var(FORWARD_PATH_ENV);
    let (wgmma, mma) = instructions(&auto).unwrap();
    assert!(wgmma == 0 && mma > 0, "unset, the CPU backend's default: {wgmma} wgmma, {mma} mma");
}
