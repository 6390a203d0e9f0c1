//! The forward attention kernel (csrc/flash_fwd.cu), with or without an XAttention
//! block selection: every input is checked before the launch (shapes against each
//! other and the mask, head dim, strides, alignment, buffer bounds), so a bad call is
//! an error value, never an out-of-bounds kernel.

use ndarray::{Array3, Array4, ArrayView4};

use super::tensor_map::{OobFill, TensorMapBytes, TensorMapSpec, TmaElement, TmaSwizzle};
use super::{
    check_lse, check_mask_lens, download_array, kernel_scale, qkv_dims, upload_array, Backend, BufArg, ForwardPath,
    KernelArgs, KernelElement, KernelLaunch, Layout4, TensorArg,
};
use crate::error::{Error, Result};
use crate::ffi;
use crate::mask::Mask;
use crate::shape::AttnShape;
use crate::shape::DType;
use crate::tiles::{self, TileShape};
use crate::xattention::BlockSelection;

const SELECT_BLOCK: usize = ffi::MASKATTN_SELECT_BLOCK as usize;

/// A mask prepared on a backend for the forward kernel: its row intervals and the
/// launch order of its query tiles (heaviest first) for the kernel's tiles at one
/// head dim.
#[derive(Debug)]
pub(crate) struct ForwardMask<B: Backend> {
    intervals: B::Buf<i32>,
    tile_order: B::Buf<i32>,
    query_tiles: usize,
    len_q: usize,
    len_k: usize,
    tiles: TileShape,
}

/// A [`ForwardMask`] as the plan sees it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ForwardMaskArgs {
    intervals: u64,
    tile_order: u64,
    query_tiles: usize,
    len_q: usize,
    len_k: usize,
    tiles: TileShape,
}

impl<B: Backend> ForwardMask<B> {
    /// Uploads `mask`'s tables for the forward kernel at head dim `head_dim` (a few
    /// KB even at 128K tokens: 16 bytes per row plus 4 per query tile).
    pub(crate) fn new(b: &B, mask: &Mask, head_dim: usize) -> Result<Self> {
        let tiles = tiles::forward_tiles(head_dim)?;
        let order = tiles::query_tile_order(mask, tiles);
        if order.len() > 65535 {
            return Err(Error::Unsupported(format!("{} query tiles exceed the grid's 65535", order.len())));
        }
        Ok(Self {
            intervals: b.upload(mask.as_flat())?,
            tile_order: b.upload(&order)?,
            query_tiles: order.len(),
            len_q: mask.len_q(),
            len_k: mask.len_k(),
            tiles,
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
    pub(crate) fn args<'a>(&'a self, b: &'a B) -> (ForwardMaskArgs, [B::Access<'a>; 2]) {
        let (intervals, intervals_access) = b.addr(&self.intervals);
        let (tile_order, order_access) = b.addr(&self.tile_order);
        let args = ForwardMaskArgs {
            intervals,
            tile_order,
            query_tiles: self.query_tiles,
            len_q: self.len_q,
            len_k: self.len_k,
            tiles: self.tiles,
        };
        (args, [intervals_access, order_access])
    }
}

/// What the forward kernel reads and writes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ForwardArgs {
    pub q: TensorArg,
    pub k: TensorArg,
    pub v: TensorArg,
    pub mask: ForwardMaskArgs,
    /// `u8 [B][Hq][ceil(Lq/128)][ceil(Lk/128)]`, nonzero = the block is computed.
    pub selection: Option<BufArg>,
    pub scale: Option<f32>,
    pub out: TensorArg,
    /// `f32 [B, Hq, Lq]`.
    pub lse: BufArg,
}

