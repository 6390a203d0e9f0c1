//! The forward bench program: every canonical case of DESIGN.md section 5 (but the
//! block-sparse ones), our kernel with the case's mask and with the dense mask of the
//! same shape, on each forward path of the GPU (the Hopper kernel and the mma.sync one
//! on sm_90), median ms and effective TFLOP/s (`4 * B * Hq * D * visible pairs /
//! time`, only the mask's visible pairs are credited, for both). Writes JSON in the
//! peers' format (shared/peers/flex_sdpa.py) so the two can be put side by side.
//!
//! With `--bwd` it times the backward pass instead (preprocessing, dK/dV kernel, dQ:
//! the atomic mode, the deterministic mode, and the atomic mode under the dense mask of
//! the same shape), from a saved forward, crediting `10 * B * Hq * D * visible pairs`
//! per pass (five matrix products against the forward's two), the convention of the
//! peers' `flex_sdpa.py --bwd`, whose case names (`<case>_bwd`) it uses.
//!
//! ```text
//! cargo run --release --example bench -- [--json out.json] [--hkv 32] [--d 128] [--f16] [--bwd] [CASE ...]
//! ```

use clap::Parser;
use half::{bf16, f16};
use maskattn::cases::{self, Case};
use maskattn::cuda::{BackwardCaseBuffers, CaseBuffers, Gpu, KernelElement};
use maskattn::ForwardPath;

#[derive(Parser)]
struct Args {
    /// Write the results as JSON here.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// Key/value heads (32 query heads).
    #[arg(long, default_value_t = 32)]
    hkv: usize,
    /// Head dim.
    #[arg(long, default_value_t = 128)]
    d: usize,
    /// f16 instead of bf16.
    #[arg(long)]
    f16: bool,
    /// Timed launches per measurement (after 5 warm-up launches).
    #[arg(long, default_value_t = 30)]
    iters: usize,
    /// Time the backward pass (dQ, dK, dV) instead of the forward.
    #[arg(long)]
    bwd: bool,
    /// The commit measured (default: $MASKATTN_COMMIT, then .gpu/COMMIT).
    #[arg(long)]
    commit: Option<String>,
    /// Cases (default: all forward cases).
    cases: Vec<String>,
}

fn measure<T: KernelElement>(gpu: &Gpu, case: &Case, iters: usize) -> maskattn::Result<(f64, f64)> {
    let mut bufs = CaseBuffers::<T>::new(gpu, case)?;
    Ok((gpu.time_forward(&mut bufs, &case.mask, 5, iters)?, gpu.time_forward(&mut bufs, &case.dense, 5, iters)?))
}

/// Backward medians: (atomic dQ, deterministic dQ, atomic dQ under the dense mask).
fn measure_bwd<T: KernelElement>(gpu: &Gpu, case: &Case, iters: usize) -> maskattn::Result<(f64, f64, f64)> {
    let mut bufs = BackwardCaseBuffers::<T>::new(gpu, case)?;
    Ok((
        gpu.time_backward(&mut bufs, &case.mask, false, 5, iters)?,
        gpu.time_backward(&mut bufs, &case.mask, true, 5, iters)?,
        gpu.time_backward(&mut bufs, &case.dense, false, 5, iters)?,
    ))
}

