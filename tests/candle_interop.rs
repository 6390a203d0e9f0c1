//! candle interop (`--features candle`): `maskattn::candle::masked_attention` on candle
//! tensors.
//!
//! - CPU (runs everywhere, CI included): the op's CPU path (the f64 reference) against
//!   maskattn's reference and against candle's own matmul-softmax attention with the
//!   dense mask; strided inputs; errors for bad inputs.
//! - GPU (skips without one; MASKATTN_REQUIRE_GPU=1 makes that a failure): the kernel
//!   on candle's CUDA buffers against the f64 reference on the same rounded inputs,
//!   within 2x the error of candle's own same-dtype attention with the dense mask;
//!   strided (zero-copy) inputs give bitwise the contiguous result; layouts the kernel
//!   cannot read are errors.
//!
//! Linking needs the CUDA libraries or the stubs of scripts/candle-stub.sh (see there).
#![cfg(feature = "candle")]

mod common;

use candle_core::{DType, Device, IndexOp, Tensor, D};
use common::{max_abs_diff, random_array};
use half::{bf16, f16};
use maskattn::candle::{masked_attention, masked_attention_with_lse};
use maskattn::{reference, Element, Mask, VideoLayout};
use ndarray::{Array3, Array4};

/// A candle CUDA device for a GPU test, gated like every GPU test of the crate.
fn cuda() -> Option<Device> {
    common::gpu()?;
    // maskattn found a GPU: candle must be able to open it too.
    Some(Device::new_cuda(0).unwrap_or_else(|e| panic!("maskattn sees a GPU but candle cannot open it: {e}")))
}

/// The masks of these tests: a TC-LLaVA video mask (lengths that are not tile
/// multiples), causal with Lq < Lk, a sliding window with sinks. Every row sees a key,
/// so candle's dense softmax has no all-masked row.
fn masks() -> Vec<Mask> {
    let layout: VideoLayout = "text:17,frames:3x40,text:9".parse().unwrap();
    vec![
        Mask::frame_block_causal(&layout).unwrap(),
        Mask::causal(100, 150).unwrap(),
        Mask::sliding_window(200, 200, 64, 4).unwrap(),
    ]
}

/// Values rounded to `T`, as f64 (for the reference) and as a candle tensor.
fn input<T: Element + candle_core::WithDType>(
    shape: (usize, usize, usize, usize),
    seed: u64,
    scale: f64,
    dev: &Device,
) -> (Array4<f64>, Tensor) {
    let rounded = (random_array(shape, seed) * scale).mapv(<T as Element>::from_f64);
    let t = Tensor::from_vec(rounded.iter().copied().collect::<Vec<T>>(), shape, dev).unwrap();
    (rounded.mapv(<T as Element>::to_f64), t)
}

fn to_array4(t: &Tensor) -> Array4<f64> {
    let dims = t.dims4().unwrap();
    let v = t.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
    Array4::from_shape_vec(dims, v).unwrap()
}

fn to_array3(t: &Tensor) -> Array3<f64> {
    let dims = t.dims3().unwrap();
    let v = t.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
    Array3::from_shape_vec(dims, v).unwrap()
}

/// The mask as a dense additive `[Lq, Lk]` f32 tensor: 0 where visible, -inf elsewhere.
fn dense_bias(mask: &Mask, dev: &Device) -> Tensor {
    let (lq, lk) = (mask.len_q(), mask.len_k());
    let bias: Vec<f32> =
        (0..lq * lk).map(|i| if mask.is_visible(i / lk, i % lk) { 0.0 } else { f32::NEG_INFINITY }).collect();
    Tensor::from_vec(bias, (lq, lk), dev).unwrap()
}

