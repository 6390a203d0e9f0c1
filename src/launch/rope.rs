//! Temporal-Aware Dual RoPE (csrc/rope.cu): Q, or Q and K in one launch, rotated in
//! place from position multipliers computed by [`crate::rope::positions`].

use ndarray::{Array4, ArrayView4};

use super::{download_array, upload_array, Backend, BufArg, KernelElement, KernelLaunch, Layout4, TensorArg};
use crate::error::{invalid, Error, Result};
use crate::ffi;
use crate::rope::{DualRope, RopeStyle};

/// Threads of one CTA (the kernels' `__launch_bounds__`).
const THREADS: u32 = 128;
/// Largest head dim: bounds the CTA's shared memory.
const MAX_HEAD_DIM: usize = 512;
/// At most this many tokens per CTA; fewer when a token has enough rows to fill one.
const MAX_TOKENS_PER_BLOCK: usize = 16;
/// Work items (16-byte chunks) a CTA aims at, to pick the tokens per CTA.
const ITEMS_PER_BLOCK: usize = 512;

/// The launch rotating `x` (and `y`, which must agree on `B`, `L` and `D`) in place
/// by `positions` (`L` doubles). Both were checked to hold every element the kernel
/// addresses, with 16-byte aligned rows that do not overlap (so the in-place update
/// of each row is race-free); D is a multiple of 16, and the shared memory is the
/// (D/2) * 8 * (1 + tokens_per_block) bytes the kernel uses (at most 34,816 for
/// D = 512, under the 48 KB default).
pub(crate) fn plan<T: KernelElement>(
    x: &TensorArg,
    y: Option<&TensorArg>,
    positions: BufArg,
    rope: &DualRope,
) -> Result<KernelLaunch<ffi::MaskattnRopeParams>> {
    rope.validate()?;
    for t in std::iter::once(&x.layout).chain(y.map(|y| &y.layout)) {
        if t.dims.contains(&0) {
            return Err(Error::Shape(format!("empty dimension in {:?}", t.dims)));
        }
    }
    let [b, l, h, d] = x.layout.dims;
    if let Some(y) = y {
        let [yb, yl, _, yd] = y.layout.dims;
        if (yb, yl, yd) != (b, l, d) {
            return Err(Error::Shape(format!(
                "q {:?} and k {:?} disagree on batch, length or head dim",
                x.layout.dims, y.layout.dims
            )));
        }
    }
    if d == 0 || d % 2 != 0 {
        return Err(Error::Shape(format!("RoPE needs an even, non-zero head dim, got {d}")));
    }
    if d % 16 != 0 || d > MAX_HEAD_DIM {
        return Err(Error::Unsupported(format!(
            "the RoPE kernel takes head dims that are multiples of 16 up to {MAX_HEAD_DIM}, got {d}"
        )));
    }
    if positions.len != l {
        return Err(Error::Shape(format!("{} positions for {l} tokens", positions.len)));
    }
    let heads_y = y.map_or(0, |y| y.layout.dims[2]);
    let chunks = match rope.style {
        RopeStyle::Half => d / 16,
        RopeStyle::Interleaved => d / 8,
    };
    let rows = b.checked_mul(h + heads_y).filter(|&r| r <= i32::MAX as usize);
    let Some(rows) = rows.filter(|r| r * chunks * MAX_TOKENS_PER_BLOCK <= i32::MAX as usize) else {
        return Err(Error::Unsupported(format!("B = {b} times {} heads is too many rows", h + heads_y)));
    };
    if l > i32::MAX as usize {
        return Err(Error::Unsupported(format!("{l} tokens exceed 2^31 - 1")));
    }
    let tokens_per_block = (ITEMS_PER_BLOCK / (rows * chunks)).clamp(1, MAX_TOKENS_PER_BLOCK).min(l);
    let npairs = d / 2;
    let smem = (npairs * 8 + tokens_per_block * npairs * 8) as u32;
    x.check_output::<T>("x")?;
    if let Some(y) = y {
        y.check_output::<T>("k")?;
    }
    let y =
        y.copied().unwrap_or(TensorArg { addr: 0, len: 0, layout: Layout4 { dims: [b, l, 0, d], strides: [0; 4] } });

    let st = |l: &Layout4, i: usize| l.strides[i] as i64;
    let params = ffi::MaskattnRopeParams {
        x: [x.addr as *mut _, y.addr as *mut _],
        batch_stride: [st(&x.layout, 0), st(&y.layout, 0)],
        row_stride: [st(&x.layout, 1), st(&y.layout, 1)],
        head_stride: [st(&x.layout, 2), st(&y.layout, 2)],
        positions: positions.addr as *const f64,
        log2_base: rope.base.log2(),
        heads: [h as i32, heads_y as i32],
        batch: b as i32,
        len: l as i32,
        head_dim: d as i32,
        interleaved: i32::from(rope.style == RopeStyle::Interleaved),
        tokens_per_block: tokens_per_block as i32,
    };
    Ok(KernelLaunch {
        kernel: format!("maskattn_dual_rope_{}", T::KERNEL_NAME),
        grid: (l.div_ceil(tokens_per_block) as u32, 1, 1),
        block: (THREADS, 1, 1),
        smem_bytes: smem,
        params,
    })
}