/// The `--bwd` run: one line and three JSON records per case.
fn bench_bwd(gpu: &Gpu, a: &Args, names: &[String], dtype: &str) -> maskattn::Result<Vec<serde_json::Value>> {
    let mut results = Vec::new();
    for name in names {
        let case = cases::case(name, a.hkv, a.d)?;
        let (ms, det_ms, dense_ms) =
            if a.f16 { measure_bwd::<f16>(gpu, &case, a.iters)? } else { measure_bwd::<bf16>(gpu, &case, a.iters)? };
        // 10 * B * Hq * D * visible pairs: the forward's 4 * ... times 2.5.
        let flops = 2.5 * case.flops(&case.mask);
        println!(
            "{:14} bwd maskattn {:9.3} ms {:7.1} TFLOP/s(eff) | deterministic {:9.3} ms {:7.1} | dense same shape {:9.3} ms ({:.2}x)",
            case.name,
            ms,
            flops / ms / 1e9,
            det_ms,
            flops / det_ms / 1e9,
            dense_ms,
            dense_ms / ms
        );
        for (imp, t, note) in [
            ("maskattn", ms, "dQ by f32 atomics"),
            ("maskattn_deterministic", det_ms, "dQ by a separate pass, no atomics"),
            (
                "maskattn_dense_same_shape",
                dense_ms,
                "computes the dense mask's pairs; eff counts only the case mask's visible pairs",
            ),
        ] {
            results.push(serde_json::json!({
                "case": format!("{}_bwd", case.name), "impl": imp, "ms": t, "eff_tflops": flops / t / 1e9,
                "B": case.batch, "H": case.heads_q, "Hkv": case.heads_kv, "D": case.head_dim, "dtype": dtype,
                "Lq": case.mask.len_q(), "Lk": case.mask.len_k(), "visible_pairs": case.mask.visible_pairs(), "note": note,
            }));
        }
    }
    Ok(results)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a = Args::parse();
    let gpu = match Gpu::new(0) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("bench: no GPU, nothing to measure ({e})");
            std::process::exit(2);
        }
    };
    let device = gpu.name()?;
    let commit = a
        .commit
        .clone()
        .or_else(|| std::env::var("MASKATTN_COMMIT").ok())
        .or_else(|| std::fs::read_to_string(".gpu/COMMIT").ok().map(|s| s.trim().to_string()))
        .unwrap_or_else(|| "unknown".into());
    let dtype = if a.f16 { "float16" } else { "bfloat16" };
    println!("maskattn bench on {device}, commit {commit}, {dtype}, Hkv={}, D={}", a.hkv, a.d);
    let names: Vec<String> =
        if a.cases.is_empty() { cases::FORWARD_CASES.iter().map(|s| s.to_string()).collect() } else { a.cases.clone() };
    let mut results = Vec::new();
    if a.bwd {
        results = bench_bwd(&gpu, &a, &names, dtype)?;
    }
    // On sm_90 the default is the Hopper kernel; the mma.sync kernel runs beside it, so
    // that one run gives both paths' ratios.
    let mut paths = vec![("maskattn", gpu.clone())];
    if gpu.forward_path()? == ForwardPath::Hopper {
        paths.push(("maskattn_mma", gpu.clone().with_forward_path(ForwardPath::Mma)));
    }
    for name in names.iter().filter(|_| !a.bwd) {
        let case = cases::case(name, a.hkv, a.d)?;
        for (imp, g) in &paths {
            let (ms, dense_ms) =
                if a.f16 { measure::<f16>(g, &case, a.iters)? } else { measure::<bf16>(g, &case, a.iters)? };
            let path = format!("{:?}", g.forward_path()?).to_lowercase();
            println!(
                "{:14} {imp:12} ({path:6}) {:9.3} ms {:7.1} TFLOP/s(eff) | dense same shape {:9.3} ms ({:.2}x)",
                case.name,
                ms,
                case.flops(&case.mask) / ms / 1e9,
                dense_ms,
                dense_ms / ms
            );
            let dense = format!("{imp}_dense_same_shape");
            for (imp, t, note) in [
                (*imp, ms, ""),
                (
                    dense.as_str(),
                    dense_ms,
                    "computes the dense mask's pairs; eff counts only the case mask's visible pairs",
                ),
            ] {
                results.push(serde_json::json!({
                    "case": case.name, "impl": imp, "forward_path": path, "ms": t,
                    "eff_tflops": case.flops(&case.mask) / t / 1e9,
                    "B": case.batch, "H": case.heads_q, "Hkv": case.heads_kv, "D": case.head_dim, "dtype": dtype,
                    "Lq": case.mask.len_q(), "Lk": case.mask.len_k(), "visible_pairs": case.mask.visible_pairs(),
                    "note": note,
                }));
            }
        }
    }
    if let Some(path) = a.json {
        let doc = serde_json::json!({ "device": device, "commit": commit, "results": results });
        std::fs::write(&path, serde_json::to_string_pretty(&doc)?)?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
