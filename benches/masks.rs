//! Host cost of building each mask at the canonical video shapes (src/cases.rs), against
//! `Mask::causal` of the same shape (the floor: one interval per row computed from q
//! alone) and against filling the dense `[Lq, Lk]` boolean mask that dense-mask
//! attention takes instead; and the host side of `Gpu::upload_mask` for each mask (the
//! forward's query-tile launch order, and copying the intervals out). CPU only: builds
//! and runs without the `cuda` feature.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use maskattn::{cases, tiles, Mask, Segment, VideoLayout};

/// The dense boolean mask that dense-mask attention needs, filled from the intervals.
fn dense_bool(mask: &Mask) -> Vec<bool> {
    let lk = mask.len_k();
    let mut dense = vec![false; mask.len_q() * lk];
    for (row, &[s0, e0, s1, e1]) in dense.chunks_exact_mut(lk).zip(mask.intervals()) {
        row[s0 as usize..e0 as usize].fill(true);
        row[s1 as usize..e1 as usize].fill(true);
    }
    dense
}

/// What `Gpu::upload_mask` does on the host before its two copies to the device: the
/// launch order of the forward's query tiles at D = 128, and the intervals copied into
/// an owned buffer (here a `Vec`, there the device's).
fn upload_tables(mask: &Mask) -> (Vec<i32>, Vec<i32>) {
    let shape = tiles::forward_tiles(128).expect("D = 128 is supported");
    (mask.as_flat().to_vec(), tiles::query_tile_order(mask, shape))
}

/// Few samples: one dense mask at L = 16,576 is 275 MB and takes hundreds of milliseconds.
const DENSE_SAMPLES: usize = 10;

fn video(c: &mut Criterion) {
    // The layouts of the fwbc cases, plus the 256 frames of 512 tokens, whose
    // dense mask (17 GB) is not built.
    let shapes = [
        ("fwbc_t16", "text:64,frames:16x576,text:128", true),
        ("fwbc_t64", "text:64,frames:64x256,text:128", true),
        ("video_t256", "text:64,frames:256x512,text:128", false),
    ];
    for (name, layout, dense) in shapes {
        let layout: VideoLayout = layout.parse().expect("layout");
        if let Ok(case) = cases::case(name, 32, 128) {
            assert_eq!(case.mask, Mask::frame_block_causal(&layout).unwrap(), "{name} drifted from src/cases.rs");
        }
        let l = layout.len();
        let frame = match layout.segments()[1] {
            Segment::Frames { tokens, .. } => tokens,
            _ => unreachable!("the second segment is the video"),
        };
        let docs: Vec<usize> =
            [64].into_iter().chain(std::iter::repeat_n(frame, layout.frames())).chain([128]).collect();
        let mut group = c.benchmark_group(format!("{name}_L{l}"));
        group.bench_function("causal", |b| b.iter(|| Mask::causal(black_box(l), l).unwrap()));
        group
            .bench_function("frame_block_causal", |b| b.iter(|| Mask::frame_block_causal(black_box(&layout)).unwrap()));
        group.bench_function("full_visual", |b| b.iter(|| Mask::full_visual(black_box(&layout)).unwrap()));
        group.bench_function("frame_block", |b| b.iter(|| Mask::frame_block(black_box(&layout)).unwrap()));
        // A window of one frame with the leading text as sinks, and one document per
        // frame: the other self-attention constructors at the same length.
        group
            .bench_function("sliding_window", |b| b.iter(|| Mask::sliding_window(black_box(l), l, frame, 64).unwrap()));
        group.bench_function("document", |b| b.iter(|| Mask::document(black_box(&docs), true).unwrap()));
        let mask = Mask::frame_block_causal(&layout).unwrap();
        group.bench_function("upload_tables_causal", |b| {
            let causal = Mask::causal(l, l).unwrap();
            b.iter(|| upload_tables(black_box(&causal)))
        });
        group.bench_function("upload_tables_frame_block_causal", |b| b.iter(|| upload_tables(black_box(&mask))));
        if dense {
            group.sample_size(DENSE_SAMPLES);
            group.bench_function("dense_bool", |b| b.iter(|| dense_bool(black_box(&mask))));
        }
        group.finish();
    }
}

fn ccam(c: &mut Criterion) {
    for (name, frames) in [("ccam_t16_b8", 16), ("ccam_t96_b1", 96)] {
        let (lq, lk) = (1024, frames * 729);
        let case = cases::case(name, 32, 128).expect("canonical case");
        assert_eq!(case.mask, Mask::causal_cross(lq, frames, 729).unwrap(), "{name} drifted from src/cases.rs");
        let mut group = c.benchmark_group(format!("{name}_{lq}x{lk}"));
        group.bench_function("causal", |b| b.iter(|| Mask::causal(black_box(lq), lk).unwrap()));
        group.bench_function("causal_cross", |b| b.iter(|| Mask::causal_cross(black_box(lq), frames, 729).unwrap()));
        group.bench_function("full", |b| b.iter(|| Mask::full(black_box(lq), lk).unwrap()));
        group.bench_function("upload_tables_causal_cross", |b| b.iter(|| upload_tables(black_box(&case.mask))));
        // CrossLMM's frame-local cross-attention on the same shape needs the 1024
        // queries to split evenly over the frames.
        if lq % frames == 0 {
            group.bench_function("cross_frame_local", |b| {
                b.iter(|| Mask::cross_frame_local(black_box(frames), lq / frames, 729).unwrap())
            });
        }
        group.sample_size(DENSE_SAMPLES);
        group.bench_function("dense_bool", |b| b.iter(|| dense_bool(black_box(&case.mask))));
        group.finish();
    }
}

criterion_group!(benches, video, ccam);
criterion_main!(benches);