/// Dual RoPE on host arrays: `x` (and `y`) uploaded, rotated in place by the finite
/// multipliers `positions`, and downloaded.
fn rope_host<B: Backend, T: KernelElement>(
    b: &B,
    x: ArrayView4<T>,
    y: Option<ArrayView4<T>>,
    positions: &[f64],
    rope: &DualRope,
) -> Result<(Array4<T>, Option<Array4<T>>)> {
    if let Some(bad) = positions.iter().find(|m| !m.is_finite()) {
        return Err(invalid("positions", format!("{bad} is not finite")));
    }
    let x_dims = nonempty_dims(&x)?;
    let y_dims = y.as_ref().map(nonempty_dims).transpose()?;
    let mut dx = upload_array(b, &x)?;
    let mut dy = y.as_ref().map(|y| upload_array(b, y)).transpose()?;
    let dp = b.upload(positions)?;
    {
        let (x, _x) = TensorArg::of_mut(b, &mut dx, x_dims);
        let (y, _y) = dy.as_mut().zip(y_dims).map(|(dy, dims)| TensorArg::of_mut(b, dy, dims)).unzip();
        let (positions, _positions) = BufArg::of(b, &dp);
        let launch = plan::<T>(&x, y.as_ref(), positions, rope)?;
        // SAFETY: x, y and the positions are live buffers of `b` with their own
        // lengths, accessed until after the launch; the plan checked them.
        unsafe { b.launch(&launch) }?;
    }
    let y = dy.as_ref().zip(y_dims).map(|(dy, dims)| download_array(b, dy, dims)).transpose()?;
    Ok((download_array(b, &dx, x_dims)?, y))
}

fn nonempty_dims<T>(a: &ArrayView4<T>) -> Result<[usize; 4]> {
    let dims = super::dims(a);
    if dims.contains(&0) {
        return Err(Error::Shape(format!("empty dimension in {dims:?}")));
    }
    Ok(dims)
}

/// Dual RoPE of one host array `[B, L, H, D]`.
pub(crate) fn dual_rope<B: Backend, T: KernelElement>(
    b: &B,
    x: ArrayView4<T>,
    positions: &[f64],
    rope: &DualRope,
) -> Result<Array4<T>> {
    Ok(rope_host(b, x, None, positions, rope)?.0)
}

/// Dual RoPE of host Q and K in one launch, returns `(q, k)`.
pub(crate) fn dual_rope_qk<B: Backend, T: KernelElement>(
    b: &B,
    q: ArrayView4<T>,
    k: ArrayView4<T>,
    positions: &[f64],
    rope: &DualRope,
) -> Result<(Array4<T>, Array4<T>)> {
    let (q, k) = rope_host(b, q, Some(k), positions, rope)?;
    Ok((q, k.expect("k was given")))
}

#[cfg(test)]
mod tests {
    use half::bf16;
    use ndarray::Array4;

    use super::super::record::Recorder;
    use super::*;

    #[test]
    fn one_launch_for_q_and_k_with_their_strides() {
        let rec = Recorder::default();
        let rope = DualRope::default();
        let q = Array4::from_elem((2, 30, 4, 64), bf16::ONE);
        let k = Array4::from_elem((2, 30, 2, 64), bf16::ONE);
        let positions: Vec<f64> = (0..30).map(f64::from).collect();
        let (q2, k2) = dual_rope_qk(&rec, q.view(), k.view(), &positions, &rope).unwrap();
        assert_eq!((q2.shape(), k2.shape()), (q.shape(), k.shape()));
        let l = rec.launches();
        assert_eq!(l.len(), 1);
        assert_eq!((l[0].kernel.as_str(), l[0].block), ("maskattn_dual_rope_bf16", (128, 1, 1)));
        let p: ffi::MaskattnRopeParams = l[0].params();
        // 2 * 6 rows of D/16 chunks (the default pairing is rotate_half).
        let tokens = 512 / (2 * 6 * 4);
        assert_eq!((p.tokens_per_block as usize, l[0].grid), (tokens, (30usize.div_ceil(tokens) as u32, 1, 1)));
        assert_eq!(l[0].smem_bytes as usize, 32 * 8 * (1 + tokens));
        assert_eq!((p.heads, p.batch, p.len, p.head_dim), ([4, 2], 2, 30, 64));
        assert_eq!((p.batch_stride, p.row_stride, p.head_stride), ([30 * 256, 30 * 128], [256, 128], [64, 64]));
        assert_eq!(rec.uploaded::<f64>(p.positions as u64), Some(positions.clone()));
        drop(l);

        dual_rope(&rec, q.view(), &positions, &rope).unwrap();
        let p: ffi::MaskattnRopeParams = rec.launches()[1].params();
        assert!(p.x[1].is_null());
        assert_eq!((p.heads, p.batch_stride[1]), ([4, 0], 0));
    }

    #[test]
    fn bad_inputs_are_errors_before_any_launch() {
        let rec = Recorder::default();
        let rope = DualRope::default();
        let q = Array4::from_elem((1, 4, 2, 64), bf16::ONE);
        assert!(dual_rope(&rec, q.view(), &[0.0, 1.0, f64::NAN, 3.0], &rope).is_err());
        assert!(dual_rope(&rec, q.view(), &[0.0, 1.0, 2.0], &rope).is_err());
        let d40 = Array4::from_elem((1, 4, 2, 40), bf16::ONE);
        assert!(matches!(dual_rope(&rec, d40.view(), &[0.0; 4], &rope), Err(Error::Unsupported(_))));
        let k = Array4::from_elem((1, 5, 2, 64), bf16::ONE);
        assert!(dual_rope_qk(&rec, q.view(), k.view(), &[0.0; 4], &rope).is_err());
        assert!(rec.launches().is_empty());
    }
}
