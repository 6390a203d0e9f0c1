//! `maskattn`: the command-line face of the crate.
//!
//! ```text
//! cargo run --release --example maskattn -- mask fwbc --layout text:35,frames:8x64,text:40 --png fwbc.png
//! cargo run --release --example maskattn -- mask ccam --queries 1024 --frames 16 --tokens 729 --png ccam.png --json ccam.json
//! ```
//! `mask` builds any mask from its parameters, prints its statistics (visible pairs,
//! density, the kernel's tile classes) and writes a PNG picture and the row intervals
//! as JSON.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use maskattn::tiles::{self, TileClass, TileShape, TileStats};
use maskattn::{Mask, VideoLayout};

#[derive(Parser)]
#[command(name = "maskattn", about = "Structured attention masks for video LLMs")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build a mask, print its statistics, write a picture and its intervals.
    Mask {
        #[command(subcommand)]
        kind: MaskArgs,
        #[command(flatten)]
        out: Output,
    },
    /// The main job: every mask family at real video shapes. On a GPU, time and
    /// effective TFLOP/s against dense attention; without one, says so and runs the
    /// kernels on the CPU backend on small shapes of every family, against the f64
    /// reference. Pictures go to --out.
    Demo {
        /// Folder for the mask pictures.
        #[arg(long, default_value = "out")]
        out: PathBuf,
        /// Timed launches per measurement on the GPU.
        #[arg(long, default_value_t = 20)]
        iters: usize,
    },
}

#[derive(Subcommand)]
enum MaskArgs {
    /// Causal, bottom-right aligned (k <= q + Lk - Lq).
    Causal {
        #[arg(long)]
        lq: usize,
        #[arg(long)]
        lk: Option<usize>,
    },
    /// No mask (CrossLMM full cross-attention).
    Full {
        #[arg(long)]
        lq: usize,
        #[arg(long)]
        lk: usize,
    },
    /// TC-LLaVA frame-wise block causal.
    Fwbc {
        #[arg(long)]
        layout: VideoLayout,
    },
    /// TC-LLaVA full visual.
    FullVisual {
        #[arg(long)]
        layout: VideoLayout,
    },
    /// TC-LLaVA frame-wise block.
    FrameBlock {
        #[arg(long)]
        layout: VideoLayout,
    },
    /// Video-CCAM causal cross-attention: Nq queries over T frames of N keys.
    Ccam {
        #[arg(long)]
        queries: usize,
        #[arg(long)]
        frames: usize,
        #[arg(long)]
        tokens: usize,
    },
    /// CrossLMM frame-local cross-attention.
    CrossLocal {
        #[arg(long)]
        frames: usize,
        #[arg(long)]
        queries_per_frame: usize,
        #[arg(long)]
        tokens: usize,
    },
    /// Sliding window with attention sinks.
    Window {
        #[arg(long)]
        lq: usize,
        #[arg(long)]
        lk: Option<usize>,
        #[arg(long)]
        window: usize,
        #[arg(long, default_value_t = 0)]
        sink: usize,
    },
    /// Packed documents, e.g. --docs 100,250,80.
    Document {
        #[arg(long, value_delimiter = ',')]
        docs: Vec<usize>,
        #[arg(long)]
        causal: bool,
    },
    /// Row intervals from a JSON file {"len_k": N, "intervals": [[s0,e0,s1,e1], ...]}.
    Intervals { file: PathBuf },
}

#[derive(Args)]
struct Output {
    /// Write a picture of the mask (visible pairs dark, tinted by tile class).
    #[arg(long, global = true)]
    png: Option<PathBuf>,
    /// Write the row intervals and statistics as JSON.
    #[arg(long, global = true)]
    json: Option<PathBuf>,
    /// Tile shape for the statistics and the picture's tint, BLOCK_MxBLOCK_N.
    #[arg(long, global = true, default_value = "128x64")]
    tile: String,
    /// Largest side of the picture in pixels (one pixel covers several tokens beyond).
    #[arg(long, global = true, default_value_t = 1024)]
    px: usize,
}

