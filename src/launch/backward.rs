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
use crate::tiles::{self, TileConfig, TileShape, TileSummary};

/// One configuration of the backward kernels at one head dim (csrc/params.h).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackwardTiles {
    /// The main kernel's tiles: query rows per step of a key tile's walk
    /// (`MASKATTN_BWD_BLOCK_M`, or the compact `MASKATTN_BWD_COMPACT_BLOCK_M_D*`) by
    /// keys per CTA (`MASKATTN_BWD_BLOCK_N`).
    pub main: TileShape,
    /// The deterministic dQ pass's tiles (the same in every configuration).
    pub dq: TileShape,
    /// What runs: [`TileConfig::Pipelined`] or [`TileConfig::Compact`], never `Auto`.
    pub config: TileConfig,
    /// Dynamic shared memory per block of the main kernel, bytes.
    pub main_smem: u32,
    /// Dynamic shared memory per block of the dQ pass, bytes.
    pub dq_smem: u32,
}

/// The backward kernels' configuration at head dim `head_dim` (run in its class, see
/// [`tiles::head_dim_class`]) for `config` on a device allowing `smem_budget` bytes of
/// shared memory per block: `Auto` is the pipelined configuration where it fits, else
/// the compact one. Classes 64 and 256 have one configuration each: at 64 the pipelined
/// kernels (84,992 B) fit every budget; at 256 (206,336 B, 32-row query tiles, four
/// output slices) nothing smaller than an sm_90's budget could hold K, V and a query
/// tile, so a smaller device gets the launch's typed error naming kernel and bytes.
pub fn backward_tiles(head_dim: usize, config: TileConfig, smem_budget: u32) -> Result<BackwardTiles> {
    let class = tiles::head_dim_class(head_dim)?;
    let (pipelined_smem, compact, dq_smem) = match class {
        64 => (ffi::MASKATTN_BWD_SMEM_D64, None, ffi::MASKATTN_BWD_DQ_SMEM_D64),
        96 => (
            ffi::MASKATTN_BWD_SMEM_D96,
            Some((ffi::MASKATTN_BWD_COMPACT_BLOCK_M_D96, ffi::MASKATTN_BWD_COMPACT_SMEM_D96)),
            ffi::MASKATTN_BWD_DQ_SMEM_D96,
        ),
        128 => (
            ffi::MASKATTN_BWD_SMEM_D128,
            Some((ffi::MASKATTN_BWD_COMPACT_BLOCK_M_D128, ffi::MASKATTN_BWD_COMPACT_SMEM_D128)),
            ffi::MASKATTN_BWD_DQ_SMEM_D128,
        ),
        _ => (ffi::MASKATTN_BWD_SMEM_D256, None, ffi::MASKATTN_BWD_DQ_SMEM_D256),
    };
    let pipelined_block_m = if class == 256 { ffi::MASKATTN_BWD_BLOCK_M_D256 } else { ffi::MASKATTN_BWD_BLOCK_M };
    let want_compact = match config {
        TileConfig::Auto => pipelined_smem > smem_budget,
        TileConfig::Pipelined => false,
        TileConfig::Compact => true,
    };
    let (block_m, main_smem, config) = match compact {
        Some((block_m, smem)) if want_compact => (block_m, smem, TileConfig::Compact),
        _ => (pipelined_block_m, pipelined_smem, TileConfig::Pipelined),
    };
    Ok(BackwardTiles {
        main: TileShape::new(block_m as usize, ffi::MASKATTN_BWD_BLOCK_N as usize)?,
        dq: TileShape::new(ffi::MASKATTN_BWD_DQ_BLOCK_M as usize, ffi::MASKATTN_BWD_DQ_BLOCK_N as usize)?,
        config,
        main_smem,
        dq_smem,
    })
}

/// What the host prepares for the backward kernels from a mask.
#[derive(Debug, Clone)]
struct BackwardTables {
    /// Per query tile of the main kernel.
    summaries: Vec<TileSummary>,
    /// Per query tile of the dQ pass, where its tiles are not the main kernel's.
    dq_summaries: Option<Vec<TileSummary>>,
    /// Per key tile: the query tiles `[begin, end)` it walks.
    walks: Vec<[i32; 2]>,
    /// Key tiles, longest walk first (ties by index).
    k_tile_order: Vec<i32>,
    /// Query tiles of the dQ pass, most key tiles first.
    q_tile_order: Vec<i32>,
}

