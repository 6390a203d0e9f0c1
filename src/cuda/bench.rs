//! GPU timing of the forward kernel on a [`Case`](crate::cases::Case): inputs made on
//! the device once, CUDA events around each launch, the median reported.

use cudarc::driver::{sys::CUevent_flags, CudaSlice};

use super::attention::{DeviceMask, DeviceTensor, DeviceTensorMut, KernelElement};
use super::Gpu;
use crate::cases::Case;
use crate::error::Result;
use crate::mask::Mask;

/// Device buffers for one case, reused by every timed launch.
pub struct CaseBuffers<T> {
    q: CudaSlice<T>,
    k: CudaSlice<T>,
    v: CudaSlice<T>,
    out: CudaSlice<T>,
    lse: CudaSlice<f32>,
    q_dims: [usize; 4],
    kv_dims: [usize; 4],
}

/// Pseudo-random values in [-1, 1) rounded to T (splitmix64; cheap for 268M elements).
fn random<T: KernelElement>(n: usize, seed: u64) -> Vec<T> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            T::from_f64((s >> 11) as f64 / (1u64 << 52) as f64 - 1.0)
        })
        .collect()
}

impl<T: KernelElement> CaseBuffers<T> {
    /// Q, K, V with random values, O and LSE, for `case`.
    pub fn new(gpu: &Gpu, case: &Case) -> Result<Self> {
        let q_dims = [case.batch, case.mask.len_q(), case.heads_q, case.head_dim];
        let kv_dims = [case.batch, case.mask.len_k(), case.heads_kv, case.head_dim];
        let (nq, nkv) = (q_dims.iter().product(), kv_dims.iter().product());
        Ok(Self {
            q: gpu.upload(&random::<T>(nq, 1))?,
            k: gpu.upload(&random::<T>(nkv, 2))?,
            v: gpu.upload(&random::<T>(nkv, 3))?,
            out: gpu.zeros(nq)?,
            lse: gpu.zeros(case.batch * case.heads_q * case.mask.len_q())?,
            q_dims,
            kv_dims,
        })
    }
}

impl Gpu {
    /// Milliseconds of `launches` back-to-back forward launches with `mask` (uploaded
    /// by [`Gpu::upload_mask`]) on `bufs`, between two CUDA events.
    pub fn forward_elapsed_ms<T: KernelElement>(
        &self,
        bufs: &mut CaseBuffers<T>,
        mask: &DeviceMask,
        launches: usize,
    ) -> Result<f64> {
        let ctx = self.stream().context().clone();
        let start = ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))?;
        let end = ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))?;
        start.record(self.stream())?;
        for _ in 0..launches {
            self.attention_forward(
                &DeviceTensor::contiguous(&bufs.q, bufs.q_dims),
                &DeviceTensor::contiguous(&bufs.k, bufs.kv_dims),
                &DeviceTensor::contiguous(&bufs.v, bufs.kv_dims),
                mask,
                None,
                &mut DeviceTensorMut::contiguous(&mut bufs.out, bufs.q_dims),
                &mut bufs.lse.as_view_mut(),
            )?;
        }
        end.record(self.stream())?;
        Ok(start.elapsed_ms(&end)? as f64)
    }

    /// Median milliseconds of `iters` single forward launches with `mask` on `bufs`,
    /// after `warmup` untimed ones. The mask upload is outside the timing (made once
    /// per mask, like FlexAttention's block mask, whose build is timed separately).
    pub fn time_forward<T: KernelElement>(
        &self,
        bufs: &mut CaseBuffers<T>,
        mask: &Mask,
        warmup: usize,
        iters: usize,
    ) -> Result<f64> {
        let device_mask = self.upload_mask(mask, bufs.q_dims[3])?;
        self.forward_elapsed_ms(bufs, &device_mask, warmup)?;
        let mut times =
            (0..iters).map(|_| self.forward_elapsed_ms(bufs, &device_mask, 1)).collect::<Result<Vec<_>>>()?;
        times.sort_by(f64::total_cmp);
        Ok(times.get(times.len() / 2).copied().unwrap_or(f64::NAN))
    }
}
