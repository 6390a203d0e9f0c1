//! The CPU emulator of the forward kernel's schedule equals the f64 reference:
//! random masks, shapes that are not tile multiples (576 and 729 tokens per frame),
//! GQA, rows that see no key.

mod common;

use common::{arb_mask, config, random_array};
use maskattn::tiles::TileShape;
use maskattn::{emulator, reference, Mask, VideoLayout};
use proptest::prelude::*;

/// |a - b| <= 1e-10 * (1 + |b|) everywhere, and -inf LSE exactly where the
/// reference has it: both run in f64 and differ only in summation order.
fn assert_same(
    mask: &Mask,
    b: usize,
    hq: usize,
    hkv: usize,
    d: usize,
    seed: u64,
    tile: TileShape,
) -> Result<(), TestCaseError> {
    let q = random_array((b, mask.len_q(), hq, d), seed);
    let k = random_array((b, mask.len_k(), hkv, d), seed + 1) * 2.0;
    let v = random_array((b, mask.len_k(), hkv, d), seed + 2);
    let want = reference::attention(q.view(), k.view(), v.view(), mask, None).unwrap();
    let (got, sched) = emulator::forward(q.view(), k.view(), v.view(), mask, None, tile).unwrap();
    for (g, w) in got.out.iter().zip(want.out.iter()) {
        prop_assert!((g - w).abs() <= 1e-10 * (1.0 + w.abs()), "out {} vs {}", g, w);
    }
    for (g, w) in got.lse.iter().zip(want.lse.iter()) {
        if *w == f64::NEG_INFINITY {
            prop_assert_eq!(*g, f64::NEG_INFINITY);
        } else {
            prop_assert!((g - w).abs() <= 1e-10 * (1.0 + w.abs()), "lse {} vs {}", g, w);
        }
    }
    prop_assert!(got.out.iter().all(|x| x.is_finite()));
    let stats = maskattn::tiles::TileStats::of(mask, tile);
    prop_assert_eq!((sched.full, sched.partial), (stats.full * b * hq, stats.partial * b * hq));
    Ok(())
}

fn heads() -> impl Strategy<Value = (usize, usize)> {
    prop_oneof![Just((1, 1)), Just((2, 1)), Just((4, 2)), Just((3, 3))]
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn emulator_equals_reference(
        mask in arb_mask(120), b in 1usize..3, (hq, hkv) in heads(), d in 1usize..9,
        bm in prop::sample::select(vec![16usize, 32, 64, 128]), bn in prop::sample::select(vec![16usize, 32, 64, 128]),
        seed in any::<u32>(),
    ) {
        assert_same(&mask, b, hq, hkv, d, seed as u64, TileShape::new(bm, bn).unwrap())?;
    }

    #[test]
    fn emulator_equals_reference_at_video_shapes(
        tokens in prop::sample::select(vec![576usize, 729]), frames in 1usize..3, text in 0usize..70,
        kind in 0usize..4, seed in any::<u32>(),
    ) {
        let layout: VideoLayout = format!("text:{text},frames:{frames}x{tokens},text:{}", text / 2 + 1).parse().unwrap();
        let mask = match kind {
            0 => Mask::frame_block_causal(&layout).unwrap(),
            1 => Mask::frame_block(&layout).unwrap(),
            2 => Mask::causal_cross(96, frames + 1, tokens).unwrap(),
            _ => Mask::sliding_window(layout.len(), layout.len(), 300, 4).unwrap(),
        };
        assert_same(&mask, 1, 2, 1, 4, seed as u64, TileShape::new(128, 64).unwrap())?;
    }
}

#[test]
fn rows_without_keys_give_zero_and_minus_infinity() {
    // Lq > Lk causal: the first 3 rows see nothing.
    let mask = Mask::causal(7, 4).unwrap();
    let q = random_array((1, 7, 1, 4), 1);
    let k = random_array((1, 4, 1, 4), 2);
    let (got, _) = emulator::forward(q.view(), k.view(), k.view(), &mask, None, TileShape::new(4, 2).unwrap()).unwrap();
    for r in 0..3 {
        assert_eq!(got.lse[[0, 0, r]], f64::NEG_INFINITY);
        assert!(got.out.slice(ndarray::s![0, r, 0, ..]).iter().all(|&x| x == 0.0));
    }
    assert!(got.lse[[0, 0, 3]].is_finite());
}

#[test]
fn shape_mismatches_are_errors() {
    let mask = Mask::causal(5, 5).unwrap();
    let x = random_array((1, 5, 2, 4), 0);
    let tile = TileShape::new(4, 4).unwrap();
    let short = random_array((1, 4, 2, 4), 0);
    assert!(emulator::forward(x.view(), short.view(), short.view(), &mask, None, tile).is_err());
    let gqa_bad = random_array((1, 5, 3, 4), 0);
    assert!(reference::attention(x.view(), gqa_bad.view(), gqa_bad.view(), &mask, None).is_err());
    assert!(reference::attention(x.view(), x.view(), x.view(), &mask, Some(f64::NAN)).is_err());
}

