//! XAttention (csrc/xattn.cu): antidiagonal block scoring and block selection, the
//! two kernels whose `f64` CPU reference is [`crate::xattention`], and XAttention end
//! to end on host arrays (scores, selection, block-sparse forward).

use ndarray::{Array3, Array4, ArrayView4};

use super::forward::{attention_on, ForwardMask};
use super::{upload_array, Backend, BufArg, KernelElement, KernelLaunch, Layout4, TensorArg};
use crate::error::{invalid, Error, Result};
use crate::ffi;
use crate::mask::Mask;
use crate::shape::AttnShape;
use crate::xattention::{BlockSelection, XAttnConfig, BLOCK};

/// Head dims the scoring kernels are compiled for. At D = 256 the scoring kernel
/// needs 135,680 bytes of shared memory per block: more than the 99 KB of sm_86/89/120
/// parts, where its launch is an [`Error::Unsupported`] naming it.
pub const XATTN_HEAD_DIMS: [usize; 4] = [64, 96, 128, 256];

/// Largest `nKb = ceil(Lk / 128)` the selection kernel sorts (1M keys).
pub const XATTN_MAX_KEY_BLOCKS: usize = ffi::MASKATTN_XATTN_SELECT_MAX_KEY_BLOCKS as usize;

/// Bytes of scoring scratch one launch may use (several launches cover the
/// (batch, head) pairs when they need more; a single pair may exceed it).
pub const XATTN_SCRATCH_BUDGET: usize = 512 << 20;

fn to_i32(what: &str, n: usize) -> Result<i32> {
    i32::try_from(n).map_err(|_| Error::Unsupported(format!("{what} = {n} exceeds the kernels' 32-bit indices")))
}

/// Sizes of the scoring problem, checked against the kernels' limits.
#[derive(Debug, Clone, Copy)]
struct ScoreGeometry {
    n_q_rows: usize,
    n_k_cols: usize,
    n_q_blocks: usize,
    n_k_blocks: usize,
    row_blocks: usize,
}

impl ScoreGeometry {
    fn new(sh: &AttnShape, stride: usize) -> Result<Self> {
        to_i32("len_q", sh.len_q)?;
        to_i32("len_k", sh.len_k)?;
        to_i32("batch * heads_q", sh.batch.saturating_mul(sh.heads_q))?;
        let n_q_rows = sh.len_q.div_ceil(stride);
        let row_blocks = n_q_rows.div_ceil(ffi::MASKATTN_XATTN_SCORE_ROWS as usize);
        if row_blocks > 65535 {
            return Err(Error::Unsupported(format!("len_q = {} needs {row_blocks} > 65535 row blocks", sh.len_q)));
        }
        Ok(Self {
            n_q_rows,
            n_k_cols: sh.len_k.div_ceil(stride),
            n_q_blocks: sh.len_q.div_ceil(BLOCK),
            n_k_blocks: sh.len_k.div_ceil(BLOCK),
            row_blocks,
        })
    }
}

/// The scoring launches, checked, before their output and scratch exist.
#[derive(Debug, Clone)]
pub(crate) struct ScoresPlan {
    params: ffi::MaskattnXattnScoreParams,
    kernel: String,
    smem_bytes: u32,
    row_blocks: u32,
    pairs: usize,
    per_launch: usize,
    /// Floats of the scores `[B, Hq, nQb, nKb]`, which must start zeroed (invisible
    /// blocks score exactly 0).
    pub(crate) scores_len: usize,
    /// Floats of the scratch: `ceil(Lq/S) * nKb` for each (batch, head) pair of one
    /// launch.
    pub(crate) scratch_len: usize,
}

