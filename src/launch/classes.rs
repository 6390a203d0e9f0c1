//! The tile classification kernel (csrc/tile_classes.cu): the class of every
//! (query tile, key tile) pair, computed by the kernels' own classification code.

use super::{kernel_args, Backend, KernelLaunch};
use crate::error::{Error, Result};
use crate::mask::Mask;
use crate::tiles::{TileClass, TileShape};

kernel_args! {
    /// `maskattn_tile_classes`: writes `classes[query tile][key tile]`.
    TileClassesArgs {
        intervals: u64,
        len_q: i32,
        len_k: i32,
        block_m: i32,
        block_n: i32,
        classes: u64,
    }
}

/// The classification launch, checked, before its output exists.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ClassesPlan {
    query_tiles: usize,
    len_q: usize,
    len_k: usize,
    shape: TileShape,
    /// Ints of the output, `[query tiles][key tiles]`.
    pub(crate) classes_len: usize,
}

/// Checks that `mask`'s query tiles fit the grid (one CTA per query tile).
pub(crate) fn plan(mask: &Mask, shape: TileShape) -> Result<ClassesPlan> {
    let (qt, kt) = (mask.len_q().div_ceil(shape.block_m()), mask.len_k().div_ceil(shape.block_n()));
    if qt > i32::MAX as usize {
        return Err(Error::Unsupported(format!("{qt} query tiles exceed the grid")));
    }
    Ok(ClassesPlan { query_tiles: qt, len_q: mask.len_q(), len_k: mask.len_k(), shape, classes_len: qt * kt })
}

impl ClassesPlan {
    /// The launch reading the mask's `intervals` (`[Lq][4]`) and writing `classes`
    /// (`classes_len` ints; the kernel writes `[qt][kt]` only).
    pub(crate) fn launch(&self, intervals: u64, classes: u64) -> KernelLaunch<TileClassesArgs> {
        KernelLaunch {
            kernel: "maskattn_tile_classes".into(),
            grid: (self.query_tiles as u32, 1, 1),
            block: (128, 1, 1),
            smem_bytes: 0,
            params: TileClassesArgs {
                intervals,
                len_q: self.len_q as i32,
                len_k: self.len_k as i32,
                block_m: self.shape.block_m() as i32,
                block_n: self.shape.block_n() as i32,
                classes,
            },
        }
    }
}

/// The class of every (query tile, key tile) pair of `mask` with tiles `shape`,
/// row-major `[query tile][key tile]`, computed on `b`.
pub(crate) fn tile_classes<B: Backend>(b: &B, mask: &Mask, shape: TileShape) -> Result<Vec<TileClass>> {
    let plan = plan(mask, shape)?;
    let intervals = b.upload(mask.as_flat())?;
    let mut classes = b.zeros::<i32>(plan.classes_len)?;
    {
        let (intervals, _intervals) = b.addr(&intervals);
        let (classes, _classes) = b.addr_mut(&mut classes);
        // SAFETY: `intervals` holds the mask's Lq rows and `classes` qt * kt ints,
        // live buffers of `b` accessed until after the launch.
        unsafe { b.launch(&plan.launch(intervals, classes)) }?;
    }
    Ok(b.download(&classes)?.into_iter().map(TileClass::from_raw).collect())
}

#[cfg(test)]
mod tests {
    use super::super::record::Recorder;
    use super::super::KernelArgs;
    use super::*;

    #[test]
    fn one_block_per_query_tile() {
        assert_eq!(TileClassesArgs::OFFSETS, &[0, 8, 12, 16, 20, 24]);
        let rec = Recorder::default();
        let mask = Mask::causal(300, 500).unwrap();
        let shape = TileShape::new(64, 128).unwrap();
        let classes = tile_classes(&rec, &mask, shape).unwrap();
        assert_eq!(classes.len(), 5 * 4);
        let l = rec.launches();
        assert_eq!(
            (l[0].kernel.as_str(), l[0].grid, l[0].block, l[0].smem_bytes),
            ("maskattn_tile_classes", (5, 1, 1), (128, 1, 1), 0)
        );
        let a: TileClassesArgs = l[0].params();
        assert_eq!((a.len_q, a.len_k, a.block_m, a.block_n), (300, 500, 64, 128));
        assert_eq!(rec.uploaded::<i32>(a.intervals).as_deref(), Some(mask.as_flat()));
        assert_eq!(rec.buffer_len(a.classes), Some(20));
    }
}
