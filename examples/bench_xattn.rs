//! XAttention benchmark: scoring, selection and block-sparse attention timed apart on
//! the device, against our dense causal kernel on the same inputs, at 32K, 64K and
//! 128K tokens (bf16, H = 32, D = 128, S = 16, tau = 0.9 by default). Inputs have the
//! structure XAttention exploits (`maskattn::cuda::xattn_structured_inputs`: local
//! correlation plus a few sink directions), not i.i.d. noise. Accuracy: relative
//! Frobenius error of the sparse output against the dense one, per tau.
//!
//! ```text
//! cargo run --release --example bench_xattn -- [--json out.json] [--lens 32768,65536,131072] [--taus 0.8,0.9,0.95]
//! ```

use clap::Parser;
use cudarc::driver::sys::CUevent_flags;
use half::bf16;
use maskattn::cuda::{xattn_structured_inputs, DeviceTensor, DeviceTensorMut, Gpu};
use maskattn::xattention::{Tau, XAttnConfig};
use maskattn::{AttnShape, Mask};

#[derive(Parser)]
struct Args {
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    #[arg(long, value_delimiter = ',', default_value = "32768,65536,131072")]
    lens: Vec<usize>,
    /// tau values; the first is the timed one's default companion list for accuracy.
    #[arg(long, value_delimiter = ',', default_value = "0.8,0.9,0.95")]
    taus: Vec<f64>,
    #[arg(long, default_value_t = 16)]
    stride: usize,
    #[arg(long, default_value_t = 10)]
    iters: usize,
}

/// Median ms of `f` over `iters` runs (after one warm-up), timed with CUDA events.
fn time(gpu: &Gpu, iters: usize, mut f: impl FnMut() -> maskattn::Result<()>) -> maskattn::Result<f64> {
    let ctx = gpu.stream().context().clone();
    f()?;
    let mut t = Vec::new();
    for _ in 0..iters {
        let (a, b) = (
            ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))?,
            ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))?,
        );
        a.record(gpu.stream())?;
        f()?;
        b.record(gpu.stream())?;
        t.push(a.elapsed_ms(&b)? as f64);
    }
    t.sort_by(f64::total_cmp);
    Ok(t[t.len() / 2])
}