/// Checks the scoring of Q `[B, Lq, Hq, D]` by K `[B, Lk, Hkv, D]` (`Hkv` divides
/// `Hq`; `D` 64, 96, 128 or 256; the whole `cfg` validated, though its `tau` is not used):
/// q and k cover every element the kernel addresses (dims, strides, 16-byte
/// alignment, bounds). The launches split the (batch, head) pairs so that each one's
/// scratch stays under [`XATTN_SCRATCH_BUDGET`].
pub(crate) fn plan_scores<T: KernelElement>(q: &TensorArg, k: &TensorArg, cfg: &XAttnConfig) -> Result<ScoresPlan> {
    let sh = AttnShape::of_qkv(&q.layout.dims, &k.layout.dims, &k.layout.dims)?;
    cfg.validate_heads(sh.heads_q)?;
    if !XATTN_HEAD_DIMS.contains(&sh.head_dim) {
        return Err(Error::Unsupported(format!(
            "XAttention scoring head dim {} (supported: {XATTN_HEAD_DIMS:?})",
            sh.head_dim
        )));
    }
    let g = ScoreGeometry::new(&sh, cfg.stride)?;
    let smem = match sh.head_dim {
        64 => ffi::MASKATTN_XATTN_SCORE_SMEM_D64,
        96 => ffi::MASKATTN_XATTN_SCORE_SMEM_D96,
        128 => ffi::MASKATTN_XATTN_SCORE_SMEM_D128,
        256 => ffi::MASKATTN_XATTN_SCORE_SMEM_D256,
        d => unreachable!("head dim {d} passed the XATTN_HEAD_DIMS check"),
    };
    let pairs = sh.batch * sh.heads_q;
    let pair_scratch = g.n_q_rows * g.n_k_blocks;
    let per_launch = (XATTN_SCRATCH_BUDGET / 4 / pair_scratch.max(1)).clamp(1, pairs);
    q.check::<T>("q")?;
    k.check::<T>("k")?;
    let st = |l: &Layout4| l.strides.map(|s| s as i64);
    let ([qb, qr, qh, _], [kb, kr, kh, _]) = (st(&q.layout), st(&k.layout));
    let params = ffi::MaskattnXattnScoreParams {
        q: q.addr as *const _,
        k: k.addr as *const _,
        scores: std::ptr::null_mut(),
        scratch: std::ptr::null_mut(),
        q_batch_stride: qb,
        q_row_stride: qr,
        q_head_stride: qh,
        k_batch_stride: kb,
        k_row_stride: kr,
        k_head_stride: kh,
        batch: sh.batch as i32,
        heads_q: sh.heads_q as i32,
        heads_kv: sh.heads_kv as i32,
        len_q: sh.len_q as i32,
        len_k: sh.len_k as i32,
        head_dim: sh.head_dim as i32,
        stride: cfg.stride as i32,
        n_q_rows: g.n_q_rows as i32,
        n_k_cols: g.n_k_cols as i32,
        n_q_blocks: g.n_q_blocks as i32,
        n_k_blocks: g.n_k_blocks as i32,
        bh_begin: 0,
        causal: i32::from(cfg.causal),
        scale_log2: (std::f64::consts::LOG2_E / (cfg.stride as f64 * (sh.head_dim as f64).sqrt())) as f32,
    };
    Ok(ScoresPlan {
        params,
        kernel: format!("maskattn_xattn_scores_{}_d{}_s{}", T::KERNEL_NAME, sh.head_dim, cfg.stride),
        smem_bytes: smem,
        row_blocks: g.row_blocks as u32,
        pairs,
        per_launch,
        scores_len: pairs * g.n_q_blocks * g.n_k_blocks,
        scratch_len: per_launch * pair_scratch,
    })
}

impl ScoresPlan {
    /// The launches, one per `per_launch` (batch, head) pairs (grid.x), writing
    /// `scores` (`scores_len` floats) with `scratch` (`scratch_len` floats): the only
    /// ranges the kernel touches.
    pub(crate) fn launches(&self, scores: u64, scratch: u64) -> Vec<KernelLaunch<ffi::MaskattnXattnScoreParams>> {
        (0..self.pairs)
            .step_by(self.per_launch)
            .map(|bh_begin| KernelLaunch {
                kernel: self.kernel.clone(),
                grid: (self.per_launch.min(self.pairs - bh_begin) as u32, self.row_blocks, 1),
                block: (ffi::MASKATTN_XATTN_SCORE_THREADS, 1, 1),
                smem_bytes: self.smem_bytes,
                params: ffi::MaskattnXattnScoreParams {
                    scores: scores as *mut f32,
                    scratch: scratch as *mut f32,
                    bh_begin: bh_begin as i32,
                    ..self.params
                },
            })
            .collect()
    }
}