/// The forward launch: one CTA per (batch * query head, query tile in the mask's
/// launch order). Its addresses cover every element the kernel addresses (dims,
/// strides, alignment, bounds, disjoint output rows, the selection's and the LSE's
/// lengths); its shared memory is what the kernel was compiled for.
pub(crate) fn plan<T: KernelElement>(a: &ForwardArgs) -> Result<KernelLaunch<ffi::MaskattnFwdParams>> {
    let sh = AttnShape::of_qkv(&a.q.layout.dims, &a.k.layout.dims, &a.v.layout.dims)?;
    check_mask_lens(&sh, a.mask.len_q, a.mask.len_k)?;
    if a.out.layout.dims != a.q.layout.dims {
        return Err(Error::Shape(format!("out dims {:?} differ from q's {:?}", a.out.layout.dims, a.q.layout.dims)));
    }
    let tiles = tiles::forward_tiles(sh.head_dim)?;
    if tiles != a.mask.tiles {
        return Err(Error::Shape(format!(
            "the mask was uploaded for {:?} tiles, head dim {} needs {tiles:?}",
            a.mask.tiles, sh.head_dim
        )));
    }
    if sh.batch * sh.heads_q > i32::MAX as usize {
        return Err(Error::Unsupported("batch * heads_q exceeds the grid".into()));
    }
    let select_k_blocks = sh.len_k.div_ceil(SELECT_BLOCK);
    let select_len = sh.batch * sh.heads_q * sh.len_q.div_ceil(SELECT_BLOCK) * select_k_blocks;
    if let Some(sel) = &a.selection {
        if sel.len != select_len {
            return Err(Error::Shape(format!(
                "the block selection holds {} bytes, B*Hq*ceil(Lq/128)*ceil(Lk/128) = {select_len}",
                sel.len
            )));
        }
    }
    check_lse(&a.lse, &sh)?;
    let scale = kernel_scale(a.scale, sh.head_dim)?;
    let class = tiles::head_dim_class(sh.head_dim)?;
    let (threads, smem) = match class {
        64 => (ffi::MASKATTN_FWD_THREADS, ffi::MASKATTN_FWD_SMEM_D64),
        96 => (ffi::MASKATTN_FWD_THREADS, ffi::MASKATTN_FWD_SMEM_D96),
        128 => (ffi::MASKATTN_FWD_THREADS, ffi::MASKATTN_FWD_SMEM_D128),
        _ => (ffi::MASKATTN_FWD_THREADS_D256, ffi::MASKATTN_FWD_SMEM_D256),
    };
    a.q.check::<T>("q")?;
    a.k.check::<T>("k")?;
    a.v.check::<T>("v")?;
    a.out.check_output::<T>("out")?;

    let st = |l: &Layout4| l.strides.map(|s| s as i64);
    let ([qb, qr, qh, _], [kb, kr, kh, _], [vb, vr, vh, _], [ob, or, oh, _]) =
        (st(&a.q.layout), st(&a.k.layout), st(&a.v.layout), st(&a.out.layout));
    let params = ffi::MaskattnFwdParams {
        q: a.q.addr as *const _,
        k: a.k.addr as *const _,
        v: a.v.addr as *const _,
        o: a.out.addr as *mut _,
        lse: a.lse.addr as *mut f32,
        intervals: a.mask.intervals as *const i32,
        tile_order: a.mask.tile_order as *const i32,
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
        batch: sh.batch as i32,
        heads_q: sh.heads_q as i32,
        heads_kv: sh.heads_kv as i32,
        len_q: sh.len_q as i32,
        len_k: sh.len_k as i32,
        head_dim: sh.head_dim as i32,
        scale,
        scale_log2: scale * std::f32::consts::LOG2_E,
        block_select: a.selection.map_or(0, |s| s.addr) as *const u8,
        select_k_blocks: select_k_blocks as i32,
    };
    Ok(KernelLaunch {
        kernel: format!("maskattn_fwd_{}_d{class}", T::KERNEL_NAME),
        grid: ((sh.batch * sh.heads_q) as u32, a.mask.query_tiles as u32, 1),
        block: (threads, 1, 1),
        smem_bytes: smem,
        params,
    })
}

/// The Hopper kernel's parameters: the tensor maps of Q, K and V (`[B, L, H, D]` as 4-D
/// maps, D innermost, boxes of 64 columns by 128 rows in the 128-byte swizzle), then the
/// mma.sync kernel's parameters, which it reads the same way.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub(crate) struct HopperForwardArgs {
    pub q: TensorMapBytes,
    pub k: TensorMapBytes,
    pub v: TensorMapBytes,
    pub params: ffi::MaskattnFwdParams,
}

// SAFETY: #[repr(C)], the fields in the order of the maskattn_hopper_fwd_* parameters.
unsafe impl KernelArgs for HopperForwardArgs {
    const OFFSETS: &'static [usize] = &[
        std::mem::offset_of!(HopperForwardArgs, q),
        std::mem::offset_of!(HopperForwardArgs, k),
        std::mem::offset_of!(HopperForwardArgs, v),
        std::mem::offset_of!(HopperForwardArgs, params),
    ];
}

const HOPPER_BLOCK_M: usize = ffi::MASKATTN_HOPPER_FWD_BLOCK_M as usize;
const HOPPER_BLOCK_N: usize = ffi::MASKATTN_HOPPER_FWD_BLOCK_N as usize;
/// Columns of one TMA box: a 128-byte swizzled row of 16-bit elements.
const HOPPER_CHUNK: usize = 64;

/// The tensor map of a `[B, L, H, D]` tensor for the Hopper kernel, or `None` where a
/// TMA cannot read it as the kernel needs (a zero stride: a broadcast dimension).
fn hopper_map<T: KernelElement>(name: &'static str, t: &TensorArg) -> Option<TensorMapSpec> {
    let [b, l, h, d] = t.layout.dims;
    let [sb, sl, sh, _] = t.layout.strides;
    let bytes = std::mem::size_of::<T>() as u64;
    // A dimension of one index may have a zero stride (it is never stepped); any valid
    // one serves there.
    let stride = |n: usize, s: usize| match (n, s) {
        (_, s) if s != 0 => Some(s as u64 * bytes),
        (1, _) => Some(16),
        _ => None,
    };
    let elem = match T::DTYPE {
        DType::BF16 => TmaElement::Bf16,
        DType::F16 => TmaElement::F16,
        _ => return None,
    };
    let spec = TensorMapSpec {
        name,
        base: t.addr,
        elem,
        dims: vec![d as u64, l as u64, h as u64, b as u64],
        strides: vec![stride(l, sl)?, stride(h, sh)?, stride(b, sb)?],
        box_dims: vec![HOPPER_CHUNK as u32, HOPPER_BLOCK_N as u32, 1, 1],
        swizzle: TmaSwizzle::B128,
        oob: OobFill::Zero,
    };
    spec.validate().is_ok().then_some(spec)
}

