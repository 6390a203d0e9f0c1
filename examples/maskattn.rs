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
    let Command::Mask { kind, out } = Cli::parse().command;
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
