//! The mask model: every supported mask as per-row key intervals.
//!
//! A mask gives each query row `q` at most two half-open key intervals
//! `[s0, e0) U [s1, e1)`; key `k` is visible iff it lies in one of them. This one
//! representation covers every mask of the crate; the kernels receive it as
//! `int32[Lq][4]` and classify whole tiles from it (see [`crate::tiles`]).
//!
//! Canonical form, which every constructor produces and [`Mask::from_intervals`]
//! checks: `0 <= s <= e <= Lk` for both intervals, an empty interval is stored as
//! `[0, 0)`, a lone non-empty interval sits in the first slot, and when both are
//! non-empty `e0 < s1` (sorted, disjoint and not touching: touching ones are merged).

mod layout;

use std::ops::Range;

pub use layout::{Segment, VideoLayout};

use crate::error::{invalid, Error, Result};

/// Which rule a [`Mask`] was built from (for display and statistics).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MaskKind {
    /// `k <= q + (Lk - Lq)`.
    Causal,
    /// TC-LLaVA frame-wise block causal.
    FrameBlockCausal,
    /// TC-LLaVA full visual.
    FullVisual,
    /// TC-LLaVA frame-wise block.
    FrameBlock,
    /// Video-CCAM causal cross-attention.
    CausalCross,
    /// Every query sees every key (CrossLMM full cross-attention, or no mask).
    Full,
    /// CrossLMM frame-local cross-attention.
    CrossFrameLocal,
    /// Sliding window with attention sinks.
    SlidingWindow,
    /// Packed documents (block diagonal), optionally causal inside each.
    Document,
    /// User-given intervals.
    Custom,
    /// Masks packed along the diagonal by [`Mask::block_diagonal`].
    Packed,
    /// A sub-range of another mask's rows and keys, see [`Mask::slice`].
    Slice,
}

/// Per-row key intervals of a `Lq x Lk` attention mask. See the module docs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mask {
    kind: MaskKind,
    len_q: usize,
    len_k: usize,
    intervals: Vec<[i32; 4]>,
}

/// Canonical row from up to two sorted, merged, non-empty ranges.
fn row(a: Option<Range<usize>>, b: Option<Range<usize>>) -> [i32; 4] {
    let r = |x: &Range<usize>| [x.start as i32, x.end as i32];
    match (a, b) {
        (None, None) => [0; 4],
        (Some(a), None) | (None, Some(a)) => {
            let [s, e] = r(&a);
            [s, e, 0, 0]
        }
        (Some(a), Some(b)) => {
            let ([s0, e0], [s1, e1]) = (r(&a), r(&b));
            [s0, e0, s1, e1]
        }
    }
}

/// Canonical row of `[s0, e0) U [s1, e1)`, given `e0 <= s1` when both are non-empty.
fn canonical([s0, e0, s1, e1]: [i32; 4]) -> [i32; 4] {
    match (s0 < e0, s1 < e1) {
        (false, false) => [0; 4],
        (true, false) => [s0, e0, 0, 0],
        (false, true) => [s1, e1, 0, 0],
        (true, true) if e0 == s1 => [s0, e1, 0, 0],
        (true, true) => [s0, e0, s1, e1],
    }
}

/// Causal rows `[0, q + 1)` of the square masks' text queries `q` in `qs`.
fn causal_rows(qs: Range<usize>) -> impl Iterator<Item = [i32; 4]> {
    qs.map(|q| [0, q as i32 + 1, 0, 0])
}

fn check_len(what: &'static str, n: usize) -> Result<()> {
    if n == 0 {
        return Err(invalid(what, "must be >= 1"));
    }
    if n > i32::MAX as usize {
        return Err(invalid(what, format!("{n} exceeds 2^31 - 1")));
    }
    Ok(())
}

fn checked_mul(what: &'static str, a: usize, b: usize) -> Result<usize> {
    let n = a.checked_mul(b).ok_or_else(|| invalid(what, "overflows"))?;
    check_len(what, n)?;
    Ok(n)
}