fn build(kind: MaskArgs) -> Result<Mask, Box<dyn std::error::Error>> {
    Ok(match kind {
        MaskArgs::Causal { lq, lk } => Mask::causal(lq, lk.unwrap_or(lq))?,
        MaskArgs::Full { lq, lk } => Mask::full(lq, lk)?,
        MaskArgs::Fwbc { layout } => Mask::frame_block_causal(&layout)?,
        MaskArgs::FullVisual { layout } => Mask::full_visual(&layout)?,
        MaskArgs::FrameBlock { layout } => Mask::frame_block(&layout)?,
        MaskArgs::Ccam { queries, frames, tokens } => Mask::causal_cross(queries, frames, tokens)?,
        MaskArgs::CrossLocal { frames, queries_per_frame, tokens } => {
            Mask::cross_frame_local(frames, queries_per_frame, tokens)?
        }
        MaskArgs::Window { lq, lk, window, sink } => Mask::sliding_window(lq, lk.unwrap_or(lq), window, sink)?,
        MaskArgs::Document { docs, causal } => Mask::document(&docs, causal)?,
        MaskArgs::Intervals { file } => {
            let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&file)?)?;
            let len_k = v["len_k"].as_u64().ok_or("missing len_k")? as usize;
            let rows: Vec<[i32; 4]> = serde_json::from_value(v["intervals"].clone())?;
            Mask::from_intervals(len_k, rows)?
        }
    })
}

fn parse_tile(s: &str) -> Result<TileShape, Box<dyn std::error::Error>> {
    let (m, n) = s.split_once('x').ok_or("tile must be MxN, e.g. 128x64")?;
    Ok(TileShape::new(m.parse()?, n.parse()?)?)
}

/// RGB picture: each pixel covers `cell_q x cell_k` (q, k) pairs (the axes are
/// scaled separately so that cross-attention masks with Lk >> Lq stay readable); its
/// darkness is the visible fraction, its tint the class of the kernel tile it is in.
fn render(mask: &Mask, tile: TileShape, px: usize) -> (usize, usize, Vec<u8>) {
    let (cq, ck) = (mask.len_q().div_ceil(px.max(1)), mask.len_k().div_ceil(px.max(1)));
    let (w, h) = (mask.len_k().div_ceil(ck), mask.len_q().div_ceil(cq));
    let mut visible = vec![0u64; w * h];
    for (q, iv) in mask.intervals().iter().enumerate() {
        for (s, e) in [(iv[0] as usize, iv[1] as usize), (iv[2] as usize, iv[3] as usize)] {
            for x in s / ck..e.div_ceil(ck) {
                visible[(q / cq) * w + x] += (e.min((x + 1) * ck) - s.max(x * ck)) as u64;
            }
        }
    }
    let classes = tiles::tile_classes(mask, tile);
    let key_tiles = mask.len_k().div_ceil(tile.block_n());
    let mut rgb = Vec::with_capacity(w * h * 3);
    for y in 0..h {
        for x in 0..w {
            let rows = (mask.len_q().min((y + 1) * cq) - y * cq) as f64;
            let cols = (mask.len_k().min((x + 1) * ck) - x * ck) as f64;
            let frac = visible[y * w + x] as f64 / (rows * cols);
            let tint: [f64; 3] = match classes[(y * cq / tile.block_m()) * key_tiles + x * ck / tile.block_n()] {
                TileClass::Empty => [255.0, 255.0, 255.0],
                TileClass::Full => [222.0, 241.0, 222.0],
                TileClass::Partial => [252.0, 228.0, 200.0],
            };
            let ink = [25.0, 60.0, 140.0];
            rgb.extend((0..3).map(|c| (tint[c] * (1.0 - frac) + ink[c] * frac).round() as u8));
        }
    }
    (w, h, rgb)
}