/// The Hopper launch for `a`, or `None` where the Hopper kernel does not cover it (the
/// mma.sync kernel then runs it: a tensor a TMA cannot read, a shared-memory budget
/// below the kernel's): `mma` is the mma.sync plan of the same call, whose
/// checks both kernels rely on. A persistent grid of at most `b`'s SM count.
pub(crate) fn plan_hopper<B: Backend, T: KernelElement>(
    b: &B,
    a: &ForwardArgs,
    mma: &KernelLaunch<ffi::MaskattnFwdParams>,
) -> Result<Option<KernelLaunch<HopperForwardArgs>>> {
    let p = &mma.params;
    // The mask's launch order numbers the mma.sync kernel's query tiles.
    if a.mask.tiles.block_m() != HOPPER_BLOCK_M {
        return Ok(None);
    }
    let items = a.mask.query_tiles * p.batch as usize * p.heads_q as usize;
    let (Some(q), Some(k), Some(v)) =
        (hopper_map::<T>("q", &a.q), hopper_map::<T>("k", &a.k), hopper_map::<T>("v", &a.v))
    else {
        return Ok(None);
    };
    if items > i32::MAX as usize {
        return Ok(None);
    }
    let smem = match p.head_dim {
        64 => ffi::MASKATTN_HOPPER_FWD_SMEM_D64,
        96 => ffi::MASKATTN_HOPPER_FWD_SMEM_D96,
        128 => ffi::MASKATTN_HOPPER_FWD_SMEM_D128,
        _ => return Ok(None),
    };
    // Every sm_90 part has 227 KB; a smaller budget is the CPU backend playing another GPU.
    if smem > b.smem_budget() {
        return Ok(None);
    }
    Ok(Some(KernelLaunch {
        kernel: format!("maskattn_hopper_fwd_{}_d{}", T::KERNEL_NAME, p.head_dim),
        grid: (items.min(b.persistent_ctas() as usize) as u32, 1, 1),
        block: (ffi::MASKATTN_HOPPER_FWD_THREADS, 1, 1),
        smem_bytes: smem,
        params: HopperForwardArgs { q: b.tensor_map(&q)?, k: b.tensor_map(&k)?, v: b.tensor_map(&v)?, params: *p },
    }))
}

/// The forward of `a` on `b`, on the path `b` takes (the mma.sync kernel for a call
/// the Hopper kernel does not cover).
///
/// # Safety
///
/// As [`Backend::launch`]: every address in `a` is that of a live buffer of `b` with
/// the length given, accessed until the launch is done or queued.
pub(crate) unsafe fn launch<B: Backend, T: KernelElement>(b: &B, a: &ForwardArgs) -> Result<()> {
    let mma = plan::<T>(a)?;
    if b.forward_path()? == ForwardPath::Hopper {
        if let Some(hopper) = plan_hopper::<B, T>(b, a, &mma)? {
            // SAFETY: the caller's contract; the plans checked the addresses.
            return unsafe { b.launch(&hopper) };
        }
    }
    // SAFETY: as above.
    unsafe { b.launch(&mma) }
}

/// The forward kernel on packed buffers of `b` shaped as `sh` says (`q`
/// `[B, Lq, Hq, D]`, `k` and `v` `[B, Lk, Hkv, D]`), writing `out` and `lse`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn run_packed<B: Backend, T: KernelElement>(
    b: &B,
    sh: &AttnShape,
    q: &B::Buf<T>,
    k: &B::Buf<T>,
    v: &B::Buf<T>,
    mask: &ForwardMask<B>,
    selection: Option<&B::Buf<u8>>,
    scale: Option<f32>,
    out: &mut B::Buf<T>,
    lse: &mut B::Buf<f32>,
) -> Result<()> {
    let (q_dims, kv_dims) = qkv_dims(sh);
    let (q, _q) = TensorArg::of(b, q, q_dims);
    let (k, _k) = TensorArg::of(b, k, kv_dims);
    let (v, _v) = TensorArg::of(b, v, kv_dims);
    let (mask, _mask) = mask.args(b);
    let (selection, _selection) = selection.map(|s| BufArg::of(b, s)).unzip();
    let (out, _out) = TensorArg::of_mut(b, out, q_dims);
    let (lse, _lse) = BufArg::of_mut(b, lse);
    // SAFETY: every address is that of a live buffer of `b` with its own length,
    // accessed until after the launch.
    unsafe { launch::<B, T>(b, &ForwardArgs { q, k, v, mask, selection, scale, out, lse }) }
}