impl Mask {
    fn build(kind: MaskKind, len_q: usize, len_k: usize, rule: impl Fn(usize) -> [i32; 4]) -> Self {
        Self { kind, len_q, len_k, intervals: (0..len_q).map(rule).collect() }
    }

    fn square(kind: MaskKind, len: usize, intervals: Vec<[i32; 4]>) -> Self {
        debug_assert_eq!(intervals.len(), len);
        Self { kind, len_q: len, len_k: len, intervals }
    }

    /// Causal attention, bottom-right aligned as in flash-attention >= 2.1:
    /// `k <= q + (Lk - Lq)`, so prefill against a KV cache (`Lk > Lq`) works. With
    /// `Lq > Lk` the first `Lq - Lk` rows see no key (output 0, LSE -inf).
    ///
    /// ```
    /// let m = maskattn::Mask::causal(3, 5)?;
    /// assert_eq!(m.intervals(), &[[0, 3, 0, 0], [0, 4, 0, 0], [0, 5, 0, 0]]);
    /// # Ok::<(), maskattn::Error>(())
    /// ```
    pub fn causal(len_q: usize, len_k: usize) -> Result<Self> {
        check_len("len_q", len_q)?;
        check_len("len_k", len_k)?;
        let shift = len_k as i64 - len_q as i64;
        Ok(Self::build(MaskKind::Causal, len_q, len_k, |q| {
            let end = (q as i64 + shift + 1).clamp(0, len_k as i64) as usize;
            row((end > 0).then_some(0..end), None)
        }))
    }

    /// No mask: every query sees every key (CrossLMM's full V2V / T2V cross-attention,
    /// or plain bidirectional attention).
    ///
    /// ```
    /// let m = maskattn::Mask::full(2, 3)?;
    /// assert_eq!(m.intervals(), &[[0, 3, 0, 0], [0, 3, 0, 0]]);
    /// # Ok::<(), maskattn::Error>(())
    /// ```
    pub fn full(len_q: usize, len_k: usize) -> Result<Self> {
        check_len("len_q", len_q)?;
        check_len("len_k", len_k)?;
        Ok(Self::build(MaskKind::Full, len_q, len_k, |_| row(Some(0..len_k), None)))
    }

    /// TC-LLaVA frame-wise block causal (Fig. 3 (4)): `k <= q`, or q and k are visual
    /// tokens of the same frame. One interval per row: `[0, end of q's frame)`.
    ///
    /// ```
    /// // 2 text tokens, 2 frames of 3 tokens, 1 text token.
    /// let m = maskattn::Mask::frame_block_causal(&"text:2,frames:2x3,text:1".parse()?)?;
    /// assert_eq!(m.intervals()[1], [0, 2, 0, 0]); // text: causal
    /// assert_eq!(m.intervals()[2], [0, 5, 0, 0]); // first token of frame 0 sees all of it
    /// assert_eq!(m.intervals()[6], [0, 8, 0, 0]); // last frame's tokens see through 8
    /// # Ok::<(), maskattn::Error>(())
    /// ```
    pub fn frame_block_causal(layout: &VideoLayout) -> Result<Self> {
        let mut intervals = Vec::with_capacity(layout.len());
        for (start, segment) in layout.placed() {
            match segment {
                Segment::Text(n) => intervals.extend(causal_rows(start..start + n)),
                Segment::Frames { frames, tokens } => {
                    for f in 1..=frames {
                        intervals.extend(std::iter::repeat_n(row(Some(0..start + f * tokens), None), tokens));
                    }
                }
            }
        }
        Ok(Self::square(MaskKind::FrameBlockCausal, layout.len(), intervals))
    }