fn write_png(path: &PathBuf, (w, h, rgb): (usize, usize, Vec<u8>)) -> Result<(), Box<dyn std::error::Error>> {
    let mut enc = png::Encoder::new(std::io::BufWriter::new(std::fs::File::create(path)?), w as u32, h as u32);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    enc.write_header()?.write_image_data(&rgb)?;
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    match Cli::parse().command {
        Command::Mask { kind, out } => mask(kind, out),
        Command::Demo { out, iters } => demo(&out, iters),
    }
}

/// The demo's masks: (name, mask, dense mask of the same shape, batch).
fn demo_masks(small: bool) -> Result<Vec<(&'static str, Mask, Mask, usize)>, maskattn::Error> {
    let (frames, tokens, text) = if small { (4, 49, 16) } else { (16, 576, 64) };
    let layout: VideoLayout = format!("text:{text},frames:{frames}x{tokens},text:{}", 2 * text).parse()?;
    let l = layout.len();
    let (nq, ccam_frames, ccam_tokens) = if small { (64, 4, 49) } else { (1024, 16, 729) };
    let docs: Vec<usize> = if small { vec![100, 37, 180] } else { vec![3000, 5000, 1384, 7000] };
    let dl: usize = docs.iter().sum();
    Ok(vec![
        ("fwbc", Mask::frame_block_causal(&layout)?, Mask::causal(l, l)?, 1),
        ("full_visual", Mask::full_visual(&layout)?, Mask::causal(l, l)?, 1),
        ("frame_block", Mask::frame_block(&layout)?, Mask::causal(l, l)?, 1),
        (
            "ccam",
            Mask::causal_cross(nq, ccam_frames, ccam_tokens)?,
            Mask::full(nq, ccam_frames * ccam_tokens)?,
            if small { 1 } else { 8 },
        ),
        (
            "cross_local",
            Mask::cross_frame_local(ccam_frames, nq / ccam_frames, ccam_tokens)?,
            Mask::full(nq, ccam_frames * ccam_tokens)?,
            1,
        ),
        ("window_sink", Mask::sliding_window(l, l, l / 8, 4)?, Mask::causal(l, l)?, 1),
        ("document", Mask::document(&docs, true)?, Mask::causal(dl, dl)?, 1),
    ])
}

fn demo(out: &std::path::Path, iters: usize) -> Result<(), Box<dyn std::error::Error>> {
    std::fs::create_dir_all(out)?;
    #[cfg(feature = "cuda")]
    match maskattn::cuda::Gpu::new(0) {
        Ok(gpu) => return demo_gpu(&gpu, out, iters),
        Err(e) => println!("no GPU ({e}): running the kernels on the CPU backend on small shapes instead"),
    }
    #[cfg(not(feature = "cuda"))]
    println!("built without the `cuda` feature: running the kernels on the CPU backend on small shapes");
    let _ = iters;
    demo_cpu(out)
}

#[cfg(feature = "cuda")]
fn demo_gpu(gpu: &maskattn::cuda::Gpu, out: &std::path::Path, iters: usize) -> Result<(), Box<dyn std::error::Error>> {
    use maskattn::cuda::CaseBuffers;
    let (hq, d) = (32, 128);
    println!("{} | bf16, Hq=Hkv={hq}, D={d}; eff TFLOP/s = 4*B*Hq*D*visible pairs / time", gpu.name()?);
    println!(
        "{:12} {:>6} {:>7} {:>8} {:>10} {:>8} {:>10} {:>7} {:>10}",
        "mask", "B", "Lq", "Lk", "ms", "TFLOP/s", "dense ms", "speedup", "naive ms"
    );
    let masks = demo_masks(false)?;
    let n = masks.len();
    for (i, (name, mask, dense, batch)) in masks.into_iter().enumerate() {
        eprintln!("[{}/{n}] {name}: Lq={} Lk={} ...", i + 1, mask.len_q(), mask.len_k());
        write_png(&out.join(format!("{name}.png")), render(&mask, tiles::forward_tiles(d)?, 1024))?;
        let case = maskattn::cases::Case { name, batch, heads_q: hq, heads_kv: hq, head_dim: d, mask, dense };
        let mut bufs = CaseBuffers::<half::bf16>::new(gpu, &case)?;
        let ms = gpu.time_forward(&mut bufs, &case.mask, 3, iters)?;
        let dense_ms = gpu.time_forward(&mut bufs, &case.dense, 3, iters)?;
        // The naive baseline (S = QK^T in memory, softmax, PV); "-" where its f32
        // score matrix of one head exceeds its scratch limit.
        let naive = match gpu.time_naive(&mut bufs, &case.mask, 1, iters.min(3)) {
            Ok(ms) => format!("{ms:.3}"),
            Err(maskattn::Error::Unsupported(_)) => "-".into(),
            Err(e) => return Err(e.into()),
        };
        println!(
            "{:12} {:>6} {:>7} {:>8} {:>10.3} {:>8.1} {:>10.3} {:>6.2}x {:>10}",
            name,
            batch,
            case.mask.len_q(),
            case.mask.len_k(),
            ms,
            case.flops(&case.mask) / ms / 1e9,
            dense_ms,
            dense_ms / ms,
            naive
        );
    }
    println!("pictures in {}", out.display());
    Ok(())
}

