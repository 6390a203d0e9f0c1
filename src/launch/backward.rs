//! The backward attention kernels (csrc/flash_bwd.cu): the host tables prepared from
//! a mask, the checks and the three launches (preprocessing, main kernel, then the
//! dQ conversion or the deterministic dQ pass; the schedule is described in
//! src/cuda/backward.rs).

use ndarray::{Array4, ArrayView4};

use super::forward::{run_packed, ForwardMask};
use super::{
    check_lse, check_mask_lens, check_smem_budget, download_array, kernel_scale, strides3, upload_array, Backend,
    BufArg, KernelElement, KernelLaunch, TensorArg,
};
use crate::error::{Error, Result};
use crate::ffi;
use crate::mask::Mask;
use crate::shape::AttnShape;
use crate::tiles::{self, TileShape, TileSummary};

/// The backward kernels' tiles at head dim `head_dim` (csrc/params.h): the main
/// kernel's (`MASKATTN_BWD_BLOCK_M` query rows by `MASKATTN_BWD_BLOCK_N` keys, the
/// tiles its walks are made of) and the deterministic dQ pass's.
pub fn backward_tiles(head_dim: usize) -> Result<(TileShape, TileShape)> {
    if ![64, 96, 128].contains(&head_dim) {
        return Err(Error::Unsupported(format!("head dim {head_dim}: the kernels support 64, 96 and 128")));
    }
    Ok((
        TileShape::new(ffi::MASKATTN_BWD_BLOCK_M as usize, ffi::MASKATTN_BWD_BLOCK_N as usize)?,
        TileShape::new(ffi::MASKATTN_BWD_DQ_BLOCK_M as usize, ffi::MASKATTN_BWD_DQ_BLOCK_N as usize)?,
    ))
}

/// What the host prepares for the backward kernels from a mask.
#[derive(Debug, Clone)]
struct BackwardTables {
    /// Per query tile of the main kernel (= the dQ pass's query tiles).
    summaries: Vec<TileSummary>,
    /// Per key tile: the query tiles `[begin, end)` it walks.
    walks: Vec<[i32; 2]>,
    /// Key tiles, longest walk first (ties by index).
    k_tile_order: Vec<i32>,
    /// Query tiles of the dQ pass, most key tiles first.
    q_tile_order: Vec<i32>,
}

impl BackwardTables {
    fn new(mask: &Mask, main: TileShape, dq: TileShape) -> Self {
        let (bm, bn) = (main.block_m(), main.block_n());
        debug_assert_eq!(bm, dq.block_m(), "the dQ pass shares the main kernel's query tiles");
        let summaries: Vec<TileSummary> =
            (0..mask.len_q().div_ceil(bm)).map(|qt| tiles::summarize(mask, qt * bm..(qt + 1) * bm)).collect();
        // The transpose of the forward's walk: key tile kt walks the hull of the query
        // tiles whose key-tile range contains it.
        let mut walks: Vec<Option<[i32; 2]>> = vec![None; mask.len_k().div_ceil(bn)];
        for (qt, s) in summaries.iter().enumerate() {
            for w in &mut walks[tiles::key_tile_range(s, bn)] {
                *w = Some([w.map_or(qt as i32, |w| w[0]), qt as i32 + 1]);
            }
        }
        let walks: Vec<[i32; 2]> = walks.into_iter().map(|w| w.unwrap_or([0, 0])).collect();
        let mut k_tile_order: Vec<i32> = (0..walks.len() as i32).collect();
        k_tile_order.sort_by_key(|&kt| std::cmp::Reverse(walks[kt as usize][1] - walks[kt as usize][0]));
        Self { summaries, walks, k_tile_order, q_tile_order: tiles::query_tile_order(mask, dq) }
    }
}

/// A mask prepared on a backend for the backward kernels: its row intervals, the
/// query-tile summaries, the key tiles' walks and both launch orders (a few KB even
/// at 128K tokens).
#[derive(Debug)]
pub(crate) struct BackwardMask<B: Backend> {
    intervals: B::Buf<i32>,
    summaries: B::Buf<TileSummary>,
    walks: B::Buf<i32>,
    k_tile_order: B::Buf<i32>,
    q_tile_order: B::Buf<i32>,
    len_q: usize,
    len_k: usize,
    head_dim: usize,
}