/// The forward kernel on host arrays `[B, L, H, D]`, optionally with a block
/// selection ANDed to the mask: uploads, launches and downloads `(out, lse)`.
pub(crate) fn attention<B: Backend, T: KernelElement>(
    b: &B,
    q: ArrayView4<T>,
    k: ArrayView4<T>,
    v: ArrayView4<T>,
    mask: &Mask,
    selection: Option<&BlockSelection>,
    scale: Option<f32>,
) -> Result<(Array4<T>, Array3<f32>)> {
    let sh = AttnShape::new(q.shape(), k.shape(), v.shape(), mask)?;
    if let Some(sel) = selection {
        sel.check_shape(&sh)?;
    }
    // The mask's checks (grid limits) before the inputs' uploads.
    let device_mask = ForwardMask::new(b, mask, sh.head_dim)?;
    let (dq, dk, dv) = (upload_array(b, &q)?, upload_array(b, &k)?, upload_array(b, &v)?);
    let device_selection = selection.map(|s| b.upload(s.as_bytes())).transpose()?;
    attention_on(b, &sh, [&dq, &dk, &dv], &device_mask, device_selection.as_ref(), scale)
}

/// [`run_packed`] into new buffers, downloaded as `(out, lse)`.
pub(crate) fn attention_on<B: Backend, T: KernelElement>(
    b: &B,
    sh: &AttnShape,
    [q, k, v]: [&B::Buf<T>; 3],
    mask: &ForwardMask<B>,
    selection: Option<&B::Buf<u8>>,
    scale: Option<f32>,
) -> Result<(Array4<T>, Array3<f32>)> {
    let (q_dims, _) = qkv_dims(sh);
    let mut out = b.zeros::<T>(q_dims.iter().product())?;
    let mut lse = b.zeros::<f32>(sh.batch * sh.heads_q * sh.len_q)?;
    run_packed(b, sh, q, k, v, mask, selection, scale, &mut out, &mut lse)?;
    let out = download_array(b, &out, q_dims)?;
    let lse = Array3::from_shape_vec((sh.batch, sh.heads_q, sh.len_q), b.download(&lse)?).expect("sizes match");
    Ok((out, lse))
}

#[cfg(test)]
mod tests {
    use half::f16;
    use ndarray::Array4;

    use super::super::record::Recorder;
    use super::*;
    use crate::Error;

    fn inputs(b: usize, l: usize, hq: usize, hkv: usize, d: usize) -> (Array4<f16>, Array4<f16>) {
        (Array4::from_elem((b, l, hq, d), f16::ONE), Array4::from_elem((b, l, hkv, d), f16::ONE))
    }

    #[test]
    fn one_launch_per_head_and_query_tile_with_the_uploaded_tables() {
        let rec = Recorder::default();
        let mask = Mask::causal(300, 300).unwrap();
        let (q, kv) = inputs(2, 300, 4, 2, 64);
        let (out, lse) = attention(&rec, q.view(), kv.view(), kv.view(), &mask, None, None).unwrap();
        assert_eq!((out.shape(), lse.shape()), (&[2, 300, 4, 64][..], &[2, 4, 300][..]));
        let launches = rec.launches();
        assert_eq!(launches.len(), 1);
        let l = &launches[0];
        assert_eq!(l.kernel, "maskattn_fwd_f16_d64");
        assert_eq!((l.grid, l.block, l.smem_bytes), ((8, 3, 1), (128, 1, 1), ffi::MASKATTN_FWD_SMEM_D64));
        let p: ffi::MaskattnFwdParams = l.params();
        let tiles = tiles::forward_tiles(64).unwrap();
        assert_eq!(rec.uploaded::<i32>(p.tile_order as u64), Some(tiles::query_tile_order(&mask, tiles)));
        assert_eq!(rec.uploaded::<i32>(p.intervals as u64).as_deref(), Some(mask.as_flat()));
        assert_eq!(rec.uploaded::<f16>(p.q as u64).map(|x| x.len()), Some(q.len()));
        assert_eq!((p.q_batch_stride, p.q_row_stride, p.q_head_stride), (300 * 4 * 64, 4 * 64, 64));
        assert_eq!((p.k_batch_stride, p.k_row_stride, p.k_head_stride), (300 * 2 * 64, 2 * 64, 64));
        assert_eq!((p.batch, p.heads_q, p.heads_kv, p.len_q, p.len_k, p.head_dim), (2, 4, 2, 300, 300, 64));
        assert_eq!((p.scale, p.scale_log2), (0.125, 0.125 * std::f32::consts::LOG2_E));
        assert!(p.block_select.is_null());
        assert_eq!(p.select_k_blocks, 3);
    }