/// XAttention block scores `[B, Hq, nQb, nKb]` (f32, row-major) of `q` and `k` in a
/// new buffer of `b` ([`plan_scores`]; the scratch is freed after the launches, in
/// the backend's order).
///
/// # Safety
///
/// `q` and `k` are live memory of `b` of at least their given lengths, accessed (see
/// [`Backend::Access`]) until this returns.
pub(crate) unsafe fn block_scores<B: Backend, T: KernelElement>(
    b: &B,
    q: &TensorArg,
    k: &TensorArg,
    cfg: &XAttnConfig,
) -> Result<B::Buf<f32>> {
    let plan = plan_scores::<T>(q, k, cfg)?;
    let mut scores = b.zeros::<f32>(plan.scores_len)?;
    let mut scratch = b.zeros::<f32>(plan.scratch_len)?;
    {
        let (scores_addr, _scores) = b.addr_mut(&mut scores);
        let (scratch_addr, _scratch) = b.addr_mut(&mut scratch);
        for launch in plan.launches(scores_addr, scratch_addr) {
            // SAFETY: the plan checked q and k, which the caller vouches for; scores
            // and scratch are sized as the plan asked and accessed until after the
            // launches.
            unsafe { b.launch(&launch) }?;
        }
    }
    Ok(scores)
}

/// The selection launch, checked, before its thresholds and output exist.
#[derive(Debug, Clone)]
pub(crate) struct SelectPlan {
    params: ffi::MaskattnXattnSelectParams,
    rows: u32,
    smem_bytes: u32,
    /// Per query head, its threshold, to upload as the kernel's `tau`.
    pub(crate) tau: Vec<f64>,
    /// Bytes of the selection, as many as scores.
    pub(crate) selected_len: usize,
}

/// Checks the selection (definition 7 of [`crate::xattention`]) of `scores_len`
/// scores `[batch, heads, ceil(len_q/128), ceil(len_k/128)]`: one CTA per block
/// row, with 9 bytes of shared memory per entry of its sort (the power of two at or
/// above nKb).
pub(crate) fn plan_select(
    scores_len: usize,
    batch: usize,
    heads: usize,
    cfg: &XAttnConfig,
    len_q: usize,
    len_k: usize,
) -> Result<SelectPlan> {
    cfg.validate_heads(heads)?;
    for (what, n) in [("batch", batch), ("heads", heads), ("len_q", len_q), ("len_k", len_k)] {
        if n == 0 {
            return Err(invalid(what, "must be >= 1"));
        }
        to_i32(what, n)?;
    }
    let (nqb, nkb) = (len_q.div_ceil(BLOCK), len_k.div_ceil(BLOCK));
    let rows = [batch, heads, nqb].into_iter().try_fold(1usize, |a, x| a.checked_mul(x));
    let total = rows.and_then(|r| r.checked_mul(nkb));
    if total != Some(scores_len) {
        return Err(Error::Shape(format!("{scores_len} scores, expected B*H*nQb*nKb = {batch}*{heads}*{nqb}*{nkb}")));
    }
    let rows = rows.expect("checked with total");
    if rows > i32::MAX as usize {
        return Err(Error::Unsupported(format!("{rows} block rows exceed the grid")));
    }
    if nkb > XATTN_MAX_KEY_BLOCKS {
        return Err(Error::Unsupported(format!(
            "{nkb} key blocks (len_k = {len_k}); the selection kernel sorts at most {XATTN_MAX_KEY_BLOCKS}"
        )));
    }
    let sort_size = nkb.next_power_of_two();
    let params = ffi::MaskattnXattnSelectParams {
        scores: std::ptr::null(),
        tau: std::ptr::null(),
        selected: std::ptr::null_mut(),
        batch: batch as i32,
        heads: heads as i32,
        len_q: len_q as i32,
        len_k: len_k as i32,
        n_q_blocks: nqb as i32,
        n_k_blocks: nkb as i32,
        sort_size: sort_size as i32,
        causal: i32::from(cfg.causal),
    };
    Ok(SelectPlan {
        params,
        rows: rows as u32,
        smem_bytes: (9 * sort_size) as u32,
        tau: (0..heads).map(|h| cfg.tau.for_head(h)).collect(),
        selected_len: scores_len,
    })
}

