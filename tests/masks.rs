//! Every mask constructor against its rule, written here independently and straight
//! from DESIGN.md section 1, on every (q, k) pair.

mod common;

use common::{arb_intervals, arb_layout, config};
use maskattn::{Error, Mask, Segment, VideoLayout};
use proptest::prelude::*;

/// Frame id of each position (-1 for text), and the start of its video segment.
fn frames_of(layout: &VideoLayout) -> (Vec<i64>, Vec<usize>) {
    let (mut fr, mut video_start, mut next_frame, mut pos) = (vec![], vec![], 0i64, 0usize);
    for s in layout.segments() {
        match *s {
            Segment::Text(n) => {
                fr.extend(std::iter::repeat_n(-1, n));
                video_start.extend(std::iter::repeat_n(usize::MAX, n));
            }
            Segment::Frames { frames, tokens } => {
                for f in 0..frames as i64 {
                    fr.extend(std::iter::repeat_n(next_frame + f, tokens));
                }
                video_start.extend(std::iter::repeat_n(pos, frames * tokens));
                next_frame += frames as i64;
            }
        }
        pos += s.len();
    }
    (fr, video_start)
}

/// The mask equals the predicate on every pair, is canonical, and counts right.
fn check(mask: &Mask, lq: usize, lk: usize, visible: impl Fn(usize, usize) -> bool) -> Result<(), TestCaseError> {
    prop_assert_eq!((mask.len_q(), mask.len_k()), (lq, lk));
    let mut pairs = 0u64;
    for q in 0..lq {
        let [s0, e0, s1, e1] = mask.intervals()[q];
        prop_assert!(0 <= s0 && s0 <= e0 && e0 <= lk as i32 && 0 <= s1 && s1 <= e1 && e1 <= lk as i32, "row {q}");
        prop_assert!(s0 < e0 || (s0, e0, s1, e1) == (0, 0, 0, 0), "row {q}: empty first slot with a second");
        prop_assert!(s1 == e1 && (s1, e1) == (0, 0) || e0 < s1, "row {q}: not sorted or touching");
        for k in 0..lk {
            let want = visible(q, k);
            prop_assert_eq!(mask.is_visible(q, k), want, "q={} k={} row={:?}", q, k, mask.intervals()[q]);
            pairs += want as u64;
        }
        prop_assert!(!mask.is_visible(q, lk));
    }
    prop_assert_eq!(mask.visible_pairs(), pairs);
    Ok(())
}

/// Number of maximal runs of visible keys in row q: what the row needs in intervals.
fn runs(lk: usize, visible: impl Fn(usize) -> bool) -> usize {
    (0..lk).filter(|&k| visible(k) && (k == 0 || !visible(k - 1))).count()
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn causal(lq in 1usize..80, lk in 1usize..80) {
        let m = Mask::causal(lq, lk).unwrap();
        check(&m, lq, lk, |q, k| (k as i64) <= q as i64 + lk as i64 - lq as i64)?;
    }

    #[test]
    fn full(lq in 1usize..40, lk in 1usize..40) {
        check(&Mask::full(lq, lk).unwrap(), lq, lk, |_, _| true)?;
    }

    #[test]
    fn frame_block_causal(layout in arb_layout(5, 9)) {
        let (fr, _) = frames_of(&layout);
        let l = layout.len();
        let m = Mask::frame_block_causal(&layout).unwrap();
        check(&m, l, l, |q, k| k <= q || (fr[q] >= 0 && fr[q] == fr[k]))?;
    }

    #[test]
    fn full_visual(layout in arb_layout(5, 9)) {
        let (fr, _) = frames_of(&layout);
        let l = layout.len();
        let rule = |q: usize, k: usize| k <= q || (fr[q] >= 0 && fr[k] >= 0);
        match Mask::full_visual(&layout) {
            Ok(m) => check(&m, l, l, rule)?,
            Err(Error::TooManyIntervals { row, needed, .. }) => {
                prop_assert!(needed > 2);
                prop_assert_eq!(runs(l, |k| rule(row, k)), needed);
            }
            Err(e) => return Err(TestCaseError::fail(e.to_string())),
        }
    }

    #[test]
    fn frame_block(layout in arb_layout(5, 9)) {
        let (fr, video_start) = frames_of(&layout);
        let l = layout.len();
        let rule = |q: usize, k: usize| {
            if fr[q] < 0 { k <= q } else { (fr[k] < 0 && k < video_start[q]) || fr[k] == fr[q] }
        };
        match Mask::frame_block(&layout) {
            Ok(m) => check(&m, l, l, rule)?,
            Err(Error::TooManyIntervals { row, needed, .. }) => {
                prop_assert!(needed > 2);
                prop_assert_eq!(runs(l, |k| rule(row, k)), needed);
            }
            Err(e) => return Err(TestCaseError::fail(e.to_string())),
        }
    }

    #[test]
    fn causal_cross(nq in 1usize..60, t in 1usize..7, n in 1usize..12) {
        let m = Mask::causal_cross(nq, t, n).unwrap();
        check(&m, nq, t * n, |q, k| k / n <= q * t / nq)?;
    }

    #[test]
    fn cross_frame_local(t in 1usize..6, p in 1usize..6, n in 1usize..10) {
        let m = Mask::cross_frame_local(t, p, n).unwrap();
        check(&m, t * p, t * n, |q, k| k / n == q / p)?;
    }

    #[test]
    fn sliding_window(lq in 1usize..70, lk in 1usize..70, w in 1usize..30, sink in 0usize..10) {
        let m = Mask::sliding_window(lq, lk, w, sink).unwrap();
        let shift = lk as i64 - lq as i64;
        check(&m, lq, lk, |q, k| {
            let (q, k) = (q as i64 + shift, k as i64);
            k <= q && (k < sink as i64 || k > q - w as i64)
        })?;
    }

    #[test]
    fn document(docs in prop::collection::vec(1usize..15, 1..6), causal in any::<bool>()) {
        let m = Mask::document(&docs, causal).unwrap();
        let doc: Vec<usize> = docs.iter().enumerate().flat_map(|(i, &n)| std::iter::repeat_n(i, n)).collect();
        let l = doc.len();
        check(&m, l, l, |q, k| doc[q] == doc[k] && (!causal || k <= q))?;
    }

    #[test]
    fn from_intervals((lk, rows) in (1usize..50).prop_flat_map(|k| (Just(k), (1usize..40).prop_flat_map(move |q| arb_intervals(q, k))))) {
        let m = Mask::from_intervals(lk, rows.clone()).unwrap();
        check(&m, rows.len(), lk, |q, k| {
            let [s0, e0, s1, e1] = rows[q];
            let k = k as i32;
            (s0..e0).contains(&k) || (s1..e1).contains(&k)
        })?;
    }

    #[test]
    fn slice_and_block_diagonal(a in common::arb_mask(40), b in common::arb_mask(40), cut in any::<(prop::sample::Index, prop::sample::Index, prop::sample::Index, prop::sample::Index)>()) {
        let packed = Mask::block_diagonal(&[a.clone(), b.clone()]).unwrap();
        let (qa, ka) = (a.len_q(), a.len_k());
        check(&packed, qa + b.len_q(), ka + b.len_k(), |q, k| {
            if q < qa { k < ka && a.is_visible(q, k) } else { k >= ka && b.is_visible(q - qa, k - ka) }
        })?;
        let (q0, q1) = { let (x, y) = (cut.0.index(packed.len_q()), cut.1.index(packed.len_q())); (x.min(y), x.max(y) + 1) };
        let (k0, k1) = { let (x, y) = (cut.2.index(packed.len_k()), cut.3.index(packed.len_k())); (x.min(y), x.max(y) + 1) };
        let s = packed.slice(q0..q1, k0..k1).unwrap();
        check(&s, q1 - q0, k1 - k0, |q, k| packed.is_visible(q + q0, k + k0))?;
    }
}

