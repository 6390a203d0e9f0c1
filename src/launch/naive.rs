//! The naive attention baseline (csrc/naive_attention.cu): for each (batch, query
//! head) in turn, the whole `[Lq, Lk]` f32 score matrix in a scratch buffer, a masked
//! softmax per row, and the product with V. Three kernels per head, each taking its
//! arguments one by one.

use ndarray::{Array3, Array4, ArrayView4};

use super::{
    check_lse, download_array, kernel_args, kernel_scale, qkv_dims, upload_array, Backend, BufArg, KernelElement,
    KernelLaunch, TensorArg,
};
use crate::error::{Error, Result};
use crate::mask::Mask;
use crate::shape::AttnShape;

/// Side of the square tiles of the two matmul kernels (their blocks are 16x16).
const TILE: usize = 16;
/// Threads of one softmax block (one block per query row).
const SOFTMAX_THREADS: u32 = 256;
/// Largest score scratch, in bytes (the f32 `[Lq, Lk]` matrix of one head): 2^30
/// floats, so also under 2^31 elements.
const SCRATCH_MAX_BYTES: usize = 4 << 30;

kernel_args! {
    /// `maskattn_naive_scores_{f16,bf16}`: `s = scale * q k^T` for one head.
    NaiveScoresArgs {
        q: u64,
        q_row: i64,
        k: u64,
        k_row: i64,
        len_q: i32,
        len_k: i32,
        head_dim: i32,
        scale: f32,
        s: u64,
    }
}

kernel_args! {
    /// `maskattn_naive_softmax`: masked softmax of each row of `s` in place, and its LSE.
    NaiveSoftmaxArgs {
        s: u64,
        intervals: u64,
        len_k: i32,
        lse: u64,
    }
}

kernel_args! {
    /// `maskattn_naive_pv_{f16,bf16}`: `o = p v` for one head.
    NaivePvArgs {
        p: u64,
        v: u64,
        v_row: i64,
        len_q: i32,
        len_k: i32,
        head_dim: i32,
        o: u64,
        o_row: i64,
    }
}

/// What the naive attention reads and writes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct NaiveArgs {
    pub q: TensorArg,
    pub k: TensorArg,
    pub v: TensorArg,
    /// The mask's row intervals, `i32 [Lq][4]`.
    pub intervals: BufArg,
    pub scale: Option<f32>,
    pub out: TensorArg,
    /// `f32 [B, Hq, Lq]`.
    pub lse: BufArg,
}

/// The naive attention's launches, checked, before their scratch exists.
#[derive(Debug, Clone)]
pub(crate) struct NaivePlan {
    args: NaiveArgs,
    sh: AttnShape,
    scale: f32,
    elem_bytes: usize,
    dtype: &'static str,
    /// Floats of the score scratch, `Lq * Lk` (one head at a time).
    pub(crate) scratch_len: usize,
}

/// The three launches of one (batch, query head), in order.
#[derive(Debug, Clone)]
pub(crate) struct NaiveHead {
    pub scores: KernelLaunch<NaiveScoresArgs>,
    pub softmax: KernelLaunch<NaiveSoftmaxArgs>,
    pub pv: KernelLaunch<NaivePvArgs>,
}

/// Checks the naive attention's inputs (as the forward kernel's, except the mask: its
/// row intervals, 4 per query row; any head dim) and its scratch's size. q and k are
/// then read, and v and out addressed, in bounds at every (b, l, h, c); out's rows
/// are disjoint, so each output element is written once.
pub(crate) fn plan<T: KernelElement>(a: &NaiveArgs) -> Result<NaivePlan> {
    let sh = AttnShape::of_qkv(&a.q.layout.dims, &a.k.layout.dims, &a.v.layout.dims)?;
    if a.intervals.len != 4 * sh.len_q {
        return Err(Error::Shape(format!(
            "the mask holds {} ints, 4 per query row needs {}",
            a.intervals.len,
            4 * sh.len_q
        )));
    }
    if a.out.layout.dims != a.q.layout.dims {
        return Err(Error::Shape(format!("out dims {:?} differ from q's {:?}", a.out.layout.dims, a.q.layout.dims)));
    }
    check_lse(&a.lse, &sh)?;
    let scale = kernel_scale(a.scale, sh.head_dim)?;
    let scores = sh.len_q.checked_mul(sh.len_k).filter(|&n| n <= SCRATCH_MAX_BYTES / 4);
    let Some(scratch_len) = scores else {
        return Err(Error::Unsupported(format!(
            "the naive attention's {} x {} f32 score matrix exceeds {} GiB",
            sh.len_q,
            sh.len_k,
            SCRATCH_MAX_BYTES >> 30
        )));
    };
    if sh.len_q.div_ceil(TILE) > 65535 {
        return Err(Error::Unsupported(format!("Lq = {} exceeds the grid (at most 65535 * 16)", sh.len_q)));
    }
    if sh.head_dim > i32::MAX as usize - TILE {
        return Err(Error::Unsupported(format!("head dim {} exceeds 2^31 - 17", sh.head_dim)));
    }
    a.q.check::<T>("q")?;
    a.k.check::<T>("k")?;
    a.v.check::<T>("v")?;
    a.out.check_output::<T>("out")?;
    Ok(NaivePlan { args: *a, sh, scale, elem_bytes: std::mem::size_of::<T>(), dtype: T::KERNEL_NAME, scratch_len })
}