/// A [`BackwardMask`] as the plan sees it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BackwardMaskArgs {
    intervals: u64,
    summaries: u64,
    walks: u64,
    k_tile_order: u64,
    q_tile_order: u64,
    len_q: usize,
    len_k: usize,
    head_dim: usize,
}

impl<B: Backend> BackwardMask<B> {
    /// Prepares and uploads `mask`'s tables for the backward kernels at head dim
    /// `head_dim`.
    pub(crate) fn new(b: &B, mask: &Mask, head_dim: usize) -> Result<Self> {
        let (main, dq) = backward_tiles(head_dim)?;
        let tables = BackwardTables::new(mask, main, dq);
        if tables.walks.len() > 65535 || tables.q_tile_order.len() > 65535 {
            return Err(Error::Unsupported(format!(
                "{} key tiles or {} query tiles exceed the grid's 65535",
                tables.walks.len(),
                tables.q_tile_order.len()
            )));
        }
        let walks: Vec<i32> = tables.walks.iter().flatten().copied().collect();
        Ok(Self {
            intervals: b.upload(mask.as_flat())?,
            summaries: b.upload(&tables.summaries)?,
            walks: b.upload(&walks)?,
            k_tile_order: b.upload(&tables.k_tile_order)?,
            q_tile_order: b.upload(&tables.q_tile_order)?,
            len_q: mask.len_q(),
            len_k: mask.len_k(),
            head_dim,
        })
    }

    /// Query rows (read by the GPU's device-pointer API).
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    pub(crate) fn len_q(&self) -> usize {
        self.len_q
    }

    /// Keys (read by the GPU's device-pointer API).
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    pub(crate) fn len_k(&self) -> usize {
        self.len_k
    }

    /// The tables' addresses for launches on `b`.
    pub(crate) fn args<'a>(&'a self, b: &'a B) -> (BackwardMaskArgs, [B::Access<'a>; 5]) {
        let (intervals, a0) = b.addr(&self.intervals);
        let (summaries, a1) = b.addr(&self.summaries);
        let (walks, a2) = b.addr(&self.walks);
        let (k_tile_order, a3) = b.addr(&self.k_tile_order);
        let (q_tile_order, a4) = b.addr(&self.q_tile_order);
        let args = BackwardMaskArgs {
            intervals,
            summaries,
            walks,
            k_tile_order,
            q_tile_order,
            len_q: self.len_q,
            len_k: self.len_k,
            head_dim: self.head_dim,
        };
        (args, [a0, a1, a2, a3, a4])
    }
}

/// What the backward kernels read and write.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BackwardArgs {
    pub q: TensorArg,
    pub k: TensorArg,
    pub v: TensorArg,
    pub out: TensorArg,
    /// `f32 [B, Hq, Lq]`, natural log.
    pub lse: BufArg,
    pub d_out: TensorArg,
    pub mask: BackwardMaskArgs,
    pub scale: Option<f32>,
    pub deterministic: bool,
    pub dq: TensorArg,
    pub dk: TensorArg,
    pub dv: TensorArg,
}

/// The three backward launches, checked, before their scratch exists.
#[derive(Debug, Clone)]
pub(crate) struct BackwardPlan {
    launches: [KernelLaunch<ffi::MaskattnBwdParams>; 3],
    /// Floats of each of the two scratch rows buffers (D and the base-2 LSE):
    /// `B * Hq * Lq_pad`.
    pub(crate) scratch_rows: usize,
    /// Floats of the dQ accumulator, `B * Hq * Lq * D`; `None` in the deterministic
    /// mode, which has none.
    pub(crate) accum_len: Option<usize>,
}