/// candle's own attention with the dense mask, in the inputs' dtype: Q K^T (candle's
/// matmul), scaled in the dtype, mask added and softmax in f32, rounded to the dtype,
/// P V (candle's matmul). K/V heads are repeated for GQA. `[B, Lq, Hq, D]` in, out.
fn candle_attention(q: &Tensor, k: &Tensor, v: &Tensor, mask: &Mask, scale: f64) -> Tensor {
    let (b, lk, hkv, d) = k.dims4().unwrap();
    let hq = q.dim(2).unwrap();
    let repeat = |x: &Tensor| {
        x.unsqueeze(3).unwrap().broadcast_as((b, lk, hkv, hq / hkv, d)).unwrap().reshape((b, lk, hq, d)).unwrap()
    };
    let heads_first = |x: &Tensor| x.transpose(1, 2).unwrap().contiguous().unwrap();
    let (q, k, v) = (heads_first(q), heads_first(&repeat(k)), heads_first(&repeat(v)));
    let scores = (q.matmul(&k.t().unwrap()).unwrap() * scale).unwrap();
    let scores = scores.to_dtype(DType::F32).unwrap().broadcast_add(&dense_bias(mask, q.device())).unwrap();
    let max = scores.max_keepdim(D::Minus1).unwrap();
    let e = scores.broadcast_sub(&max).unwrap().exp().unwrap();
    let p = e.broadcast_div(&e.sum_keepdim(D::Minus1).unwrap()).unwrap();
    let out = p.to_dtype(q.dtype()).unwrap().matmul(&v).unwrap();
    out.transpose(1, 2).unwrap().contiguous().unwrap()
}

// ---------------------------------------------------------------- CPU (runs in CI)

/// The CPU path is the f64 reference rounded to the dtype: equal to it exactly, and
/// close to candle's own f32 attention.
#[test]
fn cpu_path_is_the_reference() {
    let dev = Device::Cpu;
    for (i, mask) in masks().into_iter().enumerate() {
        let (b, hq, hkv, d) = (2, 4, 2, 16);
        let seed = 10 * i as u64;
        let (q64, q) = input::<f32>((b, mask.len_q(), hq, d), seed, 1.5, &dev);
        let (k64, k) = input::<f32>((b, mask.len_k(), hkv, d), seed + 1, 1.5, &dev);
        let (v64, v) = input::<f32>((b, mask.len_k(), hkv, d), seed + 2, 1.0, &dev);
        let scale = 0.3f32;
        let (out, lse) = masked_attention_with_lse(&q, &k, &v, &mask, Some(scale)).unwrap();
        assert_eq!(out.dims(), &[b, mask.len_q(), hq, d]);
        assert_eq!(lse.dims(), &[b, hq, mask.len_q()]);
        assert_eq!((out.dtype(), lse.dtype()), (DType::F32, DType::F32));
        let want = reference::attention(q64.view(), k64.view(), v64.view(), &mask, Some(scale as f64)).unwrap();
        assert_eq!(to_array4(&out), want.out.mapv(|x| x as f32 as f64), "mask {i}");
        assert_eq!(to_array3(&lse), want.lse.mapv(|x| x as f32 as f64), "mask {i}");
        let plain = to_array4(&candle_attention(&q, &k, &v, &mask, scale as f64));
        let err = max_abs_diff(&plain, &want.out);
        assert!(err < 1e-5, "mask {i}: candle's f32 attention is {err:e} off the reference");
    }
}

#[test]
fn cpu_path_half_dtypes() {
    let dev = Device::Cpu;
    let mask = &masks()[0];
    let shape = (1, mask.len_q(), 2, 32);
    fn check<T: Element + candle_core::WithDType>(mask: &Mask, shape: (usize, usize, usize, usize), dev: &Device) {
        let (q64, q) = input::<T>(shape, 1, 1.5, dev);
        let (k64, k) = input::<T>(shape, 2, 1.5, dev);
        let (v64, v) = input::<T>(shape, 3, 1.0, dev);
        let out = masked_attention(&q, &k, &v, mask, None).unwrap();
        assert_eq!(out.dtype(), q.dtype());
        let want = reference::attention(q64.view(), k64.view(), v64.view(), mask, None).unwrap();
        assert_eq!(to_array4(&out), want.out.mapv(|x| Element::to_f64(<T as Element>::from_f64(x))));
    }
    check::<bf16>(mask, shape, &dev);
    check::<f16>(mask, shape, &dev);
    check::<f64>(mask, shape, &dev);
}