proptest! {
    #![proptest_config(config(256))]

    /// Attention over 2-4 key shards (each with its slice of the mask), merged through
    /// the LSE, equals attention over all keys.
    #[test]
    fn key_shards_merge_to_the_whole(mask in arb_mask(120), cuts in prop::collection::vec(any::<prop::sample::Index>(), 1..4), seed in any::<u32>()) {
        let lk = mask.len_k();
        let mut bounds: Vec<usize> = cuts.iter().map(|c| c.index(lk)).chain([0, lk]).collect();
        bounds.sort();
        bounds.dedup();
        let q = random_array((2, mask.len_q(), 2, 5), seed as u64);
        let kv = random_array((2, lk, 1, 5), seed as u64 + 1) * 2.0;
        let parts: Vec<_> = bounds.windows(2).map(|w| {
            let part_kv = kv.slice(ndarray::s![.., w[0]..w[1], .., ..]);
            let part_mask = mask.slice(0..mask.len_q(), w[0]..w[1]).unwrap();
            reference::attention(q.view(), part_kv, part_kv, &part_mask, None).unwrap()
        }).collect();
        let merged = reference::merge_partials(&parts).unwrap();
        let whole = reference::attention(q.view(), kv.view(), kv.view(), &mask, None).unwrap();
        for (m, w) in merged.out.iter().zip(&whole.out) {
            prop_assert!((m - w).abs() <= 1e-12 * (1.0 + w.abs()), "{} vs {}", m, w);
        }
        for (m, w) in merged.lse.iter().zip(&whole.lse) {
            prop_assert!(m == w || (m - w).abs() <= 1e-12 * (1.0 + w.abs()), "{} vs {}", m, w);
        }
    }
}

proptest! {
    #![proptest_config(config(256))]

    /// With an XAttention block selection the emulated kernel equals the reference's
    /// sparse attention (mask AND selected 128x128 blocks), per head.
    #[test]
    fn block_sparse_schedule_equals_the_sparse_reference(
        mask in arb_mask(400), bn in prop::sample::select(vec![32usize, 64, 128]), density in 0.0f64..1.0, seed in any::<u32>(),
    ) {
        let (b, hq, hkv, d) = (2, 2, 1, 4);
        let sel = maskattn::xattention::BlockSelection::from_fn(b, hq, mask.len_q(), mask.len_k(), false, |bi, h, qb, kb| {
            let mut x = (seed as u64) ^ ((bi * 1_000_003 + h * 10_007 + qb * 101 + kb) as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            x ^= x >> 29;
            x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
            x ^= x >> 32;
            (x % 1000) as f64 / 1000.0 < density
        }).unwrap();
        let q = random_array((b, mask.len_q(), hq, d), seed as u64);
        let k = random_array((b, mask.len_k(), hkv, d), seed as u64 + 1) * 2.0;
        let v = random_array((b, mask.len_k(), hkv, d), seed as u64 + 2);
        let want = maskattn::xattention::sparse_attention(q.view(), k.view(), v.view(), &mask, &sel, None).unwrap();
        let tile = TileShape::new(128, bn).unwrap();
        let (got, sched) = emulator::forward_block_sparse(q.view(), k.view(), v.view(), &mask, Some(&sel), None, tile).unwrap();
        for (g, w) in got.out.iter().zip(want.out.iter()) {
            prop_assert!((g - w).abs() <= 1e-10 * (1.0 + w.abs()), "out {} vs {}", g, w);
        }
        for (g, w) in got.lse.iter().zip(want.lse.iter()) {
            prop_assert!(g == w || (g - w).abs() <= 1e-10 * (1.0 + w.abs()), "lse {} vs {}", g, w);
        }
        let dense = emulator::forward(q.view(), k.view(), v.view(), &mask, None, tile).unwrap().1;
        prop_assert!(sched.full + sched.partial <= dense.full + dense.partial);
    }
}

#[test]
fn block_sparse_needs_tiles_inside_the_blocks() {
    let mask = Mask::causal(300, 300).unwrap();
    let sel = maskattn::xattention::BlockSelection::full(1, 1, 300, 300, true).unwrap();
    let x = random_array((1, 300, 1, 4), 0);
    for (m, n) in [(64, 64), (128, 96)] {
        let tile = TileShape::new(m, n).unwrap();
        assert!(emulator::forward_block_sparse(x.view(), x.view(), x.view(), &mask, Some(&sel), None, tile).is_err());
    }
    let other = maskattn::xattention::BlockSelection::full(1, 2, 300, 300, true).unwrap();
    let tile = TileShape::new(128, 64).unwrap();
    assert!(emulator::forward_block_sparse(x.view(), x.view(), x.view(), &mask, Some(&other), None, tile).is_err());
}