impl BackwardTables {
    fn new(mask: &Mask, cfg: &BackwardTiles) -> Self {
        let (bm, bn) = (cfg.main.block_m(), cfg.main.block_n());
        let summaries_of = |bm: usize| -> Vec<TileSummary> {
            (0..mask.len_q().div_ceil(bm)).map(|qt| tiles::summarize(mask, qt * bm..(qt + 1) * bm)).collect()
        };
        let summaries = summaries_of(bm);
        let dq_summaries = (cfg.dq.block_m() != bm).then(|| summaries_of(cfg.dq.block_m()));
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
        Self { summaries, dq_summaries, walks, k_tile_order, q_tile_order: tiles::query_tile_order(mask, cfg.dq) }
    }
}

/// A mask prepared on a backend for the backward kernels: its row intervals, the
/// query-tile summaries, the key tiles' walks and both launch orders (a few KB even
/// at 128K tokens).
#[derive(Debug)]
pub(crate) struct BackwardMask<B: Backend> {
    intervals: B::Buf<i32>,
    summaries: B::Buf<TileSummary>,
    dq_summaries: Option<B::Buf<TileSummary>>,
    walks: B::Buf<i32>,
    k_tile_order: B::Buf<i32>,
    q_tile_order: B::Buf<i32>,
    len_q: usize,
    len_k: usize,
    head_dim: usize,
    tiles: BackwardTiles,
}

/// A [`BackwardMask`] as the plan sees it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BackwardMaskArgs {
    intervals: u64,
    summaries: u64,
    dq_summaries: u64,
    walks: u64,
    k_tile_order: u64,
    q_tile_order: u64,
    len_q: usize,
    len_k: usize,
    head_dim: usize,
    tiles: BackwardTiles,
}

