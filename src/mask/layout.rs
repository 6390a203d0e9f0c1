//! Video sequence layouts: runs of text tokens and runs of frames.

use std::fmt;
use std::ops::Range;
use std::str::FromStr;

use crate::error::{invalid, Error, Result};

/// One run of a sequence: text tokens, or `frames` video frames of `tokens` tokens each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Segment {
    /// `n` text tokens.
    Text(usize),
    /// `frames` frames of `tokens` visual tokens each (e.g. 576 for a 24x24 ViT grid).
    Frames {
        /// Number of frames.
        frames: usize,
        /// Visual tokens per frame.
        tokens: usize,
    },
}

impl Segment {
    /// Number of tokens in the segment.
    pub fn len(&self) -> usize {
        match *self {
            Segment::Text(n) => n,
            Segment::Frames { frames, tokens } => frames * tokens,
        }
    }

    /// True for a zero-length text run.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A sequence of text and video segments, e.g. `[Text(35), Frames{8 x 64}, Text(40)]`.
///
/// ```
/// use maskattn::{Segment, VideoLayout};
/// let layout = VideoLayout::new(vec![
///     Segment::Text(35),
///     Segment::Frames { frames: 8, tokens: 64 },
///     Segment::Text(40),
/// ])?;
/// assert_eq!(layout.len(), 35 + 8 * 64 + 40);
/// assert_eq!(layout, "text:35,frames:8x64,text:40".parse()?);
/// # Ok::<(), maskattn::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VideoLayout {
    segments: Vec<Segment>,
    len: usize,
}

impl VideoLayout {
    /// Checks the segments: at least one, frames and tokens per frame non-zero, and a
    /// total length that fits the kernels' 32-bit positions.
    pub fn new(segments: Vec<Segment>) -> Result<Self> {
        if segments.is_empty() {
            return Err(invalid("layout", "no segments"));
        }
        let mut len = 0usize;
        for (i, s) in segments.iter().enumerate() {
            if let Segment::Frames { frames, tokens } = *s {
                if frames == 0 || tokens == 0 {
                    return Err(invalid(
                        "layout",
                        format!("segment {i} has {frames} frames of {tokens} tokens; both must be >= 1"),
                    ));
                }
            }
            len = checked_len(len, s.len())?;
        }
        if len == 0 {
            return Err(invalid("layout", "the sequence has no tokens"));
        }
        Ok(Self { segments, len })
    }

    /// The segments, in order.
    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// Total number of tokens.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Never true: a layout has at least one token.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of frames over all video segments.
    pub fn frames(&self) -> usize {
        self.segments.iter().map(|s| if let Segment::Frames { frames, .. } = s { *frames } else { 0 }).sum()
    }

    /// Each segment with the position of its first token.
    pub(crate) fn placed(&self) -> impl Iterator<Item = (usize, Segment)> + '_ {
        self.segments.iter().scan(0, |pos, &s| {
            let start = *pos;
            *pos += s.len();
            Some((start, s))
        })
    }

    /// Maximal runs of visual tokens, in order. Video segments with no text token
    /// between them (adjacent, or split by an empty text run) form one run, because
    /// the masks merge the key ranges of touching segments.
    pub(crate) fn visual_runs(&self) -> impl Iterator<Item = Range<usize>> + '_ {
        let mut videos = self
            .placed()
            .filter(|(_, s)| matches!(s, Segment::Frames { .. }))
            .map(|(start, s)| start..start + s.len())
            .peekable();
        std::iter::from_fn(move || {
            let mut run = videos.next()?;
            while let Some(next) = videos.next_if(|v| v.start == run.end) {
                run.end = next.end;
            }
            Some(run)
        })
    }
}

fn checked_len(a: usize, b: usize) -> Result<usize> {
    a.checked_add(b)
        .filter(|&l| l <= i32::MAX as usize)
        .ok_or_else(|| invalid("layout", "sequence longer than 2^31 - 1 tokens"))
}

impl fmt::Display for VideoLayout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, s) in self.segments.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            match s {
                Segment::Text(n) => write!(f, "text:{n}")?,
                Segment::Frames { frames, tokens } => write!(f, "frames:{frames}x{tokens}")?,
            }
        }
        Ok(())
    }
}

/// Parses `text:N` and `frames:TxN` items separated by commas, the format of
/// [`VideoLayout`]'s `Display`.
impl FromStr for VideoLayout {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let bad = |item: &str| invalid("layout", format!("`{item}`: expected text:N or frames:TxN"));
        let num = |t: &str, item: &str| t.trim().parse::<usize>().map_err(|_| bad(item));
        let mut segments = Vec::new();
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (kind, value) = item.split_once(':').ok_or_else(|| bad(item))?;
            segments.push(match kind.trim() {
                "text" => Segment::Text(num(value, item)?),
                "frames" => {
                    let (t, n) = value.split_once('x').ok_or_else(|| bad(item))?;
                    Segment::Frames { frames: num(t, item)?, tokens: num(n, item)? }
                }
                _ => return Err(bad(item)),
            });
        }
        VideoLayout::new(segments)
    }
}