    #[test]
    fn the_selection_is_uploaded_and_checked() {
        let rec = Recorder::default();
        let mask = Mask::causal(300, 300).unwrap();
        let (q, kv) = inputs(1, 300, 2, 2, 128);
        let sel = BlockSelection::full(1, 2, 300, 300, true).unwrap();
        let bytes = sel.as_bytes().to_vec();
        attention(&rec, q.view(), kv.view(), kv.view(), &mask, Some(&sel), Some(0.5)).unwrap();
        let p: ffi::MaskattnFwdParams = rec.launches()[0].params();
        assert_eq!(rec.uploaded::<u8>(p.block_select as u64), Some(bytes));
        assert_eq!((rec.launches()[0].kernel.as_str(), p.scale), ("maskattn_fwd_f16_d128", 0.5));
        let wrong = BlockSelection::full(1, 1, 300, 300, true).unwrap();
        assert!(attention(&rec, q.view(), kv.view(), kv.view(), &mask, Some(&wrong), None).is_err());
        assert_eq!(rec.launches().len(), 1);
    }

    #[test]
    fn bad_inputs_are_errors_before_any_launch() {
        let rec = Recorder::default();
        let mask = Mask::causal(100, 100).unwrap();
        let (q, kv) = inputs(1, 100, 2, 1, 64);
        for scale in [0.0, -1.0, f32::NAN, f32::INFINITY] {
            let e = attention(&rec, q.view(), kv.view(), kv.view(), &mask, None, Some(scale)).unwrap_err();
            assert!(matches!(e, Error::InvalidParameter { what: "scale", .. }), "{e}");
        }
        // Head dims the kernels do not take, before anything is uploaded.
        for d in [4, 12, 250, 264, 512] {
            let rec = Recorder::default();
            let (q, kv) = inputs(1, 100, 2, 1, d);
            let e = attention(&rec, q.view(), kv.view(), kv.view(), &mask, None, None).unwrap_err();
            assert!(matches!(e, Error::Unsupported(_)), "{d}: {e}");
            assert_eq!(rec.allocations(), 0, "{d}");
        }
        let other = Mask::causal(100, 101).unwrap();
        assert!(matches!(attention(&rec, q.view(), kv.view(), kv.view(), &other, None, None), Err(Error::Shape(_))));
        assert!(rec.launches().is_empty());

        // The device-pointer path: misaligned, short and overlapping buffers.
        let fwd_mask = ForwardMask::new(&rec, &mask, 64).unwrap();
        let (mask_args, _) = fwd_mask.args(&rec);
        let t = |addr, len, dims| TensorArg { addr, len, layout: Layout4::contiguous(dims) };
        let good = ForwardArgs {
            q: t(0x1000, 100 * 2 * 64, [1, 100, 2, 64]),
            k: t(0x10000, 100 * 64, [1, 100, 1, 64]),
            v: t(0x20000, 100 * 64, [1, 100, 1, 64]),
            mask: mask_args,
            selection: None,
            scale: None,
            out: t(0x30000, 100 * 2 * 64, [1, 100, 2, 64]),
            lse: BufArg { addr: 0x40000, len: 200 },
        };
        assert!(plan::<f16>(&good).is_ok());
        let misaligned = ForwardArgs { q: t(0x1008, 100 * 2 * 64, [1, 100, 2, 64]), ..good };
        assert!(matches!(plan::<f16>(&misaligned), Err(Error::Shape(m)) if m.contains("aligned")));
        let short = ForwardArgs { v: t(0x20000, 100 * 64 - 1, [1, 100, 1, 64]), ..good };
        assert!(matches!(plan::<f16>(&short), Err(Error::Shape(m)) if m.contains("past the end")));
        let overlapping = ForwardArgs {
            out: TensorArg { layout: Layout4 { strides: [0, 128, 0, 1], ..good.out.layout }, ..good.out },
            ..good
        };
        assert!(matches!(plan::<f16>(&overlapping), Err(Error::Shape(m)) if m.contains("overlap")));
        let short_lse = ForwardArgs { lse: BufArg { addr: 0x40000, len: 199 }, ..good };
        assert!(matches!(plan::<f16>(&short_lse), Err(Error::Shape(m)) if m.contains("lse")));
        let mask96 = ForwardMask::new(&rec, &mask, 96).unwrap();
        let wrong_tiles = ForwardArgs { mask: mask96.args(&rec).0, ..good };
        assert!(plan::<f16>(&wrong_tiles).is_ok(), "d96 and d64 share their tiles");
        let mask128 = ForwardMask::new(&rec, &mask, 128).unwrap();
        let wrong_tiles = ForwardArgs { mask: mask128.args(&rec).0, ..good };
        assert!(matches!(plan::<f16>(&wrong_tiles), Err(Error::Shape(m)) if m.contains("tiles")));
    }

