//! [candle](https://github.com/huggingface/candle) interop (feature `candle`): maskattn's
//! masked attention on candle tensors.
//!
//! [`masked_attention`] takes `[B, L, H, D]` candle tensors and a [`Mask`] and returns
//! `softmax(scale * q k^T + mask) v` as a new candle tensor `[B, Lq, Hq, D]`;
//! [`masked_attention_with_lse`] also returns the log-sum-exp `[B, Hq, Lq]` (f32,
//! natural log, `-inf` for a row that sees no key). GQA/MQA: K and V may have fewer
//! heads than Q, dividing them.
//!
//! # On CUDA (bf16, f16): zero copies
//!
//! The op runs as a candle [`CustomOp3`]: maskattn's forward kernel reads candle's own
//! device buffers through their layouts (start offset and strides become a
//! [`DeviceTensor`] view) and writes a fresh contiguous output, on the candle device's
//! stream, so it is ordered with the rest of the model without synchronization.
//! Strided inputs such as `x.transpose(1, 2)` of a `[B, H, L, D]` tensor, or a
//! `narrow` of a fused QKV projection, are taken as they are. Layouts the kernel cannot
//! read are an error, never a silent copy: the head dimension must have stride 1, the
//! other strides must be multiples of 8 elements and the first element 16-byte aligned
//! (call `.contiguous()` first for anything else). q, k and v must share one dtype.
//!
//! Per CUDA stream, maskattn's kernels are loaded once (a process-wide cache; it keeps
//! the stream alive). Uploaded masks are cached too: the last [`MASK_CACHE_ENTRIES`]
//! distinct (stream, mask, head dim) triples keep their [`DeviceMask`] (16 bytes per
//! query row plus 4 per query tile on the device, and a host copy of the mask); a hit
//! costs one comparison of the mask's intervals, a miss one small host-to-device copy.
//! [`clear_mask_cache`] frees them. The cache keeps repeated calls with the same mask
//! (every layer of a model) free of host-to-device transfers.
//!
//! # On the CPU (f32, f64, bf16, f16): the f64 reference
//!
//! CPU tensors go through [`crate::reference::attention`] (f64, row by row, result
//! rounded to the input dtype): exact and slow, meant for tests and small examples on
//! machines without a GPU, not for serving.
//!
//! Forward only: the op records no gradient (use it under inference).
//!
//! ```no_run
//! use candle_core::{DType, Device, Tensor};
//! use maskattn::{Mask, Segment, VideoLayout};
//! # fn main() -> candle_core::Result<()> {
//! let dev = Device::new_cuda(0)?;
//! let layout = VideoLayout::new(vec![
//!     Segment::Text(16),
//!     Segment::Frames { frames: 4, tokens: 64 },
//!     Segment::Text(16),
//! ])
//! .map_err(candle_core::Error::wrap)?;
//! let mask = Mask::frame_block_causal(&layout).map_err(candle_core::Error::wrap)?;
//! let (b, l, h, d) = (1, layout.len(), 8, 128);
//! let q = Tensor::randn(0f32, 1.0, (b, l, h, d), &dev)?.to_dtype(DType::BF16)?;
//! let (out, lse) = maskattn::candle::masked_attention_with_lse(&q, &q, &q, &mask, None)?;
//! assert_eq!(out.dims(), &[b, l, h, d]);
//! assert_eq!(lse.dims(), &[b, h, l]);
//! # Ok(())
//! # }
//! ```

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::{CudaDType, CudaDevice};
use candle_core::op::BackpropOp;
use candle_core::{CpuStorage, CudaStorage, CustomOp3, DType, Layout, Shape, Storage, Tensor};
use ndarray::Array4;

use crate::cuda::{DeviceMask, DeviceTensor, DeviceTensorMut, Gpu, KernelElement, Layout4};
use crate::mask::Mask;
use crate::shape::{AttnShape, Element};

/// How many uploaded masks [`masked_attention`] keeps on the device (most recently
/// used first).
pub const MASK_CACHE_ENTRIES: usize = 16;

/// `softmax(scale * q k^T + mask) v` for candle tensors q `[B, Lq, Hq, D]` and k, v
/// `[B, Lk, Hkv, D]` (`Hkv` divides `Hq`), with `mask` of `Lq x Lk`; `scale` defaults
/// to `1/sqrt(D)`. Returns a contiguous `[B, Lq, Hq, D]` tensor of q's dtype on q's
/// device. See the [module docs](self) for devices, dtypes and layouts.
pub fn masked_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &Mask,
    scale: Option<f32>,
) -> candle_core::Result<Tensor> {
    Ok(masked_attention_with_lse(q, k, v, mask, scale)?.0)
}