impl<B: Backend> BackwardMask<B> {
    /// Prepares and uploads `mask`'s tables for the backward kernels at head dim
    /// `head_dim`, in the configuration `b` asks for (or, for `Auto`, can run).
    pub(crate) fn new(b: &B, mask: &Mask, head_dim: usize) -> Result<Self> {
        let tiles = backward_tiles(head_dim, b.tile_config(), b.smem_budget())?;
        let tables = BackwardTables::new(mask, &tiles);
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
            dq_summaries: tables.dq_summaries.as_deref().map(|s| b.upload(s)).transpose()?,
            walks: b.upload(&walks)?,
            k_tile_order: b.upload(&tables.k_tile_order)?,
            q_tile_order: b.upload(&tables.q_tile_order)?,
            len_q: mask.len_q(),
            len_k: mask.len_k(),
            head_dim,
            tiles,
        })
    }

    /// The kernels' configuration the tables were made for.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    pub(crate) fn tiles(&self) -> BackwardTiles {
        self.tiles
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
    pub(crate) fn args<'a>(&'a self, b: &'a B) -> (BackwardMaskArgs, [B::Access<'a>; 6]) {
        let (intervals, a0) = b.addr(&self.intervals);
        let (summaries, a1) = b.addr(&self.summaries);
        let (dq_summaries, a2) = b.addr(self.dq_summaries.as_ref().unwrap_or(&self.summaries));
        let (walks, a3) = b.addr(&self.walks);
        let (k_tile_order, a4) = b.addr(&self.k_tile_order);
        let (q_tile_order, a5) = b.addr(&self.q_tile_order);
        let args = BackwardMaskArgs {
            intervals,
            summaries,
            dq_summaries,
            walks,
            k_tile_order,
            q_tile_order,
            len_q: self.len_q,
            len_k: self.len_k,
            head_dim: self.head_dim,
            tiles: self.tiles,
        };
        (args, [a0, a1, a2, a3, a4, a5])
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
    let BackwardTiles { main: main_tiles, dq: dq_tiles, config, main_smem, dq_smem } = a.mask.tiles;
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
    let class = tiles::head_dim_class(sh.head_dim)?;
    // A multiple of both kernels' query tiles (params.h: the main kernel's divide the
    // dQ pass's).
    let len_q_pad = sh.len_q.div_ceil(dq_tiles.block_m()) * dq_tiles.block_m();
    let (n_k_tiles, n_q_tiles) = (sh.len_k.div_ceil(main_tiles.block_n()), sh.len_q.div_ceil(dq_tiles.block_m()));
    let fits_i32 = |n: usize| n <= i32::MAX as usize;
    if !fits_i32(len_q_pad) || !fits_i32(sh.batch * sh.heads_q) || n_k_tiles > 65535 || n_q_tiles > 65535 {
        return Err(Error::Unsupported(format!("shape {sh:?} exceeds the kernels' grid")));
    }
    let pre_blocks = grid_blocks(sh.batch * sh.heads_q * len_q_pad, "preprocessing")?;
    let convert_blocks = grid_blocks(sh.batch * sh.heads_q * sh.len_q, "dQ")?;
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
        dq_tile_summaries: a.mask.dq_summaries as *const TileSummary,
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
        dq_accum_cols: class as i32,
        scale,
        scale_log2: scale * std::f32::consts::LOG2_E,
    };
    let (dt, d) = (T::KERNEL_NAME, class);
    // Class 256 splits the output columns over gridDim.z (params.h); slices past the
    // real head dim would compute nothing that is stored.
    let slices = if class == 256 { (sh.head_dim as u32).div_ceil(ffi::MASKATTN_BWD_SLICE_COLS_D256) } else { 1 };
    let row_threads = (ffi::MASKATTN_BWD_ROW_THREADS, 1, 1);
    let launch = |kernel: String, grid, block, smem_bytes| KernelLaunch { kernel, grid, block, smem_bytes, params };
    let pre = launch(format!("maskattn_bwd_preprocess_{dt}"), (pre_blocks, 1, 1), row_threads, 0);
    let (mode, suffix) =
        (if a.deterministic { "dkdv_" } else { "" }, if config == TileConfig::Compact { "_compact" } else { "" });
    let main = launch(
        format!("maskattn_bwd_{mode}{dt}_d{d}{suffix}"),
        ((sh.batch * sh.heads_kv) as u32, n_k_tiles as u32, slices),
        (ffi::MASKATTN_BWD_THREADS, 1, 1),
        main_smem,
    );
    let dq = if a.deterministic {
        launch(
            format!("maskattn_bwd_dq_{dt}_d{d}"),
            ((sh.batch * sh.heads_q) as u32, n_q_tiles as u32, slices),
            (ffi::MASKATTN_BWD_DQ_THREADS, 1, 1),
            dq_smem,
        )
    } else {
        launch(format!("maskattn_bwd_dq_convert_{dt}"), (convert_blocks, 1, 1), row_threads, 0)
    };
    Ok(BackwardPlan {
        launches: [pre, main, dq],
        scratch_rows: sh.batch * sh.heads_q * len_q_pad,
        accum_len: (!a.deterministic).then_some(sh.batch * sh.heads_q * sh.len_q * class),
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
    // The masks' checks (head dim, grid limits) before the inputs' uploads.
    let fwd_mask = ForwardMask::new(b, mask, sh.head_dim)?;
    let bwd_mask = BackwardMask::new(b, mask, sh.head_dim)?;
    let (qd, kd, vd, dod) =
        (upload_array(b, &q)?, upload_array(b, &k)?, upload_array(b, &v)?, upload_array(b, &d_out)?);
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
    use crate::tiles::{self, TileClass, TileConfig, TileSummary};
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
        let configs = [(64, TileConfig::Pipelined), (128, TileConfig::Pipelined), (128, TileConfig::Compact)];
        for (mask, (d, config)) in masks().into_iter().flat_map(|m| configs.map(|c| (m.clone(), c))) {
            let cfg = backward_tiles(d, config, u32::MAX).unwrap();
            let (main, dq) = (cfg.main, cfg.dq);
            let plan = BackwardTables::new(&mask, &cfg);
            // The dQ pass's own summaries exactly where its query tiles differ.
            let dq_summaries = plan.dq_summaries.as_ref().unwrap_or(&plan.summaries);
            assert_eq!(plan.dq_summaries.is_some(), main.block_m() != dq.block_m());
            for (qt, s) in dq_summaries.iter().enumerate() {
                let want = tiles::summarize(&mask, qt * dq.block_m()..(qt + 1) * dq.block_m());
                assert_eq!(format!("{s:?}"), format!("{want:?}"), "(TileSummary has no PartialEq)");
            }
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
    fn every_multiple_of_8_up_to_256_and_nothing_else() {
        for d in [0, 4, 12, 250, 264, 512] {
            assert!(matches!(backward_tiles(d, TileConfig::Auto, u32::MAX), Err(Error::Unsupported(_))), "{d}");
        }
        for d in (8..=256).step_by(8) {
            let class = [64, 96, 128, 256].into_iter().find(|&c| d <= c).unwrap();
            assert_eq!(tiles::head_dim_class(d).unwrap(), class);
            assert_eq!(
                backward_tiles(d, TileConfig::Auto, u32::MAX).unwrap(),
                backward_tiles(class, TileConfig::Auto, u32::MAX).unwrap()
            );
        }
    }

    /// `Auto` is the pipelined configuration where it fits the budget, else the
    /// compact one; a forced one is taken as asked (where it exists: D = 64 has one).
    #[test]
    fn the_configuration_follows_the_budget_unless_forced() {
        use TileConfig::{Auto, Compact, Pipelined};
        for (d, pipelined, pipelined_bm, compact, compact_bm) in [
            (64, ffi::MASKATTN_BWD_SMEM_D64, 64, ffi::MASKATTN_BWD_SMEM_D64, 64),
            (96, ffi::MASKATTN_BWD_SMEM_D96, 64, ffi::MASKATTN_BWD_COMPACT_SMEM_D96, 64),
            (128, ffi::MASKATTN_BWD_SMEM_D128, 64, ffi::MASKATTN_BWD_COMPACT_SMEM_D128, 32),
            (256, ffi::MASKATTN_BWD_SMEM_D256, 32, ffi::MASKATTN_BWD_SMEM_D256, 32),
        ] {
            let tiles = |config, budget| backward_tiles(d, config, budget).unwrap();
            for budget in [99 * 1024, 163 * 1024, 227 * 1024] {
                let auto = tiles(Auto, budget);
                let fits = pipelined <= budget;
                assert_eq!(auto.main_smem, if fits { pipelined } else { compact }, "D = {d}, {budget} B");
                // Class 256 fits only sm_90's 227 KB: its launch is the budget's error elsewhere.
                let runs = d != 256 || budget == 227 * 1024;
                assert_eq!(auto.main_smem <= budget && auto.dq_smem <= budget, runs, "D = {d}, {budget} B: {auto:?}");
                assert_eq!(tiles(Pipelined, budget).main_smem, pipelined);
                assert_eq!(tiles(Compact, budget), tiles(Compact, u32::MAX));
            }
            let c = tiles(Compact, 0);
            assert_eq!((c.main_smem, c.main.block_m()), (compact, compact_bm));
            assert_eq!(c.config, if d == 64 || d == 256 { Pipelined } else { Compact });
            assert_eq!(tiles(Pipelined, 0).main.block_m(), pipelined_bm);
            assert_eq!(ffi::MASKATTN_BWD_DQ_BLOCK_M as usize % c.main.block_m(), 0);
        }
    }

    /// A forced compact configuration at D = 128: the compact kernels, their shared
    /// memory, 32-row query tiles for the walks and separate summaries for the dQ pass.
    #[test]
    fn compact_launches_and_tables_at_d128() {
        let mask = Mask::frame_block_causal(&"text:35,frames:3x200,text:70".parse().unwrap()).unwrap();
        let (b, hq, hkv, d, l) = (1, 4, 2, 128, mask.len_q());
        let q = Array4::from_elem((b, l, hq, d), bf16::ONE);
        let kv = Array4::from_elem((b, l, hkv, d), bf16::ONE);
        let cfg = backward_tiles(d, TileConfig::Compact, u32::MAX).unwrap();
        let tables = BackwardTables::new(&mask, &cfg);
        for deterministic in [false, true] {
            let mut rec = Recorder::default();
            rec.tile_config = TileConfig::Compact;
            attention_grad(&rec, q.view(), kv.view(), kv.view(), q.view(), &mask, None, deterministic).unwrap();
            let launches = rec.launches();
            let main =
                if deterministic { "maskattn_bwd_dkdv_bf16_d128_compact" } else { "maskattn_bwd_bf16_d128_compact" };
            assert_eq!(launches[2].kernel, main);
            assert_eq!(launches[2].smem_bytes, ffi::MASKATTN_BWD_COMPACT_SMEM_D128);
            assert_eq!(launches[2].grid, ((b * hkv) as u32, l.div_ceil(128) as u32, 1));
            let p: ffi::MaskattnBwdParams = launches[2].params();
            assert_eq!(p.len_q_pad as usize, l.div_ceil(64) * 64);
            let summaries = rec.uploaded::<TileSummary>(p.q_tile_summaries as u64).unwrap();
            assert_eq!(summaries.len(), l.div_ceil(32));
            // TileSummary (bindgen's) has no PartialEq.
            assert_eq!(format!("{summaries:?}"), format!("{:?}", tables.summaries));
            let dq_summaries = rec.uploaded::<TileSummary>(p.dq_tile_summaries as u64);
            assert_eq!(format!("{dq_summaries:?}"), format!("{:?}", tables.dq_summaries));
            assert!(dq_summaries.is_some_and(|s| s.len() == l.div_ceil(64)));
            let walks: Vec<i32> = tables.walks.iter().flatten().copied().collect();
            assert_eq!(rec.uploaded::<i32>(p.k_tile_walks as u64), Some(walks));
            if deterministic {
                assert_eq!(launches[3].kernel, "maskattn_bwd_dq_bf16_d128");
                assert_eq!(launches[3].grid.1 as usize, l.div_ceil(64));
            }
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
            let tables = BackwardTables::new(&mask, &backward_tiles(d, TileConfig::Auto, u32::MAX).unwrap());
            assert_eq!(rec.uploaded::<i32>(params[0].k_tile_order as u64), Some(tables.k_tile_order));
            assert_eq!(rec.uploaded::<i32>(params[0].q_tile_order as u64), Some(tables.q_tile_order));
        }
    }

    /// Class 256: the d256 kernels, one CTA per 64-column output slice the real head dim
    /// reaches, a dQ accumulator of the class's row length.
    #[test]
    fn class_256_launches_one_cta_per_output_slice() {
        let mask = Mask::causal(100, 100).unwrap();
        for (d, slices) in [(136, 3), (200, 4), (256, 4)] {
            let x = Array4::from_elem((1, 100, 2, d), bf16::ONE);
            for deterministic in [false, true] {
                let rec = Recorder::default();
                attention_grad(&rec, x.view(), x.view(), x.view(), x.view(), &mask, None, deterministic).unwrap();
                let l = rec.launches();
                let main = if deterministic { "maskattn_bwd_dkdv_bf16_d256" } else { "maskattn_bwd_bf16_d256" };
                assert_eq!(
                    (l[2].kernel.as_str(), l[2].grid.2, l[2].smem_bytes),
                    (main, slices, ffi::MASKATTN_BWD_SMEM_D256)
                );
                let p: ffi::MaskattnBwdParams = l[2].params();
                assert_eq!((p.head_dim, p.dq_accum_cols), (d as i32, 256));
                if deterministic {
                    assert_eq!((l[3].kernel.as_str(), l[3].grid.2), ("maskattn_bwd_dq_bf16_d256", slices));
                } else {
                    assert_eq!(rec.buffer_len(p.dq_accum as u64), Some(100 * 2 * 256));
                }
            }
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
        // Head dims the kernels do not take, before anything is uploaded.
        for d in [4, 12, 250, 264, 512] {
            let rec = Recorder::default();
            let x = Array4::from_elem((1, 100, 2, d), bf16::ONE);
            let e = attention_grad(&rec, x.view(), x.view(), x.view(), x.view(), &mask, None, false).unwrap_err();
            assert!(matches!(e, Error::Unsupported(_)), "{d}: {e}");
            assert_eq!(rec.allocations(), 0, "{d}");
        }
    }
}