    /// The Hopper plan: a persistent grid of at most the SM count, the kernel per dtype
    /// and head dim, the mma.sync plan's parameters after the three tensor maps, and
    /// the mma.sync kernel for what a TMA cannot read (a broadcast K) or where the
    /// backend takes the mma.sync path.
    #[test]
    fn the_hopper_plan_is_persistent_and_falls_back_where_tma_cannot_read() {
        let mut rec = Recorder::default();
        rec.forward_path = ForwardPath::Hopper;
        let mask = Mask::causal(300, 300).unwrap();
        let (q, kv) = inputs(2, 300, 4, 2, 96);
        attention(&rec, q.view(), kv.view(), kv.view(), &mask, None, None).unwrap();
        let hp: HopperForwardArgs = {
            let l = &rec.launches()[0];
            assert_eq!(l.kernel, "maskattn_hopper_fwd_f16_d96");
            // 3 query tiles x 2 x 4 heads = 24 work items, fewer than the 132 SMs.
            assert_eq!((l.grid, l.block, l.smem_bytes), ((24, 1, 1), (384, 1, 1), ffi::MASKATTN_HOPPER_FWD_SMEM_D96));
            l.params()
        };
        // After the maps, the mma.sync kernel's parameters of the same call.
        let p = hp.params;
        assert_eq!((p.batch, p.heads_q, p.heads_kv, p.len_q, p.len_k, p.head_dim), (2, 4, 2, 300, 300, 96));
        assert_eq!((p.q_batch_stride, p.q_row_stride, p.q_head_stride), (300 * 4 * 96, 4 * 96, 96));
        assert_eq!((p.k_batch_stride, p.k_row_stride, p.k_head_stride), (300 * 2 * 96, 2 * 96, 96));
        assert_eq!((p.o_batch_stride, p.o_row_stride, p.o_head_stride), (300 * 4 * 96, 4 * 96, 96));
        assert_eq!(p.scale_log2, p.scale * std::f32::consts::LOG2_E);
        let order = tiles::query_tile_order(&mask, tiles::forward_tiles(96).unwrap());
        assert_eq!(rec.uploaded::<i32>(p.tile_order as u64), Some(order));
        assert_eq!(rec.uploaded::<i32>(p.intervals as u64).as_deref(), Some(mask.as_flat()));
        assert!(p.block_select.is_null());

        let long = Mask::causal(128 * 20, 128 * 20).unwrap();
        let (q, kv) = inputs(1, 128 * 20, 8, 8, 128);
        attention(&rec, q.view(), kv.view(), kv.view(), &long, None, None).unwrap();
        let long_launch = (rec.launches()[1].kernel.clone(), rec.launches()[1].grid);
        assert_eq!(long_launch, ("maskattn_hopper_fwd_f16_d128".to_string(), (132, 1, 1)));

        // K and V broadcast along L (zero row stride): no tensor map, the mma.sync kernel.
        let k_row = Array4::from_elem((1, 1, 2, 96), f16::ONE);
        let k_all = k_row.broadcast((2, 300, 2, 96)).unwrap();
        let (q, _) = inputs(2, 300, 4, 2, 96);
        let sh = AttnShape::new(q.shape(), k_all.shape(), k_all.shape(), &mask).unwrap();
        let fwd_mask = ForwardMask::new(&rec, &mask, 96).unwrap();
        let (qb, kb) = (upload_array(&rec, &q.view()).unwrap(), rec.upload(k_row.as_slice().unwrap()).unwrap());
        let (q_dims, kv_dims) = qkv_dims(&sh);
        let (q_arg, _) = TensorArg::of(&rec, &qb, q_dims);
        let (BufArg { addr, len }, _) = BufArg::of(&rec, &kb);
        let k_arg = TensorArg { addr, len, layout: Layout4 { dims: kv_dims, strides: [0, 0, 96, 1] } };
        let mut out = rec.zeros::<f16>(q.len()).unwrap();
        let mut lse = rec.zeros::<f32>(2 * 4 * 300).unwrap();
        let (out, _) = TensorArg::of_mut(&rec, &mut out, q_dims);
        let (lse, _) = BufArg::of_mut(&rec, &mut lse);
        let args = ForwardArgs {
            q: q_arg,
            k: k_arg,
            v: k_arg,
            mask: fwd_mask.args(&rec).0,
            selection: None,
            scale: None,
            out,
            lse,
        };
        // SAFETY: the recorder runs nothing.
        unsafe { launch::<_, f16>(&rec, &args) }.unwrap();
        assert_eq!(rec.launches()[2].kernel, "maskattn_fwd_f16_d96");

        let mut mma_rec = Recorder::default();
        mma_rec.forward_path = ForwardPath::Mma;
        let (q, kv) = inputs(1, 300, 2, 2, 64);
        attention(&mma_rec, q.view(), kv.view(), kv.view(), &mask, None, None).unwrap();
        assert_eq!(mma_rec.launches()[0].kernel, "maskattn_fwd_f16_d64");
    }