/// Strided inputs (a fused QKV projection split by `narrow`, heads-first storage seen
/// through `transpose`, broadcast K/V) give exactly the contiguous result.
#[test]
fn cpu_strided_inputs() {
    let dev = Device::Cpu;
    let mask = Mask::causal(40, 40).unwrap();
    let (b, l, h, d) = (2, 40, 3, 8);
    let (_, qkv) = input::<f32>((b, l, 3 * h, d), 5, 1.0, &dev);
    let (q, k, v) = (qkv.narrow(2, 0, h).unwrap(), qkv.narrow(2, h, h).unwrap(), qkv.narrow(2, 2 * h, h).unwrap());
    assert!(!q.is_contiguous());
    let want =
        masked_attention(&q.contiguous().unwrap(), &k.contiguous().unwrap(), &v.contiguous().unwrap(), &mask, None)
            .unwrap();
    let got = masked_attention(&q, &k, &v, &mask, None).unwrap();
    assert_eq!(to_array4(&got), to_array4(&want));

    let heads_first = q.transpose(1, 2).unwrap().contiguous().unwrap(); // [B, H, L, D]
    let q_t = heads_first.transpose(1, 2).unwrap(); // [B, L, H, D], strided
    let got = masked_attention(&q_t, &k, &v, &mask, None).unwrap();
    assert_eq!(to_array4(&got), to_array4(&want));

    // One K/V head broadcast to all (MQA through strides) equals GQA with one head.
    let k1 = k.i((.., .., 0..1, ..)).unwrap();
    let v1 = v.i((.., .., 0..1, ..)).unwrap();
    let mqa = masked_attention(&q, &k1, &v1, &mask, None).unwrap();
    let bcast = masked_attention(
        &q,
        &k1.broadcast_as((b, l, h, d)).unwrap(),
        &v1.broadcast_as((b, l, h, d)).unwrap(),
        &mask,
        None,
    )
    .unwrap();
    assert_eq!(to_array4(&mqa), to_array4(&bcast));
}

/// A row that sees no key gets 0 and LSE -inf, as in the reference.
#[test]
fn cpu_empty_rows() {
    let dev = Device::Cpu;
    let mask = Mask::from_intervals(5, vec![[0, 0, 0, 0], [1, 3, 0, 0], [0, 5, 0, 0]]).unwrap();
    let (_, q) = input::<f32>((1, 3, 1, 4), 1, 1.0, &dev);
    let (_, kv) = input::<f32>((1, 5, 1, 4), 2, 1.0, &dev);
    let (out, lse) = masked_attention_with_lse(&q, &kv, &kv, &mask, None).unwrap();
    let (out, lse) = (to_array4(&out), to_array3(&lse));
    assert!(out.slice(ndarray::s![0, 0, 0, ..]).iter().all(|&x| x == 0.0));
    assert_eq!(lse[[0, 0, 0]], f64::NEG_INFINITY);
    assert!(lse[[0, 0, 1]].is_finite() && lse[[0, 0, 2]].is_finite());
}