impl BackwardPlan {
    /// The launches, in order, with the scratch: `lse2` and `delta` of
    /// `scratch_rows` floats, `dq_accum` of `accum_len` floats (0 without one). The
    /// preprocessing kernel writes every element of the scratch before the others
    /// read it.
    pub(crate) fn launches(
        mut self,
        lse2: u64,
        delta: u64,
        dq_accum: u64,
    ) -> [KernelLaunch<ffi::MaskattnBwdParams>; 3] {
        for l in &mut self.launches {
            l.params.lse2 = lse2 as *mut f32;
            l.params.delta = delta as *mut f32;
            l.params.dq_accum = dq_accum as *mut f32;
        }
        self.launches
    }
}

/// The backward launches: preprocessing (one CTA per `MASKATTN_BWD_ROWS_PER_CTA`
/// padded rows), the main kernel (one CTA per batch * kv head and key tile) and the
/// dQ conversion (per rows) or the deterministic dQ pass (per batch * query head and
/// query tile). The addresses cover every element the kernels address (dims,
/// strides, alignment, bounds, disjoint output rows, the LSE's length), the mask's
/// tables are for these lengths and head dim, and the grids and shared memory are
/// those the kernels were compiled for.
pub(crate) fn plan<T: KernelElement>(a: &BackwardArgs) -> Result<BackwardPlan> {
    let sh = AttnShape::of_qkv(&a.q.layout.dims, &a.k.layout.dims, &a.v.layout.dims)?;
    check_mask_lens(&sh, a.mask.len_q, a.mask.len_k)?;
    let (main_tiles, dq_tiles) = backward_tiles(sh.head_dim)?;
    if a.mask.head_dim != sh.head_dim {
        return Err(Error::Shape(format!(
            "the mask was uploaded for head dim {}, the tensors have {}",
            a.mask.head_dim, sh.head_dim
        )));
    }
    for (name, dims, want) in [
        ("out", a.out.layout.dims, a.q.layout.dims),
        ("d_out", a.d_out.layout.dims, a.q.layout.dims),
        ("dq", a.dq.layout.dims, a.q.layout.dims),
        ("dk", a.dk.layout.dims, a.k.layout.dims),
        ("dv", a.dv.layout.dims, a.k.layout.dims),
    ] {
        if dims != want {
            return Err(Error::Shape(format!("{name} dims {dims:?} must be {want:?}")));
        }
    }
    check_lse(&a.lse, &sh)?;
    let scale = kernel_scale(a.scale, sh.head_dim)?;
    let len_q_pad = sh.len_q.div_ceil(main_tiles.block_m()) * main_tiles.block_m();
    let (n_k_tiles, n_q_tiles) = (sh.len_k.div_ceil(main_tiles.block_n()), sh.len_q.div_ceil(dq_tiles.block_m()));
    let fits_i32 = |n: usize| n <= i32::MAX as usize;
    if !fits_i32(len_q_pad) || !fits_i32(sh.batch * sh.heads_q) || n_k_tiles > 65535 || n_q_tiles > 65535 {
        return Err(Error::Unsupported(format!("shape {sh:?} exceeds the kernels' grid")));
    }
    let pre_blocks = grid_blocks(sh.batch * sh.heads_q * len_q_pad, "preprocessing")?;
    let convert_blocks = grid_blocks(sh.batch * sh.heads_q * sh.len_q, "dQ")?;
    let (smem_main, smem_dq) = match sh.head_dim {
        64 => (ffi::MASKATTN_BWD_SMEM_D64, ffi::MASKATTN_BWD_DQ_SMEM_D64),
        96 => (ffi::MASKATTN_BWD_SMEM_D96, ffi::MASKATTN_BWD_DQ_SMEM_D96),
        _ => (ffi::MASKATTN_BWD_SMEM_D128, ffi::MASKATTN_BWD_DQ_SMEM_D128),
    };
    for (name, t) in [("q", &a.q), ("k", &a.k), ("v", &a.v), ("out", &a.out), ("d_out", &a.d_out)] {
        t.check::<T>(name)?;
    }
    for (name, t) in [("dq", &a.dq), ("dk", &a.dk), ("dv", &a.dv)] {
        t.check_output::<T>(name)?;
    }

    let ([qb, qr, qh], [kb, kr, kh], [vb, vr, vh], [ob, or, oh]) =
        (strides3(&a.q.layout), strides3(&a.k.layout), strides3(&a.v.layout), strides3(&a.out.layout));
    let ([gb, gr, gh], [dqb, dqr, dqh], [dkb, dkr, dkh], [dvb, dvr, dvh]) =
        (strides3(&a.d_out.layout), strides3(&a.dq.layout), strides3(&a.dk.layout), strides3(&a.dv.layout));
    let params = ffi::MaskattnBwdParams {
        q: a.q.addr as *const _,
        k: a.k.addr as *const _,
        v: a.v.addr as *const _,
        o: a.out.addr as *const _,
        d_out: a.d_out.addr as *const _,
        dq: a.dq.addr as *mut _,
        dk: a.dk.addr as *mut _,
        dv: a.dv.addr as *mut _,
        lse: a.lse.addr as *const f32,
        lse2: std::ptr::null_mut(),
        delta: std::ptr::null_mut(),
        dq_accum: std::ptr::null_mut(),
        intervals: a.mask.intervals as *const i32,
        q_tile_summaries: a.mask.summaries as *const TileSummary,
        k_tile_order: a.mask.k_tile_order as *const i32,
        k_tile_walks: a.mask.walks as *const i32,
        q_tile_order: a.mask.q_tile_order as *const i32,
        q_batch_stride: qb,
        q_row_stride: qr,
        q_head_stride: qh,
        k_batch_stride: kb,
        k_row_stride: kr,
        k_head_stride: kh,
        v_batch_stride: vb,
        v_row_stride: vr,
        v_head_stride: vh,
        o_batch_stride: ob,
        o_row_stride: or,
        o_head_stride: oh,
        do_batch_stride: gb,
        do_row_stride: gr,
        do_head_stride: gh,
        dq_batch_stride: dqb,
        dq_row_stride: dqr,
        dq_head_stride: dqh,
        dk_batch_stride: dkb,
        dk_row_stride: dkr,
        dk_head_stride: dkh,
        dv_batch_stride: dvb,
        dv_row_stride: dvr,
        dv_head_stride: dvh,
        batch: sh.batch as i32,
        heads_q: sh.heads_q as i32,
        heads_kv: sh.heads_kv as i32,
        len_q: sh.len_q as i32,
        len_k: sh.len_k as i32,
        len_q_pad: len_q_pad as i32,
        head_dim: sh.head_dim as i32,
        scale,
        scale_log2: scale * std::f32::consts::LOG2_E,
    };
    let (dt, d) = (T::KERNEL_NAME, sh.head_dim);
    let row_threads = (ffi::MASKATTN_BWD_ROW_THREADS, 1, 1);
    let launch = |kernel: String, grid, block, smem_bytes| KernelLaunch { kernel, grid, block, smem_bytes, params };
    let pre = launch(format!("maskattn_bwd_preprocess_{dt}"), (pre_blocks, 1, 1), row_threads, 0);
    let main_kernel =
        if a.deterministic { format!("maskattn_bwd_dkdv_{dt}_d{d}") } else { format!("maskattn_bwd_{dt}_d{d}") };
    let main = launch(
        main_kernel,
        ((sh.batch * sh.heads_kv) as u32, n_k_tiles as u32, 1),
        (ffi::MASKATTN_BWD_THREADS, 1, 1),
        smem_main,
    );
    let dq = if a.deterministic {
        launch(
            format!("maskattn_bwd_dq_{dt}_d{d}"),
            ((sh.batch * sh.heads_q) as u32, n_q_tiles as u32, 1),
            (ffi::MASKATTN_BWD_DQ_THREADS, 1, 1),
            smem_dq,
        )
    } else {
        launch(format!("maskattn_bwd_dq_convert_{dt}"), (convert_blocks, 1, 1), row_threads, 0)
    };
    Ok(BackwardPlan {
        launches: [pre, main, dq],
        scratch_rows: sh.batch * sh.heads_q * len_q_pad,
        accum_len: (!a.deterministic).then_some(sh.batch * sh.heads_q * sh.len_q * sh.head_dim),
    })
}