/// Without a GPU: the kernels themselves, on the CPU backend (the same csrc/ source
/// compiled for the host, warp-synchronous), forward and backward on small shapes of
/// every family, against the f64 reference on the same bf16 inputs. What it shows is
/// the kernels' arithmetic and the work they skip, not their speed.
#[cfg(feature = "cpu")]
fn demo_cpu(out: &std::path::Path) -> Result<(), Box<dyn std::error::Error>> {
    use half::bf16;
    use maskattn::cpu::CpuBackend;
    use maskattn::{reference, Kernels};
    let (b, hq, hkv, d) = (1, 2, 1, 64);
    let tile = tiles::forward_tiles(d)?;
    println!(
        "the kernels on the CPU backend vs the f64 reference on the same bf16 inputs; B={b} Hq={hq} Hkv={hkv} D={d}, \
         forward tiles {}x{}",
        tile.block_m(),
        tile.block_n()
    );
    println!(
        "{:12} {:>5} {:>5} {:>8} {:>11} {:>10} {:>10} {:>10} {:>10} {:>9}",
        "mask", "Lq", "Lk", "density", "FULL/PART", "fwd s", "out err", "half ulp", "bwd s", "dq err"
    );
    let cpu = CpuBackend::new();
    for (name, mask, _, _) in demo_masks(true)? {
        write_png(&out.join(format!("{name}.png")), render(&mask, tile, 1024))?;
        // Deterministic inputs, rounded to bf16; the reference gets the rounded values.
        let values = |l: usize, h: usize, salt: usize| {
            ndarray::Array4::from_shape_fn((b, l, h, d), |(_, i, j, c)| {
                bf16::from_f64((((i * 31 + j * 17 + c * 7 + salt) % 97) as f64 / 48.5 - 1.0) * 0.5)
            })
        };
        let (q, k, v) = (values(mask.len_q(), hq, 0), values(mask.len_k(), hkv, 1), values(mask.len_k(), hkv, 2));
        let d_out = values(mask.len_q(), hq, 3);
        let want = reference::attention(q.view(), k.view(), v.view(), &mask, None)?;
        let want_grad = reference::attention_backward(q.view(), k.view(), v.view(), &want, d_out.view(), &mask, None)?;

        cpu.reset_counters();
        let t0 = std::time::Instant::now();
        let (got, _lse) = cpu.attention(q.view(), k.view(), v.view(), &mask, None)?;
        let fwd_s = t0.elapsed().as_secs_f64();
        let tiles_walked = cpu.counters().key_tiles;
        let t1 = std::time::Instant::now();
        let (dq, _dk, _dv) = cpu.attention_grad(q.view(), k.view(), v.view(), d_out.view(), &mask, None, false)?;
        let bwd_s = t1.elapsed().as_secs_f64();

        let max_err = |a: &ndarray::Array4<bf16>, b: &ndarray::Array4<f64>| {
            a.iter().zip(b).map(|(x, y)| (f64::from(*x) - y).abs()).fold(0.0, f64::max)
        };
        // The output's own rounding: half a bf16 ulp of the largest output.
        let ulp = want.out.iter().fold(0.0f64, |m, x| m.max(x.abs())) * 2f64.powi(-8);
        println!(
            "{:12} {:>5} {:>5} {:>7.1}% {:>5}/{:<5} {:>10.2} {:>10.1e} {:>10.1e} {:>10.2} {:>9.1e}",
            name,
            mask.len_q(),
            mask.len_k(),
            100.0 * mask.density(),
            tiles_walked[1],
            tiles_walked[2],
            fwd_s,
            max_err(&got, &want.out),
            ulp,
            bwd_s,
            max_err(&dq, &want_grad.dq),
        );
    }
    println!("FULL/PART: key tiles the forward's CTAs walked, by class (EMPTY ones are never loaded);");
    println!("half ulp: half a bf16 ulp of the largest output, the error of rounding the exact output once");
    println!("pictures in {}", out.display());
    Ok(())
}