/// Bad inputs are errors, not panics.
#[test]
fn cpu_bad_inputs_are_errors() {
    let dev = Device::Cpu;
    let mask = Mask::causal(10, 10).unwrap();
    let x = Tensor::zeros((1, 10, 2, 8), DType::F32, &dev).unwrap();
    let wrong_len = Tensor::zeros((1, 9, 2, 8), DType::F32, &dev).unwrap();
    let wrong_heads = Tensor::zeros((1, 10, 3, 8), DType::F32, &dev).unwrap();
    let three_d = Tensor::zeros((10, 2, 8), DType::F32, &dev).unwrap();
    let other_dtype = x.to_dtype(DType::F64).unwrap();
    let ints = Tensor::zeros((1, 10, 2, 8), DType::U32, &dev).unwrap();
    assert!(masked_attention(&x, &wrong_len, &wrong_len, &mask, None).is_err());
    assert!(masked_attention(&x, &wrong_heads, &wrong_heads, &mask, None).is_err());
    assert!(masked_attention(&three_d, &three_d, &three_d, &mask, None).is_err());
    assert!(masked_attention(&x, &other_dtype, &x, &mask, None).is_err());
    assert!(masked_attention(&ints, &ints, &ints, &mask, None).is_err());
    assert!(masked_attention(&x, &x, &x, &Mask::causal(10, 12).unwrap(), None).is_err());
    assert!(masked_attention(&x, &x, &x, &mask, Some(f32::NAN)).is_err());
}

// ------------------------------------------------------------------------ GPU

/// The kernel on candle's buffers vs the f64 reference, within 2x the error of
/// candle's own same-dtype attention; the LSE likewise against the reference, within
/// 2x the plain same-dtype LSE error of tests/common.
fn gpu_check<T: Element + candle_core::WithDType>(
    dev: &Device,
    mask: &Mask,
    heads: (usize, usize),
    d: usize,
    seed: u64,
) {
    let (b, (hq, hkv)) = (2, heads);
    let (q64, q) = input::<T>((b, mask.len_q(), hq, d), seed, 1.5, dev);
    let (k64, k) = input::<T>((b, mask.len_k(), hkv, d), seed + 1, 1.5, dev);
    let (v64, v) = input::<T>((b, mask.len_k(), hkv, d), seed + 2, 1.0, dev);
    let scale = 1.0 / (d as f64).sqrt();
    let want = reference::attention(q64.view(), k64.view(), v64.view(), mask, None).unwrap();
    let (out, lse) = masked_attention_with_lse(&q, &k, &v, mask, None).unwrap();
    assert_eq!(out.dtype(), q.dtype());
    assert!(out.device().same_device(dev) && lse.device().same_device(dev));
    let (out, lse) = (to_array4(&out), to_array3(&lse));
    let candle_out = to_array4(&candle_attention(&q, &k, &v, mask, scale));
    let (err, candle_err) = (max_abs_diff(&out, &want.out), max_abs_diff(&candle_out, &want.out));
    let what = format!(
        "{:?} mask {:?} {}x{}, heads {heads:?}, d {d}",
        <T as Element>::DTYPE,
        mask.kind(),
        mask.len_q(),
        mask.len_k()
    );
    eprintln!("{what}: maskattn error {err:.3e}, candle's own {candle_err:.3e}");
    assert!(out.iter().all(|x| x.is_finite()), "{what}: non-finite output");
    assert!(err <= 2.0 * candle_err, "{what}: error {err:e} > 2 x candle's {candle_err:e}");
    let (_, plain_lse) = common::plain_attention::<T>(&q64, &k64, &v64, mask, scale);
    let (lerr, plain_lerr) = (max_abs_diff(&lse, &want.lse), max_abs_diff(&plain_lse, &want.lse));
    assert!(lerr <= 2.0 * plain_lerr, "{what}: lse error {lerr:e} > 2 x plain {plain_lerr:e}");
}

#[test]
fn gpu_matches_candle_attention() {
    let Some(dev) = cuda() else { return };
    for (i, mask) in masks().iter().enumerate() {
        for (heads, d) in [((4, 2), 64), ((2, 2), 128), ((3, 1), 96)] {
            gpu_check::<bf16>(&dev, mask, heads, d, 100 * i as u64);
            gpu_check::<f16>(&dev, mask, heads, d, 100 * i as u64 + 50);
        }
    }
}

