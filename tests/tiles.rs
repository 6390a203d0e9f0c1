//! The host build of csrc/mask_tiles.h (the code the kernels run) against brute
//! force: FULL tiles hold no masked pair, EMPTY tiles no visible pair, and the walked
//! key tiles cover every visible pair; summaries merge like the rows they summarize.

mod common;

use common::{arb_mask, config};
use maskattn::tiles::{self, TileClass, TileShape};
use proptest::prelude::*;

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn classification_is_sound_and_the_walk_covers_every_visible_pair(
        mask in arb_mask(150), bm in 1usize..70, bn in 1usize..70,
    ) {
        let shape = TileShape::new(bm, bn).unwrap();
        let classes = tiles::tile_classes(&mask, shape);
        let key_tiles = mask.len_k().div_ceil(bn);
        for qt in 0..mask.len_q().div_ceil(bm) {
            let rows = qt * bm..((qt + 1) * bm).min(mask.len_q());
            let walked = tiles::key_tile_range(&tiles::summarize(&mask, rows.clone()), bn);
            for kt in 0..key_tiles {
                let keys = kt * bn..(kt + 1) * bn;
                let visible = rows.clone().flat_map(|q| keys.clone().map(move |k| (q, k)))
                    .filter(|&(q, k)| mask.is_visible(q, k)).count();
                let pairs = rows.len() * keys.len();
                match classes[qt * key_tiles + kt] {
                    TileClass::Empty => prop_assert_eq!(visible, 0, "EMPTY tile ({}, {}) has visible pairs", qt, kt),
                    TileClass::Full => prop_assert_eq!(visible, pairs, "FULL tile ({}, {}) has masked pairs", qt, kt),
                    TileClass::Partial => {}
                }
                if visible > 0 {
                    prop_assert!(walked.contains(&kt), "tile ({}, {}) has visible pairs outside the walk {:?}", qt, kt, walked);
                }
            }
        }
    }

    #[test]
    fn summaries_merge_like_their_rows(mask in arb_mask(150), a in any::<prop::sample::Index>(), b in any::<prop::sample::Index>()) {
        let l = mask.len_q();
        let (x, y) = { let (x, y) = (a.index(l + 1), b.index(l + 1)); (x.min(y), x.max(y)) };
        let whole = tiles::summarize(&mask, 0..l);
        let parts = [tiles::summarize(&mask, 0..x), tiles::summarize(&mask, x..y), tiles::summarize(&mask, y..l)];
        let left = tiles::merge(&tiles::merge(&parts[0], &parts[1]), &parts[2]);
        let right = tiles::merge(&parts[2], &tiles::merge(&parts[1], &parts[0]));
        prop_assert_eq!(format!("{whole:?}"), format!("{left:?}"));
        prop_assert_eq!(format!("{whole:?}"), format!("{right:?}"));
    }

    #[test]
    fn heavy_query_tiles_are_scheduled_first(mask in arb_mask(150), bm in 1usize..70, bn in 1usize..70) {
        let shape = TileShape::new(bm, bn).unwrap();
        let order = tiles::query_tile_order(&mask, shape);
        let mut sorted = order.clone();
        sorted.sort();
        prop_assert_eq!(sorted, (0..mask.len_q().div_ceil(bm) as i32).collect::<Vec<_>>());
        let work = |t: i32| tiles::key_tile_range(&tiles::summarize(&mask, t as usize * bm..(t as usize + 1) * bm), bn).len();
        prop_assert!(order.windows(2).all(|w| work(w[0]) >= work(w[1])));
    }
}

#[test]
fn causal_tiles_are_classified_tightly() {
    // 256 x 256 causal in 64 x 64 tiles: 4 diagonal PARTIAL, 6 FULL below, 6 EMPTY above.
    let mask = maskattn::Mask::causal(256, 256).unwrap();
    let st = tiles::TileStats::of(&mask, TileShape::new(64, 64).unwrap());
    assert_eq!((st.partial, st.full, st.empty), (4, 6, 6));
    // Frame-wise block causal: the gap between text prefix and frame is skipped.
    let layout = "text:64,frames:4x64".parse().unwrap();
    let mask = maskattn::Mask::frame_block(&layout).unwrap();
    let st = tiles::TileStats::of(&mask, TileShape::new(64, 64).unwrap());
    // The text tile is causal (one PARTIAL diagonal tile); each frame tile has two FULL tiles
    // (text, own frame) and walks the skipped frames between them.
    assert_eq!((st.full, st.partial, st.walked), (4 * 2, 1, 1 + (2 + 3 + 4 + 5)), "{st:?}");
}

/// Key lengths up to `i32::MAX`: the last tile ends at 2^31, past `i32::MAX`, and the
/// walk's end is formed without overflow (it used to wrap negative, making the walk
/// empty: O = 0, LSE = -inf for a mask that sees every key).
#[test]
fn tile_arithmetic_holds_at_i32_max_keys() {
    let len = i32::MAX as usize;
    for mask in [
        maskattn::Mask::full(3, len).unwrap(),
        // Rows that see the first 5 and the last 3 keys.
        maskattn::Mask::from_intervals(len, vec![[0, 5, i32::MAX - 3, i32::MAX]; 2]).unwrap(),
    ] {
        for bn in [64, 128, 96, 1] {
            let s = tiles::summarize(&mask, 0..mask.len_q());
            let tiles_needed = len.div_ceil(bn);
            assert_eq!(tiles::key_tile_range(&s, bn), 0..tiles_needed, "{bn}");
            let last_tile = (tiles_needed - 1) * bn..tiles_needed * bn;
            // The last tile reaches past the keys, so it is not FULL; with bn = 1 it is
            // the last key, which every row sees.
            let want = if bn == 1 { TileClass::Full } else { TileClass::Partial };
            assert_eq!(tiles::classify(&s, last_tile), want, "{bn}");
        }
    }
    let s = tiles::summarize(&maskattn::Mask::full(1, len).unwrap(), 0..1);
    assert_eq!(tiles::classify(&s, 64..128), TileClass::Full);
}