    /// TC-LLaVA full visual (Fig. 3 (2)): `k <= q`, or q and k are both visual (any
    /// frame, any video). Needs more than two intervals for a visual query when the
    /// sequence has three or more video segments with text between them.
    ///
    /// ```
    /// let m = maskattn::Mask::full_visual(&"text:2,frames:2x3,text:1".parse()?)?;
    /// assert_eq!(m.intervals()[2], [0, 8, 0, 0]); // a visual token sees every frame
    /// assert_eq!(m.intervals()[8], [0, 9, 0, 0]); // trailing text: causal
    /// # Ok::<(), maskattn::Error>(())
    /// ```
    pub fn full_visual(layout: &VideoLayout) -> Result<Self> {
        // A visual query sees everything up to the end of its run of visual tokens, then
        // every later run: the first run's queries need the most intervals, so the first
        // of them is the row that fails.
        let mut runs = layout.visual_runs();
        let (first, second) = (runs.next(), runs.next());
        let later = runs.count();
        if let (Some(first), true) = (&first, later > 0) {
            return Err(Error::TooManyIntervals { mask: "full visual", row: first.start, needed: 2 + later });
        }
        let mut intervals = Vec::with_capacity(layout.len());
        for (start, segment) in layout.placed() {
            match segment {
                Segment::Text(n) => intervals.extend(causal_rows(start..start + n)),
                Segment::Frames { .. } => {
                    let visual_row = match &second {
                        Some(run) if run.start <= start => row(Some(0..run.end), None),
                        later => row(first.as_ref().map(|run| 0..run.end), later.clone()),
                    };
                    intervals.extend(std::iter::repeat_n(visual_row, segment.len()));
                }
            }
        }
        Ok(Self::square(MaskKind::FullVisual, layout.len(), intervals))
    }

    /// TC-LLaVA frame-wise block (Fig. 3 (3)): a text query is causal; a visual query
    /// sees the text before its video segment and its own frame. Two intervals as
    /// long as no earlier video segment splits that text: a layout like
    /// `text, video, text, video` gives [`Error::TooManyIntervals`] for the second video.
    ///
    /// ```
    /// let m = maskattn::Mask::frame_block(&"text:2,frames:2x3,text:1".parse()?)?;
    /// assert_eq!(m.intervals()[6], [0, 2, 5, 8]); // frame 1: the text prefix and itself
    /// # Ok::<(), maskattn::Error>(())
    /// ```
    pub fn frame_block(layout: &VideoLayout) -> Result<Self> {
        // The maximal runs of text tokens so far: how many, the first and the latest.
        let (mut text_runs, mut first, mut last) = (0usize, 0..0, 0..0);
        let mut intervals = Vec::with_capacity(layout.len());
        for (start, segment) in layout.placed() {
            match segment {
                Segment::Text(0) => {}
                Segment::Text(n) => {
                    intervals.extend(causal_rows(start..start + n));
                    if text_runs > 0 && last.end == start {
                        last.end += n;
                    } else {
                        text_runs += 1;
                        last = start..start + n;
                    }
                    if text_runs == 1 {
                        first = last.clone();
                    }
                }
                Segment::Frames { frames, tokens } => {
                    for f in 0..frames {
                        let frame = start + f * tokens..start + (f + 1) * tokens;
                        // Only the video's first frame can touch the text run before it.
                        let (runs_before, own) = if text_runs > 0 && last.end == frame.start {
                            (text_runs - 1, last.start..frame.end)
                        } else {
                            (text_runs, frame.clone())
                        };
                        let visual_row = match runs_before {
                            0 => row(Some(own), None),
                            1 => row(Some(first.clone()), Some(own)),
                            n => {
                                return Err(Error::TooManyIntervals {
                                    mask: "frame-wise block",
                                    row: frame.start,
                                    needed: n + 1,
                                })
                            }
                        };
                        intervals.extend(std::iter::repeat_n(visual_row, tokens));
                    }
                }
            }
        }
        Ok(Self::square(MaskKind::FrameBlock, layout.len(), intervals))
    }