fn grid_blocks(rows: usize, what: &str) -> Result<u32> {
    let blocks = rows.div_ceil(ffi::MASKATTN_BWD_ROWS_PER_CTA as usize);
    u32::try_from(blocks)
        .ok()
        .filter(|&b| b <= i32::MAX as u32)
        .ok_or_else(|| Error::Unsupported(format!("{rows} {what} rows exceed the grid")))
}

/// Plans the backward pass, allocates its scratch on `b` (freed after the launches,
/// in the backend's order) and launches it.
///
/// # Safety
///
/// Every address in `a` is that of live memory of `b` of at least its given length,
/// accessed (see [`Backend::Access`]) until this returns; nothing else writes the
/// outputs meanwhile.
pub(crate) unsafe fn run<B: Backend, T: KernelElement>(b: &B, a: &BackwardArgs) -> Result<()> {
    let plan = plan::<T>(a)?;
    // All three fit, or none runs.
    check_smem_budget(b, &plan.launches)?;
    // SAFETY: the preprocessing kernel writes every element of lse2, delta and (in
    // the atomic mode) the accumulator before any other kernel reads them.
    let (mut lse2, mut delta) = unsafe { (b.scratch::<f32>(plan.scratch_rows)?, b.scratch::<f32>(plan.scratch_rows)?) };
    // SAFETY: as above.
    let mut accum = plan.accum_len.map(|n| unsafe { b.scratch::<f32>(n) }).transpose()?;
    let (lse2_addr, _lse2) = b.addr_mut(&mut lse2);
    let (delta_addr, _delta) = b.addr_mut(&mut delta);
    let (accum_addr, _accum) = accum.as_mut().map(|acc| b.addr_mut(acc)).unzip();
    for launch in plan.launches(lse2_addr, delta_addr, accum_addr.unwrap_or(0)) {
        // SAFETY: the plan checked `a`'s regions, which the caller vouches for; the
        // scratch is sized as the plan asked and accessed until after the launches.
        unsafe { b.launch(&launch) }?;
    }
    Ok(())
}