/// Built without the CPU backend: only the mask pictures and statistics.
#[cfg(not(feature = "cpu"))]
fn demo_cpu(out: &std::path::Path) -> Result<(), Box<dyn std::error::Error>> {
    println!("built without the `cpu` feature: no kernel can run here; writing the mask pictures only");
    for (name, mask, _, _) in demo_masks(true)? {
        let tile = tiles::forward_tiles(64)?;
        let st = TileStats::of(&mask, tile);
        println!(
            "{name:12} {} x {}: {} FULL, {} PARTIAL, {} EMPTY tiles",
            mask.len_q(),
            mask.len_k(),
            st.full,
            st.partial,
            st.empty
        );
        write_png(&out.join(format!("{name}.png")), render(&mask, tile, 1024))?;
    }
    println!("pictures in {}", out.display());
    Ok(())
}

fn mask(kind: MaskArgs, out: Output) -> Result<(), Box<dyn std::error::Error>> {
    let tile = parse_tile(&out.tile)?;
    let t0 = std::time::Instant::now();
    let mask = build(kind)?;
    let build_ms = t0.elapsed().as_secs_f64() * 1e3;
    let st = TileStats::of(&mask, tile);
    let total = st.query_tiles * st.key_tiles;
    println!("mask          {:?}", mask.kind());
    println!("Lq x Lk       {} x {}", mask.len_q(), mask.len_k());
    println!(
        "visible pairs {} ({:.2}% of {})",
        mask.visible_pairs(),
        100.0 * mask.density(),
        mask.len_q() as u64 * mask.len_k() as u64
    );
    println!("build         {build_ms:.3} ms (row intervals, host)");
    println!("tiles {}x{}   {} query x {} key tiles", tile.block_m(), tile.block_n(), st.query_tiles, st.key_tiles);
    let pct = |n: usize| 100.0 * n as f64 / total as f64;
    println!("  FULL        {:8} ({:.1}%)  computed, no mask", st.full, pct(st.full));
    println!("  PARTIAL     {:8} ({:.1}%)  computed, masked per element", st.partial, pct(st.partial));
    println!("  EMPTY       {:8} ({:.1}%)  skipped, never loaded", st.empty, pct(st.empty));
    if let Some(path) = &out.png {
        let img = render(&mask, tile, out.px);
        println!("png           {} ({}x{} px)", path.display(), img.0, img.1);
        write_png(path, img)?;
    }
    if let Some(path) = &out.json {
        let json = serde_json::json!({
            "kind": format!("{:?}", mask.kind()),
            "len_q": mask.len_q(),
            "len_k": mask.len_k(),
            "visible_pairs": mask.visible_pairs(),
            "density": mask.density(),
            "tile": { "block_m": tile.block_m(), "block_n": tile.block_n(), "full": st.full, "partial": st.partial, "empty": st.empty },
            "intervals": mask.intervals(),
        });
        std::fs::write(path, serde_json::to_string(&json)?)?;
        println!("json          {}", path.display());
    }
    Ok(())
}