    /// Video-CCAM causal cross-attention: `num_queries` learnable queries split evenly
    /// over `frames` frames of `tokens_per_frame` keys. Query q belongs to frame
    /// `g(q) = floor(q * T / Nq)` and sees the keys of frames `0..=g(q)`.
    ///
    /// ```
    /// let m = maskattn::Mask::causal_cross(1024, 16, 729)?;
    /// assert_eq!((m.len_q(), m.len_k()), (1024, 16 * 729));
    /// assert_eq!(m.intervals()[0], [0, 729, 0, 0]);
    /// assert_eq!(m.intervals()[1023], [0, 16 * 729, 0, 0]);
    /// # Ok::<(), maskattn::Error>(())
    /// ```
    pub fn causal_cross(num_queries: usize, frames: usize, tokens_per_frame: usize) -> Result<Self> {
        check_len("num_queries", num_queries)?;
        check_len("frames", frames)?;
        check_len("tokens_per_frame", tokens_per_frame)?;
        let len_k = checked_mul("frames x tokens_per_frame", frames, tokens_per_frame)?;
        Ok(Self::build(MaskKind::CausalCross, num_queries, len_k, |q| {
            let g = (q as u64 * frames as u64 / num_queries as u64) as usize;
            row(Some(0..(g + 1) * tokens_per_frame), None)
        }))
    }

    /// CrossLMM frame-local cross-attention: `frames` frames of `queries_per_frame`
    /// pooled tokens (the queries) each see only their own frame's
    /// `tokens_per_frame` keys. (CrossLMM's full cross-attention is [`Mask::full`].)
    ///
    /// ```
    /// let m = maskattn::Mask::cross_frame_local(3, 2, 49)?; // 3 frames, 2 pooled tokens each
    /// assert_eq!(m.intervals()[3], [49, 98, 0, 0]);
    /// # Ok::<(), maskattn::Error>(())
    /// ```
    pub fn cross_frame_local(frames: usize, queries_per_frame: usize, tokens_per_frame: usize) -> Result<Self> {
        check_len("frames", frames)?;
        check_len("queries_per_frame", queries_per_frame)?;
        check_len("tokens_per_frame", tokens_per_frame)?;
        let len_q = checked_mul("frames x queries_per_frame", frames, queries_per_frame)?;
        let len_k = checked_mul("frames x tokens_per_frame", frames, tokens_per_frame)?;
        Ok(Self::build(MaskKind::CrossFrameLocal, len_q, len_k, |q| {
            let t = q / queries_per_frame;
            row(Some(t * tokens_per_frame..(t + 1) * tokens_per_frame), None)
        }))
    }

    /// Sliding window with attention sinks (StreamingLLM, CausVid-style streaming):
    /// key k is visible to query q iff `k <= q'` and (`k < sink` or `q' - window < k`),
    /// where `q' = q + (Lk - Lq)` (bottom-right aligned like [`Mask::causal`]). The
    /// sink keys obey causality too, as in FlexAttention's usual sink mask; for
    /// `q' >= sink - 1` this is exactly `k < sink or q' - w < k <= q'`.
    ///
    /// ```
    /// let m = maskattn::Mask::sliding_window(100, 100, 10, 4)?;
    /// assert_eq!(m.intervals()[50], [0, 4, 41, 51]); // sinks, then the last 10 keys
    /// assert_eq!(m.intervals()[5], [0, 6, 0, 0]);
    /// # Ok::<(), maskattn::Error>(())
    /// ```
    pub fn sliding_window(len_q: usize, len_k: usize, window: usize, sink: usize) -> Result<Self> {
        check_len("len_q", len_q)?;
        check_len("len_k", len_k)?;
        check_len("window", window)?;
        let (lq, shift) = (len_q as i64, len_k as i64 - len_q as i64);
        // Sinks past the last key change nothing; capping them keeps the bounds in i64.
        let sink = sink.min(len_k) as i64;
        // Rows in order of their causal bound `end = q' + 1`: no key yet, then one run
        // while the window still reaches the sinks, then the sinks and the window apart.
        let q0 = (-shift).clamp(0, lq);
        let q1 = (window as i64 + sink - shift).clamp(q0, lq);
        let end = |q: i64| (q + shift + 1) as i32;
        let (w, sink) = (window as i32, sink as i32);
        let mut intervals = Vec::with_capacity(len_q);
        intervals.extend(std::iter::repeat_n([0; 4], q0 as usize));
        intervals.extend((q0..q1).map(|q| [0, end(q), 0, 0]));
        if sink > 0 {
            intervals.extend((q1..lq).map(|q| [0, sink, end(q) - w, end(q)]));
        } else {
            intervals.extend((q1..lq).map(|q| [end(q) - w, end(q), 0, 0]));
        }
        Ok(Self { kind: MaskKind::SlidingWindow, len_q, len_k, intervals })
    }