impl SelectPlan {
    /// The launch reading `scores` and `tau` (the plan's, uploaded) and writing every
    /// byte of `selected`.
    pub(crate) fn launch(&self, scores: u64, tau: u64, selected: u64) -> KernelLaunch<ffi::MaskattnXattnSelectParams> {
        KernelLaunch {
            kernel: "maskattn_xattn_select".into(),
            grid: (self.rows, 1, 1),
            block: (ffi::MASKATTN_XATTN_SELECT_THREADS, 1, 1),
            smem_bytes: self.smem_bytes,
            params: ffi::MaskattnXattnSelectParams {
                scores: scores as *const f32,
                tau: tau as *const f64,
                selected: selected as *mut u8,
                ..self.params
            },
        }
    }
}

/// The block selection `u8 [B][H][nQb][nKb]` of `scores` in a new buffer of `b`
/// ([`plan_select`]).
///
/// # Safety
///
/// `scores` is live memory of `b` of at least its given length, accessed (see
/// [`Backend::Access`]) until this returns.
pub(crate) unsafe fn select<B: Backend>(
    b: &B,
    scores: BufArg,
    batch: usize,
    heads: usize,
    cfg: &XAttnConfig,
    len_q: usize,
    len_k: usize,
) -> Result<B::Buf<u8>> {
    let plan = plan_select(scores.len, batch, heads, cfg, len_q, len_k)?;
    let tau = b.upload(&plan.tau)?;
    let mut selected = b.zeros::<u8>(plan.selected_len)?;
    {
        let (tau_addr, _tau) = b.addr(&tau);
        let (selected_addr, _selected) = b.addr_mut(&mut selected);
        // SAFETY: `scores` (vouched for by the caller) and `selected` hold
        // B*H*nQb*nKb elements and `tau` H doubles, the ranges the kernel addresses.
        unsafe { b.launch(&plan.launch(scores.addr, tau_addr, selected_addr)) }?;
    }
    Ok(selected)
}

/// The selection of a packed scores buffer of `b`.
fn select_buf<B: Backend>(
    b: &B,
    scores: &B::Buf<f32>,
    batch: usize,
    heads: usize,
    cfg: &XAttnConfig,
    len_q: usize,
    len_k: usize,
) -> Result<B::Buf<u8>> {
    let (scores, _scores) = BufArg::of(b, scores);
    // SAFETY: a live buffer of `b` with its own length, accessed until after.
    unsafe { select(b, scores, batch, heads, cfg, len_q, len_k) }
}

/// The scores of packed Q and K buffers of `b` shaped as `sh` says.
fn block_scores_buf<B: Backend, T: KernelElement>(
    b: &B,
    sh: &AttnShape,
    q: &B::Buf<T>,
    k: &B::Buf<T>,
    cfg: &XAttnConfig,
) -> Result<B::Buf<f32>> {
    let (q_dims, kv_dims) = super::qkv_dims(sh);
    let (q, _q) = TensorArg::of(b, q, q_dims);
    let (k, _k) = TensorArg::of(b, k, kv_dims);
    // SAFETY: live buffers of `b` with their own lengths, accessed until after.
    unsafe { block_scores::<B, T>(b, &q, &k, cfg) }
}

