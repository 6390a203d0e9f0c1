//! A deliberately naive GPU attention (csrc/naive_attention.cu): the "plain
//! matmul-softmax" a user writes without flash attention, kept as a point of
//! comparison for the flash kernels. For each (batch, query head) in turn it writes
//! the whole `[Lq, Lk]` score matrix to an f32 scratch buffer, masks and softmaxes it
//! row by row, and multiplies by V: every pair is computed, masked or not, on CUDA
//! cores. The inputs are checked before any launch, as for [`Gpu::attention_forward`].

use cudarc::driver::{CudaView, CudaViewMut, DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg};
use ndarray::{Array3, Array4, ArrayView4};

use super::{DeviceTensor, DeviceTensorMut, Gpu, KernelElement};
use crate::error::{invalid, Error, Result};
use crate::mask::Mask;
use crate::shape::AttnShape;

/// Side of the square tiles of the two matmul kernels (their blocks are 16x16).
const TILE: usize = 16;
/// Threads of one softmax block (one block per query row).
const SOFTMAX_THREADS: u32 = 256;
/// Largest score scratch, in bytes (the f32 `[Lq, Lk]` matrix of one head): 2^30
/// floats, so also under 2^31 elements.
const SCRATCH_MAX_BYTES: usize = 4 << 30;

