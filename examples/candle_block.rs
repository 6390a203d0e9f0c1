//! A small candle attention block with maskattn's masked attention:
//!
//! ```text
//! x [1, L, 512] -> fused QKV projection -> q, k, v [1, L, 8, 64] (strided views, no copies)
//!   -> masked_attention (TC-LLaVA frame-wise block causal mask of a video prompt)
//!   -> output projection -> + x
//! ```
//!
//! Plain matmuls on random weights (no candle-nn). On a CUDA device the block runs in
//! bf16 through maskattn's kernel on candle's buffers and stream; without one it says
//! so and runs the CPU path (maskattn's f64 reference, f32 tensors). Either way the
//! result is compared with candle's own dense matmul-softmax attention.
//!
//! `cargo run --release --features candle --example candle_block` (on a machine without
//! the CUDA libraries: `scripts/candle-stub.sh cargo run ...`).

use std::time::Instant;

use candle_core::{DType, Device, Tensor, D};
use maskattn::{Mask, Segment, VideoLayout};

const HIDDEN: usize = 512;
const HEADS: usize = 8;
const HEAD_DIM: usize = HIDDEN / HEADS;

struct Block {
    w_qkv: Tensor,
    w_out: Tensor,
}

impl Block {
    fn new(dev: &Device, dtype: DType) -> candle_core::Result<Self> {
        let init = |rows: usize, cols: usize| -> candle_core::Result<Tensor> {
            (Tensor::randn(0f32, 1.0, (rows, cols), dev)? / (rows as f64).sqrt())?.to_dtype(dtype)
        };
        Ok(Self { w_qkv: init(HIDDEN, 3 * HIDDEN)?, w_out: init(HIDDEN, HIDDEN)? })
    }

    /// q, k, v `[B, L, H, D]` as views into one projection (row stride 3 * HIDDEN).
    fn qkv(&self, x: &Tensor) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
        let (b, l, _) = x.dims3()?;
        let qkv = x.broadcast_matmul(&self.w_qkv)?.reshape((b, l, 3 * HEADS, HEAD_DIM))?;
        Ok((qkv.narrow(2, 0, HEADS)?, qkv.narrow(2, HEADS, HEADS)?, qkv.narrow(2, 2 * HEADS, HEADS)?))
    }

    fn forward(&self, x: &Tensor, mask: &Mask) -> candle_core::Result<Tensor> {
        let (b, l, _) = x.dims3()?;
        let (q, k, v) = self.qkv(x)?;
        let attn = maskattn::candle::masked_attention(&q, &k, &v, mask, None)?;
        x + attn.reshape((b, l, HIDDEN))?.broadcast_matmul(&self.w_out)?
    }

    /// The same block with candle's own attention on the dense mask, for comparison.
    fn forward_dense(&self, x: &Tensor, mask: &Mask) -> candle_core::Result<Tensor> {
        let (b, l, _) = x.dims3()?;
        let (q, k, v) = self.qkv(x)?;
        let heads_first = |t: &Tensor| t.transpose(1, 2)?.contiguous();
        let (q, k, v) = (heads_first(&q)?, heads_first(&k)?, heads_first(&v)?);
        let bias: Vec<f32> =
            (0..l * l).map(|i| if mask.is_visible(i / l, i % l) { 0.0 } else { f32::NEG_INFINITY }).collect();
        let bias = Tensor::from_vec(bias, (l, l), x.device())?;
        let scores = (q.matmul(&k.t()?)? / (HEAD_DIM as f64).sqrt())?.to_dtype(DType::F32)?.broadcast_add(&bias)?;
        let e = scores.broadcast_sub(&scores.max_keepdim(D::Minus1)?)?.exp()?;
        let p = e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?.to_dtype(x.dtype())?;
        let attn = p.matmul(&v)?.transpose(1, 2)?.contiguous()?;
        x + attn.reshape((b, l, HIDDEN))?.broadcast_matmul(&self.w_out)?
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A video prompt: system text, 8 frames of 64 visual tokens, the question.
    let layout =
        VideoLayout::new(vec![Segment::Text(32), Segment::Frames { frames: 8, tokens: 64 }, Segment::Text(24)])?;
    let mask = Mask::frame_block_causal(&layout)?;
    println!(
        "TC-LLaVA frame-wise block causal mask: {} tokens ({layout}), density {:.3}",
        layout.len(),
        mask.density()
    );

    let (dev, dtype) = match Device::new_cuda(0) {
        Ok(dev) => (dev, DType::BF16),
        Err(e) => {
            // The first line: candle appends a backtrace when RUST_BACKTRACE is set.
            let why = e.to_string();
            let why = why.lines().next().unwrap_or_default();
            println!("no usable CUDA device ({why}); running the CPU path (maskattn's f64 reference, f32)");
            (Device::Cpu, DType::F32)
        }
    };
    let block = Block::new(&dev, dtype)?;
    let x = Tensor::randn(0f32, 1.0, (1, layout.len(), HIDDEN), &dev)?.to_dtype(dtype)?;

    let _warmup = block.forward(&x, &mask)?; // loads the kernels, uploads the mask
    dev.synchronize()?;
    let t = Instant::now();
    let y = block.forward(&x, &mask)?;
    dev.synchronize()?;
    let elapsed = t.elapsed();
    let dense = block.forward_dense(&x, &mask)?;
    let diff = (y.to_dtype(DType::F32)? - dense.to_dtype(DType::F32)?)?.abs()?.max_all()?.to_scalar::<f32>()?;
    println!("block output {:?} {dtype:?} on {dev:?} in {elapsed:.2?}", y.dims());
    println!("max |maskattn block - dense candle block| = {diff:.3e}");
    Ok(())
}