    /// The Hopper kernel's work, counted by the CPU backend, is the walk the host
    /// computes with 128 x 128 tiles: per (batch, head) and query tile, Q loaded once
    /// and K and V of every non-EMPTY key tile the selection keeps (no EMPTY tile is
    /// loaded), and per walked tile the GEMMs of both consumer warpgroups (D / 16
    /// wgmmas for S, 8 for P V).
    #[cfg(feature = "cpu")]
    #[test]
    fn hopper_work_model_is_the_walk() {
        use crate::cpu::{CpuBackend, CpuOptions};
        use crate::tiles::TileClass;
        let layout = "text:20,frames:3x150,text:10".parse().unwrap();
        let masks = [
            Mask::causal(300, 300).unwrap(),
            Mask::frame_block_causal(&layout).unwrap(),
            Mask::causal_cross(70, 3, 100).unwrap(),
            Mask::sliding_window(400, 400, 130, 4).unwrap(),
        ];
        for (i, mask) in masks.iter().enumerate() {
            let d = [64, 96, 128][i % 3];
            let (b, h) = (2, 2);
            let cpu = CpuBackend::with_options(CpuOptions {
                forward_path: ForwardPath::Hopper,
                sms: 3,
                ..CpuOptions::default()
            });
            let q = Array4::from_elem((b, mask.len_q(), h, d), f16::ONE);
            let kv = Array4::from_elem((b, mask.len_k(), 1, d), f16::ONE);
            // Every other visible block selected (odd masks), else no selection.
            let causal = false;
            let selection = (i % 2 == 1).then(|| {
                let full = BlockSelection::full(b, h, mask.len_q(), mask.len_k(), causal).unwrap();
                let bytes = full.as_bytes().iter().enumerate().map(|(n, &x)| x * (n % 2 == 0) as u8).collect();
                BlockSelection::from_bytes(b, h, mask.len_q(), mask.len_k(), causal, bytes).unwrap()
            });
            let (out, _) = attention(&cpu, q.view(), kv.view(), kv.view(), mask, selection.as_ref(), None).unwrap();
            assert!(out.iter().all(|x| x.to_f32().is_finite()));

            let shape = TileShape::new(128, 128).unwrap();
            let (qt_count, kt_count) = (mask.len_q().div_ceil(128), mask.len_k().div_ceil(128));
            let classes = tiles::tile_classes(mask, shape);
            let (mut full, mut partial) = (0u64, 0u64);
            for bh in 0..b * h {
                for qt in 0..qt_count {
                    for kt in 0..kt_count {
                        let kept =
                            selection.as_ref().is_none_or(|s| s.as_bytes()[(bh * qt_count + qt) * kt_count + kt] != 0);
                        match classes[qt * kt_count + kt] {
                            TileClass::Full if kept => full += 1,
                            TileClass::Partial if kept => partial += 1,
                            _ => {}
                        }
                    }
                }
            }
            let (walked, items, chunks) = (full + partial, (b * h * qt_count) as u64, d.div_ceil(64) as u64);
            let c = cpu.counters();
            assert_eq!(c.key_tiles, [0, full, partial], "{mask:?}");
            assert_eq!(c.wgmma, walked * 2 * (d as u64 / 16 + 8), "{mask:?}");
            assert_eq!(c.tma_loads, (items + 2 * walked) * chunks, "{mask:?}");
            assert_eq!(c.bytes_tma, (items + 2 * walked) * chunks * 128 * 128, "{mask:?}");
            assert_eq!((c.ctas, c.mma), (3, 0), "{mask:?}");
        }
    }

    /// One persistent CTA through many work items whose walks are empty or one tile
    /// long: the walk-end entries and the ring's wrap come at nearly every step, where a
    /// lane that reads an entry and a producer that rewrites it are least separated by
    /// other synchronisation (racecheck found a consumer's release racing there:
    /// mutant hfwd-release-without-syncwarp). Every schedule; the mma.sync kernel's
    /// output as the yardstick.
    #[cfg(feature = "cpu")]
    #[test]
    fn hopper_short_walks_through_one_persistent_cta() {
        use crate::cpu::{CpuBackend, CpuOptions};
        let rows: Vec<[i32; 4]> = (0..600)
            .map(|r| match r / 128 {
                0 | 3 => [0, 0, 0, 0],
                1 => [0, 10, 0, 0],
                2 => [200, 300, 0, 0],
                _ => [0, r % 7, 590, 600],
            })
            .collect();
        let mask = Mask::from_intervals(600, rows).unwrap();
        let val = |i: usize| f16::from_f32(((i * 37 % 101) as f32 / 50.0 - 1.0) * 0.7);
        let q = Array4::from_shape_fn((2, 600, 2, 64), |(b, i, h, c)| val(b * 7 + i * 131 + h * 17 + c));
        let kv = Array4::from_shape_fn((2, 600, 1, 64), |(b, i, _, c)| val(b * 5 + i * 29 + 3 * c));
        let mma = CpuBackend::with_options(CpuOptions { forward_path: ForwardPath::Mma, ..CpuOptions::default() });
        let (want, want_lse) = attention(&mma, q.view(), kv.view(), kv.view(), &mask, None, None).unwrap();
        for (schedule, cpu) in super::super::cpu_backends_per_schedule() {
            let cpu =
                CpuBackend::with_options(CpuOptions { forward_path: ForwardPath::Hopper, sms: 1, ..cpu.options() });
            let (out, lse) = attention(&cpu, q.view(), kv.view(), kv.view(), &mask, None, None)
                .unwrap_or_else(|e| panic!("{schedule:?}: {e}"));
            assert_eq!(cpu.counters().ctas, 1);
            let diff = out.iter().zip(&want).map(|(a, b)| (a.to_f32() - b.to_f32()).abs()).fold(0f32, f32::max);
            assert!(diff <= 1e-2, "{schedule:?}: max |hopper - mma| = {diff}");
            for (a, b) in lse.iter().zip(&want_lse) {
                assert!(a == b || (a - b).abs() <= 1e-3, "{schedule:?}: lse {a} vs {b}");
            }
        }
    }