/// [`masked_attention`] and the log-sum-exp of each row's scaled, masked scores:
/// `(out [B, Lq, Hq, D], lse [B, Hq, Lq])`, the LSE in f32 (natural log, `-inf` for a
/// row with no visible key), contiguous, on q's device. The kernel computes it anyway:
/// it costs nothing extra.
pub fn masked_attention_with_lse(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &Mask,
    scale: Option<f32>,
) -> candle_core::Result<(Tensor, Tensor)> {
    let op = MaskedAttention { mask, scale, lse: Mutex::new(None) };
    let out = q.apply_op3_no_bwd(k, v, &op)?;
    let lse = lock(&op.lse).take().ok_or_else(|| candle_core::Error::msg("maskattn: the op produced no LSE"))?;
    let (b, _, hq, _) = out.dims4()?;
    let lse = Tensor::from_storage(lse, (b, hq, mask.len_q()), BackpropOp::none(), false);
    Ok((out, lse))
}

/// Frees the masks [`masked_attention`] keeps uploaded (see [`MASK_CACHE_ENTRIES`]).
pub fn clear_mask_cache() {
    lock(mask_cache()).clear();
}

/// The custom op; the LSE leaves through `lse` because a candle op has one output.
struct MaskedAttention<'a> {
    mask: &'a Mask,
    scale: Option<f32>,
    lse: Mutex<Option<Storage>>,
}

fn err(e: crate::Error) -> candle_core::Error {
    candle_core::Error::wrap(e)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves plain data behind, still valid.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// `[B, L, H, D]` dims and strides of a candle layout; strides of size-1 dims (never
/// multiplied by a non-zero index) become 0, so that e.g. the batch stride of a
/// single-batch `narrow` does not trip the kernel's stride checks.
fn dims_strides(l: &Layout, name: &str) -> candle_core::Result<([usize; 4], [usize; 4])> {
    let dims: [usize; 4] = l
        .dims()
        .try_into()
        .map_err(|_| candle_core::Error::msg(format!("maskattn: {name} must be [B, L, H, D], got {:?}", l.dims())))?;
    let mut strides: [usize; 4] = l.stride().try_into().expect("a layout has one stride per dim");
    for (s, &n) in strides.iter_mut().zip(&dims) {
        if n == 1 {
            *s = 0;
        }
    }
    Ok((dims, strides))
}

impl CustomOp3 for MaskedAttention<'_> {
    fn name(&self) -> &'static str {
        "maskattn-masked-attention"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        use CpuStorage as S;
        match (s1, s2, s3) {
            (S::BF16(q), S::BF16(k), S::BF16(v)) => self.cpu(q, l1, k, l2, v, l3, S::BF16),
            (S::F16(q), S::F16(k), S::F16(v)) => self.cpu(q, l1, k, l2, v, l3, S::F16),
            (S::F32(q), S::F32(k), S::F32(v)) => self.cpu(q, l1, k, l2, v, l3, S::F32),
            (S::F64(q), S::F64(k), S::F64(v)) => self.cpu(q, l1, k, l2, v, l3, S::F64),
            _ => candle_core::bail!(
                "maskattn: q, k, v must share one of bf16, f16, f32, f64 on the CPU, got {:?}, {:?}, {:?}",
                s1.dtype(),
                s2.dtype(),
                s3.dtype()
            ),
        }
    }

    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
        s3: &CudaStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        match (s1.dtype(), s2.dtype(), s3.dtype()) {
            (DType::BF16, DType::BF16, DType::BF16) => self.cuda::<half::bf16>(s1, l1, s2, l2, s3, l3),
            (DType::F16, DType::F16, DType::F16) => self.cuda::<half::f16>(s1, l1, s2, l2, s3, l3),
            (a, b, c) => candle_core::bail!(
                "maskattn: q, k, v must all be bf16 or all f16 on CUDA, got {a:?}, {b:?}, {c:?} \
                 (convert with .to_dtype(DType::BF16))"
            ),
        }
    }
}