/// The forward and then the backward kernels on host arrays `[B, L, H, D]` with
/// upstream gradient `d_out`: uploads, launches and downloads `(dq, dk, dv)`.
#[allow(clippy::type_complexity, clippy::too_many_arguments)]
pub(crate) fn attention_grad<B: Backend, T: KernelElement>(
    b: &B,
    q: ArrayView4<T>,
    k: ArrayView4<T>,
    v: ArrayView4<T>,
    d_out: ArrayView4<T>,
    mask: &Mask,
    scale: Option<f32>,
    deterministic: bool,
) -> Result<(Array4<T>, Array4<T>, Array4<T>)> {
    let sh = AttnShape::new(q.shape(), k.shape(), v.shape(), mask)?;
    if d_out.shape() != q.shape() {
        return Err(Error::Shape(format!("d_out {:?} must be shaped like q {:?}", d_out.shape(), q.shape())));
    }
    let (q_dims, kv_dims) = (super::dims(&q), super::dims(&k));
    let (qd, kd, vd, dod) =
        (upload_array(b, &q)?, upload_array(b, &k)?, upload_array(b, &v)?, upload_array(b, &d_out)?);
    let fwd_mask = ForwardMask::new(b, mask, sh.head_dim)?;
    let bwd_mask = BackwardMask::new(b, mask, sh.head_dim)?;
    let mut out = b.zeros::<T>(q.len())?;
    let mut lse = b.zeros::<f32>(sh.batch * sh.heads_q * sh.len_q)?;
    let (mut dq, mut dk, mut dv) = (b.zeros::<T>(q.len())?, b.zeros::<T>(k.len())?, b.zeros::<T>(k.len())?);
    run_packed(b, &sh, &qd, &kd, &vd, &fwd_mask, None, scale, &mut out, &mut lse)?;
    {
        let (q, _q) = TensorArg::of(b, &qd, q_dims);
        let (k, _k) = TensorArg::of(b, &kd, kv_dims);
        let (v, _v) = TensorArg::of(b, &vd, kv_dims);
        let (out, _out) = TensorArg::of(b, &out, q_dims);
        let (lse, _lse) = BufArg::of(b, &lse);
        let (d_out, _d_out) = TensorArg::of(b, &dod, q_dims);
        let (mask, _mask) = bwd_mask.args(b);
        let (dq, _dq) = TensorArg::of_mut(b, &mut dq, q_dims);
        let (dk, _dk) = TensorArg::of_mut(b, &mut dk, kv_dims);
        let (dv, _dv) = TensorArg::of_mut(b, &mut dv, kv_dims);
        let args = BackwardArgs { q, k, v, out, lse, d_out, mask, scale, deterministic, dq, dk, dv };
        // SAFETY: every address is that of a live buffer of `b` with its own length,
        // accessed until after the launches; dq, dk and dv are written by nothing else.
        unsafe { run::<B, T>(b, &args) }?;
    }
    Ok((download_array(b, &dq, q_dims)?, download_array(b, &dk, kv_dims)?, download_array(b, &dv, kv_dims)?))
}