impl Gpu {
    /// `out = softmax(scale * q k^T + mask) v` and `lse` (`[B, Hq, Lq]`, natural log,
    /// contiguous) by the naive three-kernel attention, on this handle's stream. The
    /// arguments are those of [`Gpu::attention_forward`], except the mask: its row
    /// intervals `[Lq][4]` as [`Mask::as_flat`] gives them (`gpu.upload(mask.as_flat())`).
    /// Any head dim; `scale` defaults to `1/sqrt(D)`. A query row with no visible key
    /// gets 0 and `-inf`. Needs an f32 scratch of `Lq * Lk` floats (at most 4 GiB),
    /// allocated per call; [`Error::Unsupported`] beyond.
    #[allow(clippy::too_many_arguments)]
    pub fn naive_attention<T: KernelElement>(
        &self,
        q: &DeviceTensor<T>,
        k: &DeviceTensor<T>,
        v: &DeviceTensor<T>,
        intervals: &CudaView<i32>,
        scale: Option<f32>,
        out: &mut DeviceTensorMut<T>,
        lse: &mut CudaViewMut<f32>,
    ) -> Result<()> {
        let sh = AttnShape::of_qkv(&q.layout.dims, &k.layout.dims, &v.layout.dims)?;
        if intervals.len() != 4 * sh.len_q {
            return Err(Error::Shape(format!(
                "the mask holds {} ints, 4 per query row needs {}",
                intervals.len(),
                4 * sh.len_q
            )));
        }
        if out.layout.dims != q.layout.dims {
            return Err(Error::Shape(format!("out dims {:?} differ from q's {:?}", out.layout.dims, q.layout.dims)));
        }
        let lse_len = sh.batch * sh.heads_q * sh.len_q;
        if lse.len() < lse_len {
            return Err(Error::Shape(format!("lse holds {} floats, needs B*Hq*Lq = {lse_len}", lse.len())));
        }
        let scale = match scale {
            Some(s) if !(s.is_finite() && s > 0.0) => {
                return Err(invalid("scale", format!("{s}: the kernels need a positive finite scale")))
            }
            Some(s) => s,
            None => 1.0 / (sh.head_dim as f32).sqrt(),
        };
        let scores = sh.len_q.checked_mul(sh.len_k).filter(|&n| n <= SCRATCH_MAX_BYTES / 4);
        let Some(scores) = scores else {
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

        let stream = self.stream();
        let esize = std::mem::size_of::<T>();
        let out_len = out.data.len();
        let (q_ptr, _q_sync) = q.data.device_ptr(stream);
        let (k_ptr, _k_sync) = k.data.device_ptr(stream);
        let (v_ptr, _v_sync) = v.data.device_ptr(stream);
        let (o_ptr, _o_sync) = out.data.device_ptr_mut(stream);
        let (lse_ptr, _lse_sync) = lse.device_ptr_mut(stream);
        let (iv_ptr, _iv_sync) = intervals.device_ptr(stream);
        q.layout.check("q", q_ptr, q.data.len(), esize)?;
        k.layout.check("k", k_ptr, k.data.len(), esize)?;
        v.layout.check("v", v_ptr, v.data.len(), esize)?;
        out.layout.check("out", o_ptr, out_len, esize)?;
        out.layout.check_disjoint("out")?;

        // SAFETY: f32 has no invalid bit patterns, and the scores kernel writes every
        // element before the softmax reads it.
        let mut s = unsafe { stream.alloc::<f32>(scores) }?;
        let (s_ptr, _s_sync) = s.device_ptr_mut(stream);
        let scores_fn = self.function(&format!("maskattn_naive_scores_{}", T::KERNEL_NAME))?;
        let softmax_fn = self.function("maskattn_naive_softmax")?;
        let pv_fn = self.function(&format!("maskattn_naive_pv_{}", T::KERNEL_NAME))?;
        let (lq, lk, d) = (sh.len_q as i32, sh.len_k as i32, sh.head_dim as i32);
        let tiles = |n: usize| n.div_ceil(TILE) as u32;
        let block = (TILE as u32, TILE as u32, 1);
        let scores_cfg =
            LaunchConfig { grid_dim: (tiles(sh.len_k), tiles(sh.len_q), 1), block_dim: block, shared_mem_bytes: 0 };
        let softmax_cfg =
            LaunchConfig { grid_dim: (sh.len_q as u32, 1, 1), block_dim: (SOFTMAX_THREADS, 1, 1), shared_mem_bytes: 0 };
        let pv_cfg =
            LaunchConfig { grid_dim: (tiles(sh.head_dim), tiles(sh.len_q), 1), block_dim: block, shared_mem_bytes: 0 };
        let group = sh.heads_q / sh.heads_kv;
        // Address of element (b, 0, h, 0) of a tensor at `base`.
        let at = |base: u64, strides: [usize; 4], b: usize, h: usize| {
            base + ((b * strides[0] + h * strides[2]) * esize) as u64
        };
        let row = |strides: [usize; 4]| strides[1] as i64;
        let (q_row, k_row, v_row, o_row) =
            (row(q.layout.strides), row(k.layout.strides), row(v.layout.strides), row(out.layout.strides));
        for b in 0..sh.batch {
            for h in 0..sh.heads_q {
                let hk = h / group;
                let (qp, kp) = (at(q_ptr, q.layout.strides, b, h), at(k_ptr, k.layout.strides, b, hk));
                let (vp, op) = (at(v_ptr, v.layout.strides, b, hk), at(o_ptr, out.layout.strides, b, h));
                let lp = lse_ptr + (((b * sh.heads_q + h) * sh.len_q) * 4) as u64;
                let mut launch = stream.launch_builder(&scores_fn);
                launch.arg(&qp).arg(&q_row).arg(&kp).arg(&k_row).arg(&lq).arg(&lk).arg(&d).arg(&scale).arg(&s_ptr);
                // SAFETY: the arguments match the kernel's signature. q and k were
                // checked above to cover every (b, l, h, c) they are read at, `s`
                // holds Lq * Lk floats, the kernel reads and writes in bounds only.
                unsafe { launch.launch(scores_cfg) }?;
                let mut launch = stream.launch_builder(&softmax_fn);
                launch.arg(&s_ptr).arg(&iv_ptr).arg(&lk).arg(&lp);
                // SAFETY: one block per row of `s` ([Lq][Lk] floats); `intervals`
                // holds 4 ints per row (checked); `lse` holds B*Hq*Lq floats
                // (checked) and this head's Lq of them start at `lp`.
                unsafe { launch.launch(softmax_cfg) }?;
                let mut launch = stream.launch_builder(&pv_fn);
                launch.arg(&s_ptr).arg(&vp).arg(&v_row).arg(&lq).arg(&lk).arg(&d).arg(&op).arg(&o_row);
                // SAFETY: v and out were checked to cover every element addressed,
                // and out's rows are disjoint; each output element is written once.
                unsafe { launch.launch(pv_cfg) }?;
            }
        }
        Ok(())
    }

    /// Convenience for tests and examples: uploads `[B, L, H, D]` host arrays and the
    /// mask, runs [`Gpu::naive_attention`] and downloads `(out, lse)`.
    pub fn naive_attention_host<T: KernelElement>(
        &self,
        q: ArrayView4<T>,
        k: ArrayView4<T>,
        v: ArrayView4<T>,
        mask: &Mask,
        scale: Option<f32>,
    ) -> Result<(Array4<T>, Array3<f32>)> {
        let sh = AttnShape::new(q.shape(), k.shape(), v.shape(), mask)?;
        let dims = |a: &ArrayView4<T>| <[usize; 4]>::try_from(a.shape()).expect("4-d");
        let upload = |a: &ArrayView4<T>| self.upload(a.as_standard_layout().as_slice().expect("standard layout"));
        let (dq, dk, dv) = (upload(&q)?, upload(&k)?, upload(&v)?);
        let intervals = self.upload(mask.as_flat())?;
        let mut out = self.zeros::<T>(q.len())?;
        let mut lse = self.zeros::<f32>(sh.batch * sh.heads_q * sh.len_q)?;
        self.naive_attention(
            &DeviceTensor::contiguous(&dq, dims(&q)),
            &DeviceTensor::contiguous(&dk, dims(&k)),
            &DeviceTensor::contiguous(&dv, dims(&v)),
            &intervals.as_view(),
            scale,
            &mut DeviceTensorMut::contiguous(&mut out, dims(&q)),
            &mut lse.as_view_mut(),
        )?;
        let out = Array4::from_shape_vec(dims(&q), self.download(&out)?).expect("sizes match");
        let lse = Array3::from_shape_vec((sh.batch, sh.heads_q, sh.len_q), self.download(&lse)?).expect("sizes match");
        Ok((out, lse))
    }
}