/// The selection of host scores `[B, H, nQb, nKb]`.
pub(crate) fn xattn_select_scores<B: Backend>(
    b: &B,
    scores: ArrayView4<f32>,
    cfg: &XAttnConfig,
    len_q: usize,
    len_k: usize,
) -> Result<BlockSelection> {
    let &[batch, heads, _, _] = scores.shape() else { unreachable!("4-d view") };
    let dev = upload_array(b, &scores)?;
    let sel = select_buf(b, &dev, batch, heads, cfg, len_q, len_k)?;
    BlockSelection::from_bytes(batch, heads, len_q, len_k, cfg.causal, b.download(&sel)?)
}

/// Scores and selection of host Q `[B, Lq, Hq, D]` and K `[B, Lk, Hkv, D]`.
pub(crate) fn xattn_select_blocks<B: Backend, T: KernelElement>(
    b: &B,
    q: ArrayView4<T>,
    k: ArrayView4<T>,
    cfg: &XAttnConfig,
) -> Result<(Array4<f32>, BlockSelection)> {
    let sh = AttnShape::of_qkv(q.shape(), k.shape(), k.shape())?;
    cfg.validate_heads(sh.heads_q)?;
    let (dq, dk) = (upload_array(b, &q)?, upload_array(b, &k)?);
    let scores = block_scores_buf(b, &sh, &dq, &dk, cfg)?;
    let sel = select_buf(b, &scores, sh.batch, sh.heads_q, cfg, sh.len_q, sh.len_k)?;
    let (nqb, nkb) = (sh.len_q.div_ceil(BLOCK), sh.len_k.div_ceil(BLOCK));
    let scores = Array4::from_shape_vec((sh.batch, sh.heads_q, nqb, nkb), b.download(&scores)?).expect("sizes match");
    let sel = BlockSelection::from_bytes(sh.batch, sh.heads_q, sh.len_q, sh.len_k, cfg.causal, b.download(&sel)?)?;
    Ok((scores, sel))
}

/// What the host-array XAttention (`xattention_host` of a backend handle) returns.
#[derive(Debug, Clone)]
pub struct XAttnOutput<T> {
    /// Attention output `[B, Lq, Hq, D]`.
    pub out: Array4<T>,
    /// LSE `[B, Hq, Lq]`, natural log.
    pub lse: Array3<f32>,
    /// The blocks that were computed (ANDed with the mask), for inspection.
    pub selection: BlockSelection,
}

/// XAttention end to end on host arrays: block scores, selection and the
/// block-sparse forward with the selection ANDed to `mask` (default scale).
pub(crate) fn xattention<B: Backend, T: KernelElement>(
    b: &B,
    q: ArrayView4<T>,
    k: ArrayView4<T>,
    v: ArrayView4<T>,
    cfg: &XAttnConfig,
    mask: &Mask,
) -> Result<XAttnOutput<T>> {
    let sh = AttnShape::new(q.shape(), k.shape(), v.shape(), mask)?;
    cfg.validate_heads(sh.heads_q)?;
    let (dq, dk, dv) = (upload_array(b, &q)?, upload_array(b, &k)?, upload_array(b, &v)?);
    let device_mask = ForwardMask::new(b, mask, sh.head_dim)?;
    let scores = block_scores_buf(b, &sh, &dq, &dk, cfg)?;
    let selection = select_buf(b, &scores, sh.batch, sh.heads_q, cfg, sh.len_q, sh.len_k)?;
    let (out, lse) = attention_on(b, &sh, [&dq, &dk, &dv], &device_mask, Some(&selection), None)?;
    let selection =
        BlockSelection::from_bytes(sh.batch, sh.heads_q, sh.len_q, sh.len_k, cfg.causal, b.download(&selection)?)?;
    Ok(XAttnOutput { out, lse, selection })
}

#[cfg(test)]
mod tests {
    use half::f16;
    use ndarray::Array4;

    use super::super::record::Recorder;
    use super::*;
    use crate::xattention::Tau;

    fn cfg() -> XAttnConfig {
        XAttnConfig { stride: 16, tau: Tau::Scalar(0.9), causal: true }
    }