impl MaskedAttention<'_> {
    /// The f64 reference on host data, rounded to `T`.
    #[allow(clippy::too_many_arguments)]
    fn cpu<T: Element>(
        &self,
        q: &[T],
        lq: &Layout,
        k: &[T],
        lk: &Layout,
        v: &[T],
        lv: &Layout,
        wrap: fn(Vec<T>) -> CpuStorage,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (q, k, v) = (gather(q, lq, "q")?, gather(k, lk, "k")?, gather(v, lv, "v")?);
        let r = crate::reference::attention(q.view(), k.view(), v.view(), self.mask, self.scale.map(f64::from))
            .map_err(err)?;
        let dims = r.out.dim();
        let out = r.out.iter().map(|&x| T::from_f64(x)).collect();
        let lse = r.lse.iter().map(|&x| x as f32).collect();
        *lock(&self.lse) = Some(Storage::Cpu(CpuStorage::F32(lse)));
        Ok((wrap(out), Shape::from(dims)))
    }

    /// The kernel on candle's buffers and stream.
    #[allow(clippy::too_many_arguments)]
    fn cuda<T: KernelElement + CudaDType>(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
        s3: &CudaStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let dev = &s1.device;
        let (q, k, v) = (view::<T>(s1, l1, "q")?, view::<T>(s2, l2, "k")?, view::<T>(s3, l3, "v")?);
        let sh = AttnShape::new(&q.layout.dims, &k.layout.dims, &v.layout.dims, self.mask).map_err(err)?;
        let gpu = gpu_for(dev)?;
        let device_mask = device_mask(&gpu, self.mask, sh.head_dim)?;
        let mut out = dev.alloc_zeros::<T>(q.layout.dims.iter().product())?;
        let mut lse = dev.alloc_zeros::<f32>(sh.batch * sh.heads_q * sh.len_q)?;
        gpu.attention_forward(
            &q,
            &k,
            &v,
            &device_mask,
            self.scale,
            &mut DeviceTensorMut { data: out.as_view_mut(), layout: Layout4::contiguous(q.layout.dims) },
            &mut lse.as_view_mut(),
        )
        .map_err(err)?;
        *lock(&self.lse) = Some(Storage::Cuda(CudaStorage::wrap_cuda_slice(lse, dev.clone())));
        Ok((CudaStorage::wrap_cuda_slice(out, dev.clone()), Shape::from(q.layout.dims.to_vec())))
    }
}

/// A `[B, L, H, D]` host tensor in standard layout from candle's strided storage.
fn gather<T: Element>(data: &[T], l: &Layout, name: &str) -> candle_core::Result<Array4<T>> {
    let (dims, strides) = dims_strides(l, name)?;
    let start = l.start_offset();
    let last =
        dims.iter().zip(strides).try_fold(start, |acc, (&n, s)| acc.checked_add(n.saturating_sub(1).checked_mul(s)?));
    if dims.contains(&0) || !matches!(last, Some(last) if last < data.len()) {
        candle_core::bail!("maskattn: {name}: layout {l:?} is empty or exceeds its storage of {} elements", data.len());
    }
    let [s0, s1, s2, s3] = strides;
    Ok(Array4::from_shape_fn(dims, |(b, i, h, c)| data[start + b * s0 + i * s1 + h * s2 + c * s3]))
}

/// A view of candle's buffer from the layout's first element, with its strides; the
/// kernel wrapper checks that every addressed element lies inside it.
fn view<'a, T: CudaDType>(s: &'a CudaStorage, l: &Layout, name: &str) -> candle_core::Result<DeviceTensor<'a, T>> {
    let (dims, strides) = dims_strides(l, name)?;
    let slice = s.as_cuda_slice::<T>()?;
    let start = l.start_offset();
    if start >= slice.len() {
        candle_core::bail!("maskattn: {name}: start offset {start} is past its buffer of {} elements", slice.len());
    }
    Ok(DeviceTensor { data: slice.slice(start..), layout: Layout4 { dims, strides } })
}

/// maskattn's kernels loaded on `dev`'s stream, once per stream. The cached handle
/// holds the stream, so a key (its address) is never reused by another stream.
fn gpu_for(dev: &CudaDevice) -> candle_core::Result<Gpu> {
    static GPUS: OnceLock<Mutex<HashMap<usize, Gpu>>> = OnceLock::new();
    let stream = dev.cuda_stream();
    let key = Arc::as_ptr(&stream) as usize;
    let mut gpus = lock(GPUS.get_or_init(Default::default));
    if let Some(gpu) = gpus.get(&key) {
        return Ok(gpu.clone());
    }
    let gpu = Gpu::with_stream(stream).map_err(err)?;
    gpus.insert(key, gpu.clone());
    Ok(gpu)
}

struct CachedMask {
    /// The stream's address, a key of the `gpu_for` cache (which keeps it alive).
    stream: usize,
    head_dim: usize,
    mask: Mask,
    device: Arc<DeviceMask>,
}

fn mask_cache() -> &'static Mutex<VecDeque<CachedMask>> {
    static MASKS: OnceLock<Mutex<VecDeque<CachedMask>>> = OnceLock::new();
    MASKS.get_or_init(Default::default)
}

/// The uploaded `mask` for `gpu`'s stream at `head_dim`, from the cache or uploaded now.
fn device_mask(gpu: &Gpu, mask: &Mask, head_dim: usize) -> candle_core::Result<Arc<DeviceMask>> {
    let stream = Arc::as_ptr(gpu.stream()) as usize;
    let mut cache = lock(mask_cache());
    if let Some(i) = cache.iter().position(|c| c.stream == stream && c.head_dim == head_dim && c.mask == *mask) {
        let hit = cache.remove(i).expect("index from position");
        let device = hit.device.clone();
        cache.push_front(hit);
        return Ok(device);
    }
    let device = Arc::new(gpu.upload_mask(mask, head_dim).map_err(err)?);
    cache.push_front(CachedMask { stream, head_dim, mask: mask.clone(), device: device.clone() });
    cache.truncate(MASK_CACHE_ENTRIES);
    Ok(device)
}