    /// Below the Hopper kernel's shared memory (230,528 bytes at D = 128: the CPU backend
    /// playing a 99 or 163 KB GPU), the Hopper path runs the mma.sync kernel rather
    /// than fail.
    #[cfg(feature = "cpu")]
    #[test]
    fn the_hopper_path_under_a_smaller_budget_runs_the_mma_kernel() {
        use crate::cpu::{CpuBackend, CpuOptions};
        let mask = Mask::causal(130, 130).unwrap();
        let (q, kv) = inputs(1, 130, 2, 1, 128);
        for (budget, hopper) in [(99 * 1024, false), (163 * 1024, false), (225 * 1024, false), (227 * 1024, true)] {
            let options =
                CpuOptions { forward_path: ForwardPath::Hopper, max_dynamic_smem: budget, ..CpuOptions::default() };
            let cpu = CpuBackend::with_options(options);
            attention(&cpu, q.view(), kv.view(), kv.view(), &mask, None, None).unwrap();
            let c = cpu.counters();
            assert_eq!((c.wgmma > 0, c.mma > 0), (hopper, !hopper), "budget {budget}");
        }
    }

    /// A zero row stride is a broadcast (every key reads the same K and V row): the
    /// kernel, run on the CPU backend, gives bit for bit what it gives on the rows
    /// written out, at a length that is not a tile multiple.
    #[cfg(feature = "cpu")]
    #[test]
    fn a_zero_row_stride_broadcasts_one_row() {
        let cpu = crate::cpu::CpuBackend::new();
        let (lq, lk, h, d) = (70, 300, 2, 64);
        let mask = Mask::sliding_window(lq, lk, 100, 4).unwrap();
        let val = |i: usize| f16::from_f32(((i * 37 % 101) as f32 / 50.0 - 1.0) * 0.7);
        let q = Array4::from_shape_fn((1, lq, h, d), |(_, i, hh, c)| val(i * 131 + hh * 17 + c));
        let k_row = Array4::from_shape_fn((1, 1, 1, d), |(.., c)| val(3 * c + 1));
        let v_row = Array4::from_shape_fn((1, 1, 1, d), |(.., c)| val(5 * c + 2));
        let (k_all, v_all) = (k_row.broadcast((1, lk, 1, d)).unwrap(), v_row.broadcast((1, lk, 1, d)).unwrap());
        let want = attention(&cpu, q.view(), k_all, v_all, &mask, None, None).unwrap();

        let sh = AttnShape::new(q.shape(), k_all.shape(), v_all.shape(), &mask).unwrap();
        let fwd_mask = ForwardMask::new(&cpu, &mask, d).unwrap();
        let (qb, kb, vb) = (
            upload_array(&cpu, &q.view()).unwrap(),
            cpu.upload(k_row.as_slice().unwrap()).unwrap(),
            cpu.upload(v_row.as_slice().unwrap()).unwrap(),
        );
        let mut out = cpu.zeros::<f16>(lq * h * d).unwrap();
        let mut lse = cpu.zeros::<f32>(h * lq).unwrap();
        {
            let (q_dims, kv_dims) = qkv_dims(&sh);
            let broadcast = |buf| {
                let (BufArg { addr, len }, access) = BufArg::of(&cpu, buf);
                (TensorArg { addr, len, layout: Layout4 { dims: kv_dims, strides: [d, 0, d, 1] } }, access)
            };
            let ((q, _q), (k, _k), (v, _v)) = (TensorArg::of(&cpu, &qb, q_dims), broadcast(&kb), broadcast(&vb));
            let (mask, _mask) = fwd_mask.args(&cpu);
            let (out, _out) = TensorArg::of_mut(&cpu, &mut out, q_dims);
            let (lse, _lse) = BufArg::of_mut(&cpu, &mut lse);
            let launch = plan::<f16>(&ForwardArgs { q, k, v, mask, selection: None, scale: None, out, lse }).unwrap();
            // SAFETY: live buffers of `cpu`, checked by the plan, held until after the launch.
            unsafe { cpu.launch(&launch) }.unwrap();
        }
        assert_eq!(cpu.download(&out).unwrap(), want.0.as_slice().unwrap());
        assert_eq!(cpu.download(&lse).unwrap(), want.1.as_slice().unwrap());
    }
}