fn rel_error(a: &[bf16], b: &[bf16]) -> f64 {
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (x, y) in a.iter().zip(b) {
        let (x, y) = (f64::from(*x), f64::from(*y));
        num += (x - y) * (x - y);
        den += y * y;
    }
    (num / den).sqrt()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a = Args::parse();
    let gpu = match Gpu::new(0) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("bench_xattn: no GPU, nothing to measure ({e})");
            std::process::exit(2);
        }
    };
    let device = gpu.name()?;
    println!("XAttention on {device}: bf16, H=32, D=128, S={}, causal", a.stride);
    let mut results = Vec::new();
    for &len in &a.lens {
        let sh = AttnShape { batch: 1, len_q: len, len_k: len, heads_q: 32, heads_kv: 32, head_dim: 128 };
        eprintln!("[L={len}] generating structured inputs ...");
        let (q, k) = xattn_structured_inputs::<bf16>(&sh, 1);
        let dims = [1, len, 32, 128];
        let (dq, dk) = (gpu.upload(q.as_slice().expect("standard"))?, gpu.upload(k.as_slice().expect("standard"))?);
        let dv = gpu.upload(q.as_slice().expect("standard"))?; // V: any values; reuse Q's
        drop((q, k));
        let mask = gpu.upload_mask(&Mask::causal(len, len)?, 128)?;
        let (mut out, mut out_dense) = (gpu.zeros::<bf16>(len * 32 * 128)?, gpu.zeros::<bf16>(len * 32 * 128)?);
        let mut lse = gpu.zeros::<f32>(32 * len)?;
        let dense_ms = time(&gpu, a.iters, || {
            gpu.attention_forward(
                &DeviceTensor::contiguous(&dq, dims),
                &DeviceTensor::contiguous(&dk, dims),
                &DeviceTensor::contiguous(&dv, dims),
                &mask,
                None,
                &mut DeviceTensorMut::contiguous(&mut out_dense, dims),
                &mut lse.as_view_mut(),
            )
        })?;
        let dense = gpu.download(&out_dense)?;
        for &tau in &a.taus {
            let cfg = XAttnConfig { stride: a.stride, tau: Tau::Scalar(tau), causal: true };
            let score_ms = time(&gpu, a.iters, || {
                gpu.xattn_block_scores(&DeviceTensor::contiguous(&dq, dims), &DeviceTensor::contiguous(&dk, dims), &cfg)
                    .map(drop)
            })?;
            let scores = gpu.xattn_block_scores(
                &DeviceTensor::contiguous(&dq, dims),
                &DeviceTensor::contiguous(&dk, dims),
                &cfg,
            )?;
            let select_ms = time(&gpu, a.iters, || gpu.xattn_select(&scores, 1, 32, &cfg, len, len).map(drop))?;
            let sel = gpu.xattn_select(&scores, 1, 32, &cfg, len, len)?;
            let sparse_ms = time(&gpu, a.iters, || {
                gpu.attention_forward_block_sparse(
                    &DeviceTensor::contiguous(&dq, dims),
                    &DeviceTensor::contiguous(&dk, dims),
                    &DeviceTensor::contiguous(&dv, dims),
                    &mask,
                    &sel.as_view(),
                    None,
                    &mut DeviceTensorMut::contiguous(&mut out, dims),
                    &mut lse.as_view_mut(),
                )
            })?;
            let total_ms = time(&gpu, a.iters, || {
                gpu.xattention(
                    &DeviceTensor::contiguous(&dq, dims),
                    &DeviceTensor::contiguous(&dk, dims),
                    &DeviceTensor::contiguous(&dv, dims),
                    &cfg,
                    &mask,
                    &mut DeviceTensorMut::contiguous(&mut out, dims),
                    &mut lse.as_view_mut(),
                )
                .map(drop)
            })?;
            let selection = gpu.download(&sel)?;
            let nb = len.div_ceil(128);
            let visible_blocks = 32 * nb * (nb + 1) / 2;
            let density = selection.iter().filter(|&&s| s != 0).count() as f64 / visible_blocks as f64;
            let err = rel_error(&gpu.download(&out)?, &dense);
            println!(
                "L={len:6} tau={tau:.2}: scoring {score_ms:8.3} ms + selection {select_ms:7.3} ms + sparse {sparse_ms:8.3} ms = total {total_ms:8.3} ms | dense causal {dense_ms:8.3} ms | {:.2}x, (scoring+selection)/dense {:.1}% | density {:.3} | rel err {err:.2e}",
                dense_ms / total_ms,
                100.0 * (score_ms + select_ms) / dense_ms,
                density
            );
            results.push(serde_json::json!({
                "case": format!("xattn_{}k", len / 1024), "impl": "maskattn", "tau": tau, "stride": a.stride, "L": len,
                "H": 32, "D": 128, "dtype": "bfloat16", "scoring_ms": score_ms, "selection_ms": select_ms,
                "sparse_attention_ms": sparse_ms, "ms": total_ms, "dense_causal_ms": dense_ms,
                "speedup_vs_dense": dense_ms / total_ms, "density": density, "rel_error_vs_dense": err,
            }));
        }
    }
    if let Some(path) = a.json {
        let commit = std::env::var("MASKATTN_COMMIT")
            .ok()
            .or_else(|| std::fs::read_to_string(".gpu/COMMIT").ok().map(|s| s.trim().to_string()))
            .unwrap_or_else(|| "unknown".into());
        std::fs::write(
            &path,
            serde_json::to_string_pretty(
                &serde_json::json!({ "device": device, "commit": commit, "results": results }),
            )?,
        )?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