impl NaivePlan {
    /// The launches of every (batch, query head), batch-major, with the score scratch
    /// at `s` (`scratch_len` floats, reused by every head: the launches are ordered).
    pub(crate) fn heads(&self, s: u64) -> impl Iterator<Item = NaiveHead> + '_ {
        let (a, sh) = (&self.args, &self.sh);
        let (lq, lk, d) = (sh.len_q as i32, sh.len_k as i32, sh.head_dim as i32);
        let tiles = |n: usize| n.div_ceil(TILE) as u32;
        let group = sh.heads_q / sh.heads_kv;
        // Address of element (b, 0, h, 0) of a tensor.
        let at = |t: &TensorArg, b: usize, h: usize| {
            t.addr + ((b * t.layout.strides[0] + h * t.layout.strides[2]) * self.elem_bytes) as u64
        };
        let row = |t: &TensorArg| t.layout.strides[1] as i64;
        (0..sh.batch).flat_map(move |b| (0..sh.heads_q).map(move |h| (b, h))).map(move |(b, h)| {
            let hk = h / group;
            NaiveHead {
                scores: tile_launch(
                    format!("maskattn_naive_scores_{}", self.dtype),
                    (tiles(sh.len_k), tiles(sh.len_q), 1),
                    NaiveScoresArgs {
                        q: at(&a.q, b, h),
                        q_row: row(&a.q),
                        k: at(&a.k, b, hk),
                        k_row: row(&a.k),
                        len_q: lq,
                        len_k: lk,
                        head_dim: d,
                        scale: self.scale,
                        s,
                    },
                ),
                softmax: KernelLaunch {
                    kernel: "maskattn_naive_softmax".into(),
                    grid: (sh.len_q as u32, 1, 1),
                    block: (SOFTMAX_THREADS, 1, 1),
                    smem_bytes: 0,
                    params: NaiveSoftmaxArgs {
                        s,
                        intervals: a.intervals.addr,
                        len_k: lk,
                        lse: a.lse.addr + (((b * sh.heads_q + h) * sh.len_q) * 4) as u64,
                    },
                },
                pv: tile_launch(
                    format!("maskattn_naive_pv_{}", self.dtype),
                    (tiles(sh.head_dim), tiles(sh.len_q), 1),
                    NaivePvArgs {
                        p: s,
                        v: at(&a.v, b, hk),
                        v_row: row(&a.v),
                        len_q: lq,
                        len_k: lk,
                        head_dim: d,
                        o: at(&a.out, b, h),
                        o_row: row(&a.out),
                    },
                ),
            }
        })
    }
}

/// A launch of one of the two matmul kernels: 16x16 blocks, each on a 16x16 tile of
/// its output.
fn tile_launch<P>(kernel: String, grid: (u32, u32, u32), params: P) -> KernelLaunch<P> {
    KernelLaunch { kernel, grid, block: (TILE as u32, TILE as u32, 1), smem_bytes: 0, params }
}

/// Plans the naive attention, allocates its score scratch on `b` and launches it.
///
/// # Safety
///
/// Every address in `a` is that of live memory of `b` of at least its given length,
/// accessed (see [`Backend::Access`]) until this returns; nothing else writes the
/// outputs meanwhile.
pub(crate) unsafe fn run<B: Backend, T: KernelElement>(b: &B, a: &NaiveArgs) -> Result<()> {
    let plan = plan::<T>(a)?;
    // SAFETY: the scores kernel writes every element before the softmax reads it.
    let mut s = unsafe { b.scratch::<f32>(plan.scratch_len) }?;
    let (s_addr, _s) = b.addr_mut(&mut s);
    for head in plan.heads(s_addr) {
        // SAFETY: the plan checked `a`'s regions, which the caller vouches for: q and
        // k cover every element read; `s` holds Lq * Lk floats; the intervals hold 4
        // ints per row and the LSE B*Hq*Lq floats, this head's Lq from its address;
        // v and out cover every element addressed.
        unsafe {
            b.launch(&head.scores)?;
            b.launch(&head.softmax)?;
            b.launch(&head.pv)?;
        }
    }
    Ok(())
}