    #[test]
    fn scores_select_and_sparse_forward_share_their_buffers() {
        let rec = Recorder::default();
        let mask = Mask::causal(300, 700).unwrap();
        let q = Array4::from_elem((1, 300, 4, 128), f16::ONE);
        let kv = Array4::from_elem((1, 700, 2, 128), f16::ONE);
        let out = xattention(&rec, q.view(), kv.view(), kv.view(), &cfg(), &mask).unwrap();
        assert_eq!(out.selection.as_bytes().len(), 4 * 3 * 6);
        let l = rec.launches();
        let kernels: Vec<&str> = l.iter().map(|l| l.kernel.as_str()).collect();
        assert_eq!(kernels, ["maskattn_xattn_scores_f16_d128_s16", "maskattn_xattn_select", "maskattn_fwd_f16_d128"]);
        let s: ffi::MaskattnXattnScoreParams = l[0].params();
        assert_eq!((l[0].grid, l[0].smem_bytes), ((4, 1, 1), ffi::MASKATTN_XATTN_SCORE_SMEM_D128));
        assert_eq!((s.n_q_rows, s.n_k_cols, s.n_q_blocks, s.n_k_blocks, s.bh_begin), (19, 44, 3, 6, 0));
        let sel: ffi::MaskattnXattnSelectParams = l[1].params();
        assert_eq!((l[1].grid, l[1].smem_bytes, sel.sort_size), ((12, 1, 1), 9 * 8, 8));
        assert_eq!(sel.scores as u64, s.scores as u64);
        assert_eq!(rec.uploaded::<f64>(sel.tau as u64), Some(vec![0.9; 4]));
        let fwd: ffi::MaskattnFwdParams = l[2].params();
        assert_eq!(fwd.block_select as u64, sel.selected as u64);
    }

    #[test]
    fn head_dim_256_plans_its_own_kernel_and_shared_memory() {
        let rec = Recorder::default();
        let q = Array4::from_elem((1, 300, 2, 256), f16::ONE);
        for stride in [8, 16] {
            let cfg = XAttnConfig { stride, ..cfg() };
            xattn_select_blocks(&rec, q.view(), q.view(), &cfg).unwrap();
        }
        let l = rec.launches();
        let scoring: Vec<(&str, u32)> = l
            .iter()
            .filter(|l| l.kernel != "maskattn_xattn_select")
            .map(|l| (l.kernel.as_str(), l.smem_bytes))
            .collect();
        assert_eq!(
            scoring,
            [("maskattn_xattn_scores_f16_d256_s8", 135_680), ("maskattn_xattn_scores_f16_d256_s16", 135_680)]
        );
        let s: ffi::MaskattnXattnScoreParams = l[0].params();
        assert_eq!((s.head_dim, s.stride, s.n_q_rows), (256, 8, 38));
        assert_eq!(s.scale_log2, (std::f64::consts::LOG2_E / (8.0 * 16.0)) as f32);
    }

    #[test]
    fn bad_inputs_are_errors_before_any_launch() {
        let rec = Recorder::default();
        for d in [72, 80] {
            let q = Array4::from_elem((1, 300, 4, d), f16::ONE);
            match xattn_select_blocks(&rec, q.view(), q.view(), &cfg()) {
                Err(Error::Unsupported(msg)) => {
                    assert_eq!(msg, format!("XAttention scoring head dim {d} (supported: [64, 96, 128, 256])"))
                }
                other => panic!("D = {d}: {other:?}"),
            }
        }
        let q = Array4::from_elem((1, 300, 4, 64), f16::ONE);
        let bad_stride = XAttnConfig { stride: 4, ..cfg() };
        assert!(xattn_select_blocks(&rec, q.view(), q.view(), &bad_stride).is_err());
        let scores = Array4::<f32>::zeros((1, 4, 3, 3));
        assert!(matches!(xattn_select_scores(&rec, scores.view(), &cfg(), 300, 600), Err(Error::Shape(_))));
        assert!(rec.launches().is_empty());
        xattn_select_scores(&rec, scores.view(), &cfg(), 300, 300).unwrap();
        assert_eq!(rec.launches().len(), 1);
    }
}