/// Zero-copy strided inputs: a fused QKV projection split by `narrow`, heads-first
/// storage seen through `transpose`: bitwise the contiguous result (same kernel, same
/// arithmetic, other addresses). Repeated calls (cached module and mask) agree.
#[test]
fn gpu_strided_inputs_are_read_in_place() {
    let Some(dev) = cuda() else { return };
    let mask = &masks()[0];
    let (b, l, h, d) = (2, mask.len_q(), 4, 64);
    let (_, qkv) = input::<bf16>((b, l, 3 * h, d), 7, 1.5, &dev);
    let (q, k, v) = (qkv.narrow(2, 0, h).unwrap(), qkv.narrow(2, h, h).unwrap(), qkv.narrow(2, 2 * h, h).unwrap());
    let contiguous = |x: &Tensor| x.contiguous().unwrap();
    let want = to_array4(&masked_attention(&contiguous(&q), &contiguous(&k), &contiguous(&v), mask, None).unwrap());
    assert_eq!(to_array4(&masked_attention(&q, &k, &v, mask, None).unwrap()), want);
    let q_t = q.transpose(1, 2).unwrap().contiguous().unwrap().transpose(1, 2).unwrap();
    assert!(!q_t.is_contiguous());
    assert_eq!(to_array4(&masked_attention(&q_t, &k, &v, mask, None).unwrap()), want);
    for _ in 0..3 {
        assert_eq!(to_array4(&masked_attention(&q, &k, &v, mask, None).unwrap()), want);
    }
    maskattn::candle::clear_mask_cache();
    assert_eq!(to_array4(&masked_attention(&q, &k, &v, mask, None).unwrap()), want);
}

/// Layouts the kernel cannot read, dtypes it has no kernel for, bad shapes: errors.
#[test]
fn gpu_bad_inputs_are_errors() {
    let Some(dev) = cuda() else { return };
    let mask = Mask::causal(16, 16).unwrap();
    let x = Tensor::zeros((1, 16, 2, 64), DType::BF16, &dev).unwrap();
    // Head dim not contiguous: [B, L, D, H] storage transposed to [B, L, H, D].
    let d_strided = Tensor::zeros((1, 16, 64, 2), DType::BF16, &dev).unwrap().transpose(2, 3).unwrap();
    assert!(masked_attention(&d_strided, &x, &x, &mask, None).is_err());
    // Start offset not 16-byte aligned.
    let wide = Tensor::zeros((1, 16, 2, 68), DType::BF16, &dev).unwrap();
    let misaligned = wide.narrow(3, 1, 64).unwrap();
    assert!(masked_attention(&misaligned, &x, &x, &mask, None).is_err());
    // Row stride not a multiple of 8 elements.
    let odd = Tensor::zeros((1, 16, 1, 68), DType::BF16, &dev).unwrap().narrow(3, 0, 64).unwrap();
    let odd = odd.broadcast_as((1, 16, 2, 64)).unwrap();
    assert!(masked_attention(&odd, &x, &x, &mask, None).is_err());
    // f32 has no kernel; mixed dtypes; a head dim that is not a multiple of 8; wrong mask.
    assert!(masked_attention(&x.to_dtype(DType::F32).unwrap(), &x, &x, &mask, None).is_err());
    assert!(masked_attention(&x, &x.to_dtype(DType::F16).unwrap(), &x, &mask, None).is_err());
    let d68 = Tensor::zeros((1, 16, 2, 68), DType::BF16, &dev).unwrap();
    assert!(masked_attention(&d68, &d68, &d68, &mask, None).is_err());
    assert!(masked_attention(&x, &x, &x, &Mask::causal(16, 20).unwrap(), None).is_err());
    // The device is still usable afterwards.
    let ok = masked_attention(&x, &x, &x, &mask, None).unwrap();
    assert_eq!(ok.dims(), x.dims());
}
