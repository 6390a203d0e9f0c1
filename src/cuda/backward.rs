//! The backward attention kernels' safe wrapper (csrc/flash_bwd.cu): dQ, dK, dV of
//! attention with an interval mask, FlashAttention-2's backward on `mma.sync`.
//!
//! The schedule is [`crate::emulator::backward`]'s, step for step:
//!
//! 1. Preprocessing kernel: `D = rowsum(dO * O)` and the LSE in base 2 (`-inf`, a row
//!    that sees no key, becomes `+inf`, so its probabilities are `2^-inf = 0`), both
//!    `f32 [B, Hq, Lq_pad]` with `Lq_pad` = `Lq` rounded up to the query tile; in the
//!    atomic mode it also zeroes the `f32` dQ accumulator `[B, Hq, Lq, D]`.
//! 2. Main kernel, one CTA per (batch, kv head, key tile of 128 keys), heaviest walk
//!    first: K and V loaded once; for each query head of the GQA group and each query
//!    tile (64 rows) of the key tile's walk, the pair is classified with the query
//!    tile's summary (EMPTY skipped without loading Q or dO, FULL without a mask,
//!    PARTIAL masked per element), then `P = exp2(S scale log2(e) - LSE2)`,
//!    `dV += P^T dO`, `dP = dO V^T`, `dS = P (dP - D)`, `dK += dS^T Q`; dK (times the
//!    scale) and dV are written once, summed over the group in registers (no atomics).
//! 3. dQ, one of two ways:
//!    - atomic (default): the main kernel also computes `dS K` per pair and adds it
//!      with `f32` atomics into the accumulator; a last kernel converts
//!      `scale * accumulator` to the input dtype and layout. Atomics make the
//!      summation order, hence the last bits of dQ, vary from run to run.
//!    - deterministic: the main kernel skips dQ; a separate pass, one CTA per
//!      (batch, query head, query tile of 64 rows) walking key tiles of 64 exactly as
//!      the forward does, recomputes `S`, `P`, `dP`, `dS` and accumulates
//!      `dQ = scale dS K` in registers. Bit-reproducible, at the cost of two extra
//!      matrix products per visible tile pair (`Q K^T` and `dO V^T` again): seven
//!      instead of five, about 1.4x the tensor-core work of the atomic mode (the dQ
//!      pass itself has no atomics and writes dQ once).
//!
//! The query-tile summaries, the per-key-tile walks (the hull of the query tiles
//! whose forward key-tile range contains the key tile) and both launch orders are
//! computed on the host in `O(Lq + number of tile pairs walked)` from the mask by the
//! same `csrc/mask_tiles.h` code the kernels run, and uploaded with the intervals
//! ([`Gpu::upload_backward_mask`]).

use cudarc::driver::{CudaSlice, CudaView, DevicePtr, DevicePtrMut, DeviceRepr, LaunchConfig, PushKernelArg};
use ndarray::{Array4, ArrayView4};

use super::attention::{DeviceTensor, DeviceTensorMut, KernelElement, Layout4};
use super::Gpu;
use crate::error::{Error, Result};
use crate::ffi;
use crate::mask::Mask;
use crate::shape::AttnShape;
use crate::tiles::{self, TileShape, TileSummary};

const DYNAMIC_SMEM_ATTR: cudarc::driver::sys::CUfunction_attribute =
    cudarc::driver::sys::CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES;

// SAFETY: a plain C struct of pointers and numbers, passed by value to the kernels.
unsafe impl DeviceRepr for ffi::MaskattnBwdParams {}
// SAFETY: a plain C struct of 11 `i32`, copied to the device as an array.
unsafe impl DeviceRepr for ffi::MaskattnTileSummary {}

/// The backward kernels' tiles at head dim `head_dim` (csrc/params.h): the main
/// kernel's (`MASKATTN_BWD_BLOCK_M` query rows by `MASKATTN_BWD_BLOCK_N` keys, the
/// shape to give [`crate::emulator::backward`]) and the deterministic dQ pass's.
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
struct BackwardPlan {
    /// Per query tile of the main kernel (= the dQ pass's query tiles).
    summaries: Vec<TileSummary>,
    /// Per key tile: the query tiles `[begin, end)` it walks.
    walks: Vec<[i32; 2]>,
    /// Key tiles, longest walk first (ties by index).
    k_tile_order: Vec<i32>,
    /// Query tiles of the dQ pass, most key tiles first.
    q_tile_order: Vec<i32>,
}