#[cfg(test)]
mod tests {
    use half::bf16;
    use ndarray::Array4;

    use super::super::record::Recorder;
    use super::{attention_grad, backward_tiles, BackwardTables};
    use crate::ffi;
    use crate::mask::Mask;
    use crate::tiles::{self, TileClass};
    use crate::Error;

    fn masks() -> Vec<Mask> {
        let layout = "text:35,frames:3x200,text:70".parse().unwrap();
        vec![
            Mask::causal(300, 300).unwrap(),
            Mask::causal(130, 700).unwrap(),
            Mask::frame_block_causal(&layout).unwrap(),
            Mask::frame_block(&layout).unwrap(),
            Mask::full_visual(&layout).unwrap(),
            Mask::causal_cross(200, 4, 97).unwrap(),
            Mask::sliding_window(500, 500, 70, 4).unwrap(),
            Mask::document(&[100, 3, 250, 64], true).unwrap(),
            Mask::from_intervals(400, vec![[0, 0, 0, 0]; 70]).unwrap(),
            Mask::from_intervals(300, (0..150).map(|i| [i, i + 1, 280, 300]).collect()).unwrap(),
        ]
    }

    /// Every (query tile, key tile) pair the forward's classification calls non-EMPTY
    /// lies in the key tile's walk, and every pair a walk visits outside them
    /// classifies EMPTY with the query tile's summary (the kernel skips it unloaded):
    /// the backward visits the forward's pairs, with the forward's classes.
    #[test]
    fn walks_cover_every_nonempty_pair_with_the_forwards_class() {
        for mask in masks() {
            let (main, dq) = backward_tiles(64).unwrap();
            let plan = BackwardTables::new(&mask, main, dq);
            let key_tiles = mask.len_k().div_ceil(main.block_n());
            assert_eq!(plan.walks.len(), key_tiles);
            let classes = tiles::tile_classes(&mask, main);
            for (i, class) in classes.iter().enumerate() {
                let (qt, kt) = ((i / key_tiles) as i32, i % key_tiles);
                if *class != TileClass::Empty {
                    let [b, e] = plan.walks[kt];
                    assert!(b <= qt && qt < e, "pair ({qt}, {kt}) outside the walk {b}..{e}");
                }
            }
            for (kt, &[b, e]) in plan.walks.iter().enumerate() {
                for qt in b..e {
                    let keys = kt * main.block_n()..(kt + 1) * main.block_n();
                    let class = tiles::classify(&plan.summaries[qt as usize], keys);
                    assert_eq!(class, classes[qt as usize * key_tiles + kt], "pair ({qt}, {kt})");
                }
            }
            // Launch orders are permutations, heaviest first.
            let mut k_order = plan.k_tile_order.clone();
            k_order.sort();
            assert_eq!(k_order, (0..key_tiles as i32).collect::<Vec<_>>());
            let len = |kt: i32| plan.walks[kt as usize][1] - plan.walks[kt as usize][0];
            assert!(plan.k_tile_order.windows(2).all(|w| len(w[0]) >= len(w[1])));
            assert_eq!(plan.q_tile_order.len(), mask.len_q().div_ceil(dq.block_m()));
        }
    }