    /// Packed documents (block diagonal): query and key sequences are the same
    /// concatenation of documents of the given lengths; a query sees the keys of its
    /// own document, and with `causal` only those at or before itself.
    ///
    /// ```
    /// let m = maskattn::Mask::document(&[3, 4], true)?;
    /// assert_eq!(m.intervals()[4], [3, 5, 0, 0]);
    /// # Ok::<(), maskattn::Error>(())
    /// ```
    pub fn document(doc_lens: &[usize], causal: bool) -> Result<Self> {
        if doc_lens.is_empty() {
            return Err(invalid("doc_lens", "no documents"));
        }
        let mut len = 0usize;
        for &n in doc_lens {
            check_len("document length", n)?;
            len = len.checked_add(n).ok_or_else(|| invalid("doc_lens", "overflows"))?;
        }
        check_len("total length", len)?;
        let mut intervals = Vec::with_capacity(len);
        let mut start = 0;
        for &n in doc_lens {
            let (s, e) = (start as i32, (start + n) as i32);
            if causal {
                intervals.extend((s..e).map(|q| [s, q + 1, 0, 0]));
            } else {
                intervals.extend(std::iter::repeat_n([s, e, 0, 0], n));
            }
            start += n;
        }
        Ok(Self::square(MaskKind::Document, len, intervals))
    }