impl BackwardPlan {
    fn new(mask: &Mask, main: TileShape, dq: TileShape) -> Self {
        let (bm, bn) = (main.block_m(), main.block_n());
        debug_assert_eq!(bm, dq.block_m(), "the dQ pass shares the main kernel's query tiles");
        let summaries: Vec<TileSummary> =
            (0..mask.len_q().div_ceil(bm)).map(|qt| tiles::summarize(mask, qt * bm..(qt + 1) * bm)).collect();
        // The transpose of the forward's walk: key tile kt walks the hull of the query
        // tiles whose key-tile range contains it (src/emulator/backward.rs).
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

/// A mask uploaded for the backward kernels: its row intervals, the query-tile
/// summaries, the key tiles' walks and both launch orders (a few KB even at 128K
/// tokens). Reuse it across calls, batches and heads.
#[derive(Debug)]
pub struct DeviceBackwardMask {
    intervals: CudaSlice<i32>,
    summaries: CudaSlice<TileSummary>,
    walks: CudaSlice<i32>,
    k_tile_order: CudaSlice<i32>,
    q_tile_order: CudaSlice<i32>,
    len_q: usize,
    len_k: usize,
    head_dim: usize,
}

impl DeviceBackwardMask {
    /// Query rows.
    pub fn len_q(&self) -> usize {
        self.len_q
    }

    /// Keys.
    pub fn len_k(&self) -> usize {
        self.len_k
    }
}

fn strides(l: &Layout4) -> [i64; 3] {
    [l.strides[0] as i64, l.strides[1] as i64, l.strides[2] as i64]
}

fn grid_blocks(rows: usize, what: &str) -> Result<u32> {
    let blocks = rows.div_ceil(ffi::MASKATTN_BWD_ROWS_PER_CTA as usize);
    u32::try_from(blocks)
        .ok()
        .filter(|&b| b <= i32::MAX as u32)
        .ok_or_else(|| Error::Unsupported(format!("{rows} {what} rows exceed the grid")))
}

impl Gpu {
    /// Uploads a mask for the backward kernels at head dim `head_dim`.
    pub fn upload_backward_mask(&self, mask: &Mask, head_dim: usize) -> Result<DeviceBackwardMask> {
        let (main, dq) = backward_tiles(head_dim)?;
        let plan = BackwardPlan::new(mask, main, dq);
        if plan.walks.len() > 65535 || plan.q_tile_order.len() > 65535 {
            return Err(Error::Unsupported(format!(
                "{} key tiles or {} query tiles exceed the grid's 65535",
                plan.walks.len(),
                plan.q_tile_order.len()
            )));
        }
        let walks: Vec<i32> = plan.walks.iter().flatten().copied().collect();
        Ok(DeviceBackwardMask {
            intervals: self.upload(mask.as_flat())?,
            summaries: self.upload(&plan.summaries)?,
            walks: self.upload(&walks)?,
            k_tile_order: self.upload(&plan.k_tile_order)?,
            q_tile_order: self.upload(&plan.q_tile_order)?,
            len_q: mask.len_q(),
            len_k: mask.len_k(),
            head_dim,
        })
    }

    /// Gradients of `out = softmax(scale * q k^T + mask) v` on this handle's stream:
    /// `dq` (`[B, Lq, Hq, D]`), `dk` and `dv` (`[B, Lk, Hkv, D]`, summed over each kv
    /// head's query heads with GQA/MQA) from the inputs, the forward's `out` and `lse`
    /// (`[B, Hq, Lq]`, natural log, contiguous, as [`Gpu::attention_forward`] writes it;
    /// `-inf` for rows that see no key) and `d_out = dL/dO` (like `q`). `scale` must be
    /// the forward's (default `1/sqrt(D)`). Every element of `dq`, `dk`, `dv` is
    /// written; rows that see no key get 0, keys no row sees get 0.
    ///
    /// Three launches: a preprocessing kernel (`D = rowsum(dO * O)`, the LSE in base 2),
    /// the main kernel (one CTA per batch, kv head and key tile of 128 keys: K and V
    /// loaded once, every query head of the group and every non-EMPTY query tile of 64
    /// rows walked, dK and dV accumulated in registers and written once, without atomics),
    /// then dQ one of two ways:
    /// - `deterministic = false`: the main kernel also computes `dS K` for each tile pair
    ///   and adds it with `f32` atomics into a `[B, Hq, Lq, D]` accumulator, which a last
    ///   kernel scales and converts. The atomics' order varies, so dQ's last bits vary
    ///   between runs (dK and dV never do).
    /// - `deterministic = true`: no atomics; a separate pass (one CTA per batch, query
    ///   head and query tile, walking the key tiles as the forward does) recomputes
    ///   `S = Q K^T`, `P`, `dP = dO V^T` and `dS` and accumulates `dQ = scale dS K` in
    ///   registers. Bit-identical from run to run, at the cost of two extra matrix
    ///   products per visible tile pair: seven instead of five, about 1.4x the
    ///   tensor-core work of the atomic mode (it saves the atomics and the accumulator's
    ///   `4 * B * Hq * Lq * D` bytes of traffic and memory).
    ///
    /// Scratch: `8 * B * Hq * Lq_pad` bytes (D and the base-2 LSE), plus the
    /// `4 * B * Hq * Lq * D` byte dQ accumulator in the atomic mode, allocated on the
    /// stream for the call.
    ///
    /// Errors, all before any launch: shapes that disagree (with each other, the mask,
    /// `lse`'s length), a head dim other than 64, 96 and 128, a scale that is not
    /// positive and finite, strides that are not multiples of 8 elements, bases not
    /// 16-byte aligned, buffers too short, outputs whose rows overlap.
    #[allow(clippy::too_many_arguments)]
    pub fn attention_backward<T: KernelElement>(
        &self,
        q: &DeviceTensor<T>,
        k: &DeviceTensor<T>,
        v: &DeviceTensor<T>,
        out: &DeviceTensor<T>,
        lse: &CudaView<f32>,
        d_out: &DeviceTensor<T>,
        mask: &DeviceBackwardMask,
        scale: Option<f32>,
        deterministic: bool,
        dq: &mut DeviceTensorMut<T>,
        dk: &mut DeviceTensorMut<T>,
        dv: &mut DeviceTensorMut<T>,
    ) -> Result<()> {
        let sh = AttnShape::of_qkv(&q.layout.dims, &k.layout.dims, &v.layout.dims)?;
        if (sh.len_q, sh.len_k) != (mask.len_q, mask.len_k) {
            return Err(Error::Shape(format!(
                "the mask is for Lq={}, Lk={} but q, k have Lq={}, Lk={}",
                mask.len_q, mask.len_k, sh.len_q, sh.len_k
            )));
        }
        let (main_tiles, dq_tiles) = backward_tiles(sh.head_dim)?;
        if mask.head_dim != sh.head_dim {
            return Err(Error::Shape(format!(
                "the mask was uploaded for head dim {}, the tensors have {}",
                mask.head_dim, sh.head_dim
            )));
        }
        for (name, dims, want) in [
            ("out", out.layout.dims, q.layout.dims),
            ("d_out", d_out.layout.dims, q.layout.dims),
            ("dq", dq.layout.dims, q.layout.dims),
            ("dk", dk.layout.dims, k.layout.dims),
            ("dv", dv.layout.dims, k.layout.dims),
        ] {
            if dims != want {
                return Err(Error::Shape(format!("{name} dims {dims:?} must be {want:?}")));
            }
        }
        let lse_len = sh.batch * sh.heads_q * sh.len_q;
        if lse.len() < lse_len {
            return Err(Error::Shape(format!("lse holds {} floats, needs B*Hq*Lq = {lse_len}", lse.len())));
        }
        let scale = match scale {
            Some(s) if !(s.is_finite() && s > 0.0) => {
                return Err(crate::error::invalid("scale", format!("{s}: the kernels need a positive finite scale")))
            }
            Some(s) => s,
            None => 1.0 / (sh.head_dim as f32).sqrt(),
        };
        let len_q_pad = sh.len_q.div_ceil(main_tiles.block_m()) * main_tiles.block_m();
        let (n_k_tiles, n_q_tiles) = (sh.len_k.div_ceil(main_tiles.block_n()), sh.len_q.div_ceil(dq_tiles.block_m()));
        let fits_i32 = |n: usize| n <= i32::MAX as usize;
        if !fits_i32(len_q_pad) || !fits_i32(sh.batch * sh.heads_q) || n_k_tiles > 65535 || n_q_tiles > 65535 {
            return Err(Error::Unsupported(format!("shape {sh:?} exceeds the kernels' grid")));
        }
        let pre_blocks = grid_blocks(sh.batch * sh.heads_q * len_q_pad, "preprocessing")?;
        let convert_blocks = grid_blocks(sh.batch * sh.heads_q * sh.len_q, "dQ")?;
        let dt = T::KERNEL_NAME;
        let d = sh.head_dim;
        let f_pre = self.function(&format!("maskattn_bwd_preprocess_{dt}"))?;
        let f_main = if deterministic {
            self.function(&format!("maskattn_bwd_dkdv_{dt}_d{d}"))?
        } else {
            self.function(&format!("maskattn_bwd_{dt}_d{d}"))?
        };
        let f_dq = if deterministic {
            self.function(&format!("maskattn_bwd_dq_{dt}_d{d}"))?
        } else {
            self.function(&format!("maskattn_bwd_dq_convert_{dt}"))?
        };
        let (smem_main, smem_dq) = match d {
            64 => (ffi::MASKATTN_BWD_SMEM_D64, ffi::MASKATTN_BWD_DQ_SMEM_D64),
            96 => (ffi::MASKATTN_BWD_SMEM_D96, ffi::MASKATTN_BWD_DQ_SMEM_D96),
            _ => (ffi::MASKATTN_BWD_SMEM_D128, ffi::MASKATTN_BWD_DQ_SMEM_D128),
        };

        let stream = self.stream();
        let esize = std::mem::size_of::<T>();
        let (q_ptr, _q_sync) = q.data.device_ptr(stream);
        let (k_ptr, _k_sync) = k.data.device_ptr(stream);
        let (v_ptr, _v_sync) = v.data.device_ptr(stream);
        let (o_ptr, _o_sync) = out.data.device_ptr(stream);
        let (do_ptr, _do_sync) = d_out.data.device_ptr(stream);
        let (lse_ptr, _lse_sync) = lse.device_ptr(stream);
        q.layout.check("q", q_ptr, q.data.len(), esize)?;
        k.layout.check("k", k_ptr, k.data.len(), esize)?;
        v.layout.check("v", v_ptr, v.data.len(), esize)?;
        out.layout.check("out", o_ptr, out.data.len(), esize)?;
        d_out.layout.check("d_out", do_ptr, d_out.data.len(), esize)?;
        let (dq_len, dk_len, dv_len) = (dq.data.len(), dk.data.len(), dv.data.len());
        let (dq_ptr, _dq_sync) = dq.data.device_ptr_mut(stream);
        let (dk_ptr, _dk_sync) = dk.data.device_ptr_mut(stream);
        let (dv_ptr, _dv_sync) = dv.data.device_ptr_mut(stream);
        for (name, layout, ptr, len) in
            [("dq", &dq.layout, dq_ptr, dq_len), ("dk", &dk.layout, dk_ptr, dk_len), ("dv", &dv.layout, dv_ptr, dv_len)]
        {
            layout.check(name, ptr, len, esize)?;
            layout.check_disjoint(name)?;
        }

        // Scratch, on the stream (stream-ordered allocations, freed after the launches).
        let rows_pad = sh.batch * sh.heads_q * len_q_pad;
        // SAFETY: the preprocessing kernel writes every element of lse2, delta and (in
        // the atomic mode) the accumulator before any other kernel reads them.
        let mut lse2 = unsafe { stream.alloc::<f32>(rows_pad) }?;
        let mut delta = unsafe { stream.alloc::<f32>(rows_pad) }?;
        let mut accum = if deterministic { None } else { Some(unsafe { stream.alloc::<f32>(lse_len * sh.head_dim) }?) };
        let (lse2_ptr, _lse2_sync) = lse2.device_ptr_mut(stream);
        let (delta_ptr, _delta_sync) = delta.device_ptr_mut(stream);
        let accum_guard = accum.as_mut().map(|a| a.device_ptr_mut(stream));
        let accum_ptr = accum_guard.as_ref().map_or(0, |(p, _)| *p);
        let (iv_ptr, _iv_sync) = mask.intervals.device_ptr(stream);
        let (sum_ptr, _sum_sync) = mask.summaries.device_ptr(stream);
        let (walk_ptr, _walk_sync) = mask.walks.device_ptr(stream);
        let (kord_ptr, _kord_sync) = mask.k_tile_order.device_ptr(stream);
        let (qord_ptr, _qord_sync) = mask.q_tile_order.device_ptr(stream);

        let ([qb, qr, qh], [kb, kr, kh], [vb, vr, vh], [ob, or, oh]) =
            (strides(&q.layout), strides(&k.layout), strides(&v.layout), strides(&out.layout));
        let ([gb, gr, gh], [dqb, dqr, dqh], [dkb, dkr, dkh], [dvb, dvr, dvh]) =
            (strides(&d_out.layout), strides(&dq.layout), strides(&dk.layout), strides(&dv.layout));
        let params = ffi::MaskattnBwdParams {
            q: q_ptr as *const _,
            k: k_ptr as *const _,
            v: v_ptr as *const _,
            o: o_ptr as *const _,
            d_out: do_ptr as *const _,
            dq: dq_ptr as *mut _,
            dk: dk_ptr as *mut _,
            dv: dv_ptr as *mut _,
            lse: lse_ptr as *const f32,
            lse2: lse2_ptr as *mut f32,
            delta: delta_ptr as *mut f32,
            dq_accum: accum_ptr as *mut f32,
            intervals: iv_ptr as *const i32,
            q_tile_summaries: sum_ptr as *const TileSummary,
            k_tile_order: kord_ptr as *const i32,
            k_tile_walks: walk_ptr as *const i32,
            q_tile_order: qord_ptr as *const i32,
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
        for (f, smem) in [(&f_main, smem_main), (&f_dq, if deterministic { smem_dq } else { 0 })] {
            if smem > 48 * 1024 {
                f.set_attribute(DYNAMIC_SMEM_ATTR, smem as i32)?;
            }
        }
        let row_threads = (ffi::MASKATTN_BWD_ROW_THREADS, 1, 1);
        let launches = [
            (&f_pre, LaunchConfig { grid_dim: (pre_blocks, 1, 1), block_dim: row_threads, shared_mem_bytes: 0 }),
            (
                &f_main,
                LaunchConfig {
                    grid_dim: ((sh.batch * sh.heads_kv) as u32, n_k_tiles as u32, 1),
                    block_dim: (ffi::MASKATTN_BWD_THREADS, 1, 1),
                    shared_mem_bytes: smem_main,
                },
            ),
            (
                &f_dq,
                if deterministic {
                    LaunchConfig {
                        grid_dim: ((sh.batch * sh.heads_q) as u32, n_q_tiles as u32, 1),
                        block_dim: (ffi::MASKATTN_BWD_DQ_THREADS, 1, 1),
                        shared_mem_bytes: smem_dq,
                    }
                } else {
                    LaunchConfig { grid_dim: (convert_blocks, 1, 1), block_dim: row_threads, shared_mem_bytes: 0 }
                },
            ),
        ];
        for (f, cfg) in launches {
            let mut launch = stream.launch_builder(f);
            launch.arg(&params);
            // SAFETY: every pointer in `params` comes from a live device buffer whose
            // layout was checked above to cover every element the kernels address
            // (dims, strides, alignment, bounds, disjoint output rows, lse's length);
            // the scratch buffers are sized for B*Hq*Lq_pad rows (and B*Hq*Lq*D floats)
            // and live until after the launches (freed in stream order); the mask's
            // tables are for these lengths and tiles (checked); the grids and shared
            // memory are those the kernels were compiled for.
            unsafe { launch.launch(cfg) }?;
        }
        drop(accum_guard);
        Ok(())
    }

    /// Convenience for tests and examples: uploads `[B, L, H, D]` host arrays, runs
    /// [`Gpu::attention_forward`] and then [`Gpu::attention_backward`] with upstream
    /// gradient `d_out`, and downloads `(dq, dk, dv)`.
    #[allow(clippy::type_complexity, clippy::too_many_arguments)]
    pub fn attention_grad<T: KernelElement>(
        &self,
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
        let dims = |a: &ArrayView4<T>| <[usize; 4]>::try_from(a.shape()).expect("4-d");
        let upload = |a: &ArrayView4<T>| self.upload(a.as_standard_layout().as_slice().expect("standard layout"));
        let (q_dims, kv_dims) = (dims(&q), dims(&k));
        let (qd, kd, vd, dod) = (upload(&q)?, upload(&k)?, upload(&v)?, upload(&d_out)?);
        let fwd_mask = self.upload_mask(mask, sh.head_dim)?;
        let bwd_mask = self.upload_backward_mask(mask, sh.head_dim)?;
        let mut out = self.zeros::<T>(q.len())?;
        let mut lse = self.zeros::<f32>(sh.batch * sh.heads_q * sh.len_q)?;
        let (mut dq, mut dk, mut dv) =
            (self.zeros::<T>(q.len())?, self.zeros::<T>(k.len())?, self.zeros::<T>(k.len())?);
        let (tq, tk, tv) = (
            DeviceTensor::contiguous(&qd, q_dims),
            DeviceTensor::contiguous(&kd, kv_dims),
            DeviceTensor::contiguous(&vd, kv_dims),
        );
        self.attention_forward(
            &tq,
            &tk,
            &tv,
            &fwd_mask,
            scale,
            &mut DeviceTensorMut::contiguous(&mut out, q_dims),
            &mut lse.as_view_mut(),
        )?;
        self.attention_backward(
            &tq,
            &tk,
            &tv,
            &DeviceTensor::contiguous(&out, q_dims),
            &lse.as_view(),
            &DeviceTensor::contiguous(&dod, q_dims),
            &bwd_mask,
            scale,
            deterministic,
            &mut DeviceTensorMut::contiguous(&mut dq, q_dims),
            &mut DeviceTensorMut::contiguous(&mut dk, kv_dims),
            &mut DeviceTensorMut::contiguous(&mut dv, kv_dims),
        )?;
        let host = |s: &CudaSlice<T>, d: [usize; 4]| -> Result<Array4<T>> {
            Ok(Array4::from_shape_vec(d, self.download(s)?).expect("sizes match"))
        };
        Ok((host(&dq, q_dims)?, host(&dk, kv_dims)?, host(&dv, kv_dims)?))
    }
}

#[cfg(test)]
mod tests {
    use super::{backward_tiles, BackwardPlan};
    use crate::emulator;
    use crate::mask::Mask;
    use crate::reference;
    use crate::tiles::{self, TileClass};
    use ndarray::Array4;

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
    /// lies in the key tile's walk, and the walk's pairs classify as the emulator's
    /// schedule counts them: the kernel's host tables are the emulator's schedule.
    #[test]
    fn walks_cover_every_nonempty_pair_and_match_the_emulator() {
        for mask in masks() {
            let (main, dq) = backward_tiles(64).unwrap();
            let plan = BackwardPlan::new(&mask, main, dq);
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
            let (mut full, mut partial, mut skipped) = (0, 0, 0);
            for (kt, &[b, e]) in plan.walks.iter().enumerate() {
                for qt in b..e {
                    let keys = kt * main.block_n()..(kt + 1) * main.block_n();
                    match tiles::classify(&plan.summaries[qt as usize], keys) {
                        TileClass::Empty => skipped += 1,
                        TileClass::Full => full += 1,
                        TileClass::Partial => partial += 1,
                    }
                }
            }
            let (heads, d) = (2, 8);
            let x = Array4::from_shape_fn((1, mask.len_q(), heads, d), |(_, i, h, c)| ((i + 3 * h + c) as f64).sin());
            let kv = Array4::from_shape_fn((1, mask.len_k(), heads, d), |(_, i, h, c)| ((2 * i + h + c) as f64).cos());
            let fwd = reference::attention(x.view(), kv.view(), kv.view(), &mask, None).unwrap();
            let (_, sched) =
                emulator::backward(x.view(), kv.view(), kv.view(), &fwd, x.view(), &mask, None, main).unwrap();
            assert_eq!((sched.full, sched.partial, sched.skipped), (heads * full, heads * partial, heads * skipped));
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
}