/// The naive attention on host arrays `[B, L, H, D]`: uploads them and the mask's
/// intervals, launches and downloads `(out, lse)`.
pub(crate) fn attention<B: Backend, T: KernelElement>(
    b: &B,
    q: ArrayView4<T>,
    k: ArrayView4<T>,
    v: ArrayView4<T>,
    mask: &Mask,
    scale: Option<f32>,
) -> Result<(Array4<T>, Array3<f32>)> {
    let sh = AttnShape::new(q.shape(), k.shape(), v.shape(), mask)?;
    let (q_dims, kv_dims) = qkv_dims(&sh);
    let (dq, dk, dv) = (upload_array(b, &q)?, upload_array(b, &k)?, upload_array(b, &v)?);
    let intervals = b.upload(mask.as_flat())?;
    let mut out = b.zeros::<T>(q.len())?;
    let mut lse = b.zeros::<f32>(sh.batch * sh.heads_q * sh.len_q)?;
    {
        let (q, _q) = TensorArg::of(b, &dq, q_dims);
        let (k, _k) = TensorArg::of(b, &dk, kv_dims);
        let (v, _v) = TensorArg::of(b, &dv, kv_dims);
        let (intervals, _intervals) = BufArg::of(b, &intervals);
        let (out, _out) = TensorArg::of_mut(b, &mut out, q_dims);
        let (lse, _lse) = BufArg::of_mut(b, &mut lse);
        // SAFETY: every address is that of a live buffer of `b` with its own length,
        // accessed until after the launches; out and lse are written by nothing else.
        unsafe { run::<B, T>(b, &NaiveArgs { q, k, v, intervals, scale, out, lse }) }?;
    }
    let out = download_array(b, &out, q_dims)?;
    let lse = Array3::from_shape_vec((sh.batch, sh.heads_q, sh.len_q), b.download(&lse)?).expect("sizes match");
    Ok((out, lse))
}

#[cfg(test)]
mod tests {
    use half::f16;
    use ndarray::Array4;

    use super::super::record::Recorder;
    use super::super::KernelArgs;
    use super::*;

    /// The structs' C layouts are the kernels' parameter lists (natural alignment, in
    /// order), so offsets are those of a C compiler.
    #[test]
    fn argument_offsets_are_the_c_layout() {
        assert_eq!(NaiveScoresArgs::OFFSETS, &[0, 8, 16, 24, 32, 36, 40, 44, 48]);
        assert_eq!(std::mem::size_of::<NaiveScoresArgs>(), 56);
        assert_eq!(NaiveSoftmaxArgs::OFFSETS, &[0, 8, 16, 24]);
        assert_eq!(NaivePvArgs::OFFSETS, &[0, 8, 16, 24, 28, 32, 40, 48]);
    }

    #[test]
    fn three_launches_per_head_on_that_heads_slices() {
        let rec = Recorder::default();
        let mask = Mask::causal(40, 50).unwrap();
        let (b, hq, hkv, d) = (2, 4, 2, 24);
        let q = Array4::from_elem((b, 40, hq, d), f16::ONE);
        let kv = Array4::from_elem((b, 50, hkv, d), f16::ONE);
        attention(&rec, q.view(), kv.view(), kv.view(), &mask, Some(0.25)).unwrap();
        let l = rec.launches();
        assert_eq!(l.len(), 3 * b * hq);
        let (first, last) = (&l[..3], &l[l.len() - 3..]);
        let names: Vec<&str> = first.iter().map(|l| l.kernel.as_str()).collect();
        assert_eq!(names, ["maskattn_naive_scores_f16", "maskattn_naive_softmax", "maskattn_naive_pv_f16"]);
        assert_eq!((first[0].grid, first[0].block), ((4, 3, 1), (16, 16, 1)));
        assert_eq!((first[1].grid, first[1].block), ((40, 1, 1), (256, 1, 1)));
        assert_eq!(first[2].grid, (2, 3, 1));
        let (s0, s1): (NaiveScoresArgs, NaiveScoresArgs) = (first[0].params(), last[0].params());
        assert_eq!((s0.q_row, s0.k_row, s0.len_q, s0.len_k, s0.head_dim, s0.scale), (96, 48, 40, 50, 24, 0.25));
        // The last head: batch 1, query head 3, kv head 1.
        assert_eq!(s1.q - s0.q, ((40 * hq * d + 3 * d) * 2) as u64);
        assert_eq!(s1.k - s0.k, ((50 * hkv * d + d) * 2) as u64);
        let (m0, m1): (NaiveSoftmaxArgs, NaiveSoftmaxArgs) = (first[1].params(), last[1].params());
        assert_eq!(m1.lse - m0.lse, ((b * hq - 1) * 40 * 4) as u64);
        assert_eq!(rec.uploaded::<i32>(m0.intervals).as_deref(), Some(mask.as_flat()));
        let (p0, p1): (NaivePvArgs, NaivePvArgs) = (first[2].params(), last[2].params());
        assert_eq!((p0.p, p0.v_row, p0.o_row), (s0.s, 48, 96));
        assert_eq!(p1.o - p0.o, ((40 * hq * d + 3 * d) * 2) as u64);
    }

    #[test]
    fn bad_inputs_are_errors_before_any_launch() {
        let rec = Recorder::default();
        let mask = Mask::causal(40, 40).unwrap();
        let q = Array4::from_elem((1, 40, 2, 24), f16::ONE);
        assert!(attention(&rec, q.view(), q.view(), q.view(), &mask, Some(0.0)).is_err());
        let odd = Array4::from_elem((1, 40, 2, 20), f16::ONE);
        let e = attention(&rec, odd.view(), odd.view(), odd.view(), &mask, None).unwrap_err();
        assert!(matches!(e, Error::Shape(ref m) if m.contains("multiples of 8")), "{e}");
        assert!(rec.launches().is_empty());
    }
}