    #[test]
    fn unsupported_head_dims_are_errors() {
        for d in [0, 32, 80, 256] {
            assert!(backward_tiles(d).is_err());
        }
    }

    #[test]
    fn forward_then_three_backward_launches_in_either_mode() {
        let mask = Mask::causal(200, 300).unwrap();
        let (b, hq, hkv, d) = (2, 4, 2, 96);
        let q = Array4::from_elem((b, 200, hq, d), bf16::ONE);
        let kv = Array4::from_elem((b, 300, hkv, d), bf16::ONE);
        for deterministic in [false, true] {
            let rec = Recorder::default();
            attention_grad(&rec, q.view(), kv.view(), kv.view(), q.view(), &mask, None, deterministic).unwrap();
            let l = rec.launches();
            let kernels: Vec<&str> = l.iter().map(|l| l.kernel.as_str()).collect();
            let rows_pad = b * hq * 256;
            if deterministic {
                assert_eq!(
                    kernels,
                    [
                        "maskattn_fwd_bf16_d96",
                        "maskattn_bwd_preprocess_bf16",
                        "maskattn_bwd_dkdv_bf16_d96",
                        "maskattn_bwd_dq_bf16_d96"
                    ]
                );
                assert_eq!((l[3].grid, l[3].block), (((b * hq) as u32, 4, 1), (ffi::MASKATTN_BWD_DQ_THREADS, 1, 1)));
                assert_eq!(l[3].smem_bytes, ffi::MASKATTN_BWD_DQ_SMEM_D96);
            } else {
                assert_eq!(
                    kernels,
                    [
                        "maskattn_fwd_bf16_d96",
                        "maskattn_bwd_preprocess_bf16",
                        "maskattn_bwd_bf16_d96",
                        "maskattn_bwd_dq_convert_bf16"
                    ]
                );
                let convert_rows = b * hq * 200;
                assert_eq!((l[3].grid, l[3].smem_bytes), (((convert_rows / 16) as u32, 1, 1), 0));
            }
            assert_eq!(l[1].grid, (((rows_pad / 16) as u32), 1, 1));
            assert_eq!((l[2].grid, l[2].smem_bytes), (((b * hkv) as u32, 3, 1), ffi::MASKATTN_BWD_SMEM_D96));
            let params: Vec<ffi::MaskattnBwdParams> = l[1..].iter().map(|l| l.params()).collect();
            for p in &params {
                assert_eq!(p.len_q_pad, 256);
                assert!(!p.lse2.is_null() && !p.delta.is_null() && p.lse2 != p.delta);
                assert_eq!(p.dq_accum.is_null(), deterministic);
                assert_eq!(p.lse2, params[0].lse2);
                assert_eq!(p.dq_accum, params[0].dq_accum);
            }
            let fwd: ffi::MaskattnFwdParams = l[0].params();
            assert_eq!((params[0].o as u64, params[0].lse as u64), (fwd.o as u64, fwd.lse as u64));
            let (main, dq) = backward_tiles(d).unwrap();
            let tables = BackwardTables::new(&mask, main, dq);
            assert_eq!(rec.uploaded::<i32>(params[0].k_tile_order as u64), Some(tables.k_tile_order));
            assert_eq!(rec.uploaded::<i32>(params[0].q_tile_order as u64), Some(tables.q_tile_order));
        }
    }

    #[test]
    fn bad_inputs_are_errors_before_any_launch() {
        let rec = Recorder::default();
        let mask = Mask::causal(100, 100).unwrap();
        let q = Array4::from_elem((1, 100, 2, 64), bf16::ONE);
        let e = attention_grad(&rec, q.view(), q.view(), q.view(), q.view(), &mask, Some(-1.0), false).unwrap_err();
        assert!(matches!(e, Error::InvalidParameter { what: "scale", .. }), "{e}");
        let short = Array4::from_elem((1, 99, 2, 64), bf16::ONE);
        let e = attention_grad(&rec, q.view(), q.view(), q.view(), short.view(), &mask, None, false).unwrap_err();
        assert!(matches!(e, Error::Shape(_)), "{e}");
        assert!(rec.launches().is_empty());
    }
}