    /// A mask from user-given rows `[s0, e0, s1, e1]`, checked and brought to
    /// canonical form (see the module docs): each `0 <= s <= e <= len_k`, and when
    /// both intervals are non-empty the first ends before the second starts
    /// (touching intervals are merged). `intervals.len()` is `Lq`.
    ///
    /// ```
    /// let m = maskattn::Mask::from_intervals(4, vec![[0, 2, 3, 4], [1, 1, 2, 3]])?;
    /// assert_eq!(m.intervals(), &[[0, 2, 3, 4], [2, 3, 0, 0]]);
    /// assert!(maskattn::Mask::from_intervals(4, vec![[0, 5, 0, 0]]).is_err());
    /// # Ok::<(), maskattn::Error>(())
    /// ```
    pub fn from_intervals(len_k: usize, intervals: Vec<[i32; 4]>) -> Result<Self> {
        check_len("len_q", intervals.len())?;
        check_len("len_k", len_k)?;
        let intervals = intervals
            .into_iter()
            .enumerate()
            .map(|(q, [s0, e0, s1, e1])| {
                let bad = |reason: String| Error::InvalidInterval { row: q, reason };
                for (s, e) in [(s0, e0), (s1, e1)] {
                    if s < 0 || e < s || e as usize > len_k {
                        return Err(bad(format!("[{s}, {e}) is not a range inside [0, {len_k}]")));
                    }
                }
                if s0 < e0 && s1 < e1 && e0 > s1 {
                    return Err(bad(format!("[{s0}, {e0}) and [{s1}, {e1}) overlap or are not sorted")));
                }
                Ok(canonical([s0, e0, s1, e1]))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { kind: MaskKind::Custom, len_q: intervals.len(), len_k, intervals })
    }

    /// Packs masks along the diagonal: sample i's queries see only sample i's keys,
    /// through its own mask. This is how batches whose samples have different layouts
    /// run as one `B = 1` sequence (varlen) with no separate code path.
    ///
    /// ```
    /// use maskattn::Mask;
    /// let packed = Mask::block_diagonal(&[Mask::causal(2, 2)?, Mask::full(1, 3)?])?;
    /// assert_eq!(packed.intervals(), &[[0, 1, 0, 0], [0, 2, 0, 0], [2, 5, 0, 0]]);
    /// # Ok::<(), maskattn::Error>(())
    /// ```
    pub fn block_diagonal(masks: &[Mask]) -> Result<Self> {
        if masks.is_empty() {
            return Err(invalid("masks", "nothing to pack"));
        }
        let len_q: usize = masks.iter().map(|m| m.len_q).sum();
        let len_k: usize = masks.iter().map(|m| m.len_k).sum();
        check_len("packed len_q", len_q)?;
        check_len("packed len_k", len_k)?;
        let mut intervals = Vec::with_capacity(len_q);
        let mut k_off = 0i32;
        for m in masks {
            intervals.extend(m.intervals.iter().map(|&[s0, e0, s1, e1]| {
                let shift = |s: i32, e: i32| if s < e { [s + k_off, e + k_off] } else { [0, 0] };
                let ([a, b], [c, d]) = (shift(s0, e0), shift(s1, e1));
                [a, b, c, d]
            }));
            k_off += m.len_k as i32;
        }
        Ok(Self { kind: MaskKind::Packed, len_q, len_k, intervals })
    }

    /// The mask restricted to query rows `rows` and keys `keys`, with positions
    /// renumbered from 0: what a kernel launched on a shard of the queries or keys
    /// must apply (context parallelism, ring attention). Outputs of key shards are
    /// merged through their LSE.
    ///
    /// ```
    /// let m = maskattn::Mask::causal(4, 4)?.slice(2..4, 1..3)?;
    /// assert_eq!(m.intervals(), &[[0, 2, 0, 0], [0, 2, 0, 0]]);
    /// # Ok::<(), maskattn::Error>(())
    /// ```
    pub fn slice(&self, rows: Range<usize>, keys: Range<usize>) -> Result<Self> {
        if rows.start >= rows.end || rows.end > self.len_q {
            return Err(invalid("rows", format!("{rows:?} is not a non-empty range inside 0..{}", self.len_q)));
        }
        if keys.start >= keys.end || keys.end > self.len_k {
            return Err(invalid("keys", format!("{keys:?} is not a non-empty range inside 0..{}", self.len_k)));
        }
        let (k0, k1) = (keys.start as i32, keys.end as i32);
        let clip = |s: i32, e: i32| {
            let (s, e) = (s.max(k0), e.min(k1));
            (s < e).then(|| (s - k0) as usize..(e - k0) as usize)
        };
        let intervals =
            self.intervals[rows.clone()].iter().map(|&[s0, e0, s1, e1]| row(clip(s0, e0), clip(s1, e1))).collect();
        Ok(Self { kind: MaskKind::Slice, len_q: rows.len(), len_k: keys.len(), intervals })
    }

    /// The rule the mask was built from.
    pub fn kind(&self) -> &MaskKind {
        &self.kind
    }

    /// Number of query rows, `Lq`.
    pub fn len_q(&self) -> usize {
        self.len_q
    }

    /// Number of keys, `Lk`.
    pub fn len_k(&self) -> usize {
        self.len_k
    }

    /// Rows `[s0, e0, s1, e1]`, one per query, in canonical form.
    pub fn intervals(&self) -> &[[i32; 4]] {
        &self.intervals
    }

    /// The intervals as one flat `int32[Lq * 4]` array, as the kernels read them.
    pub fn as_flat(&self) -> &[i32] {
        self.intervals.as_flattened()
    }

    /// Is key `k` visible to query `q`? Out-of-range positions are not visible.
    pub fn is_visible(&self, q: usize, k: usize) -> bool {
        self.intervals.get(q).is_some_and(|iv| crate::tiles::key_visible(iv, k))
    }

    /// Number of keys query `q` sees.
    /// 0 for a row past `Lq`.
    pub fn row_visible(&self, q: usize) -> usize {
        self.intervals.get(q).map_or(0, |&[s0, e0, s1, e1]| ((e0 - s0) + (e1 - s1)) as usize)
    }

    /// Number of visible (query, key) pairs: the work a mask-aware kernel must do.
    pub fn visible_pairs(&self) -> u64 {
        (0..self.len_q).map(|q| self.row_visible(q) as u64).sum()
    }

    /// `visible_pairs / (Lq * Lk)`.
    pub fn density(&self) -> f64 {
        self.visible_pairs() as f64 / (self.len_q as f64 * self.len_k as f64)
    }
}