#[test]
fn invalid_parameters_are_errors() {
    let frames0 = VideoLayout::new(vec![Segment::Text(3), Segment::Frames { frames: 0, tokens: 4 }]);
    assert!(matches!(frames0, Err(Error::InvalidParameter { .. })));
    assert!(VideoLayout::new(vec![Segment::Frames { frames: 2, tokens: 0 }]).is_err());
    assert!(VideoLayout::new(vec![]).is_err());
    assert!(VideoLayout::new(vec![Segment::Text(0)]).is_err());
    assert!("text:3,frames:2y4".parse::<VideoLayout>().is_err());
    assert!("video:3".parse::<VideoLayout>().is_err());
    assert!(Mask::causal_cross(0, 4, 4).is_err());
    assert!(Mask::causal_cross(4, 0, 4).is_err());
    assert!(Mask::causal_cross(4, 4, 0).is_err());
    assert!(Mask::sliding_window(8, 8, 0, 1).is_err());
    assert!(Mask::causal(0, 3).is_err());
    assert!(Mask::document(&[], false).is_err());
    assert!(Mask::document(&[3, 0], false).is_err());
    assert!(Mask::cross_frame_local(usize::MAX, 2, 2).is_err());
    let bad = |rows: Vec<[i32; 4]>| Mask::from_intervals(10, rows);
    assert!(matches!(bad(vec![[0, 11, 0, 0]]), Err(Error::InvalidInterval { row: 0, .. })));
    assert!(matches!(bad(vec![[0, 2, 0, 0], [-1, 2, 0, 0]]), Err(Error::InvalidInterval { row: 1, .. })));
    assert!(matches!(bad(vec![[5, 4, 0, 0]]), Err(Error::InvalidInterval { .. })));
    assert!(matches!(bad(vec![[0, 5, 3, 8]]), Err(Error::InvalidInterval { .. })), "overlapping");
    assert!(matches!(bad(vec![[6, 8, 1, 2]]), Err(Error::InvalidInterval { .. })), "unsorted");
    assert!(bad(vec![]).is_err());
    let m = Mask::causal(10, 10).unwrap();
    assert!(m.slice(3..3, 0..10).is_err());
    assert!(m.slice(0..11, 0..10).is_err());
    assert!(Mask::block_diagonal(&[]).is_err());
}

#[test]
fn frame_block_needs_more_intervals_after_a_second_video() {
    let layout: VideoLayout = "text:4,frames:2x3,text:5,frames:2x3".parse().unwrap();
    match Mask::frame_block(&layout) {
        // The second video's first frame touches the text before it (one interval);
        // its second frame needs [0, 4), [10, 15) and itself.
        Err(Error::TooManyIntervals { row, needed: 3, .. }) => assert_eq!(row, 4 + 6 + 5 + 3),
        other => panic!("expected TooManyIntervals, got {other:?}"),
    }
}

#[test]
fn layout_round_trips_through_its_text_form() {
    let l: VideoLayout = "text:35, frames:8x64 ,text:40".parse().unwrap();
    assert_eq!(l.len(), 35 + 8 * 64 + 40);
    assert_eq!(l.frames(), 8);
    assert_eq!(l.to_string().parse::<VideoLayout>().unwrap(), l);
}
