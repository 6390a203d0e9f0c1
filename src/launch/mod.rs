//! Kernel launches described once for every backend.
//!
//! The kernels of csrc/ run on two backends: the GPU (src/cuda, through cudarc) and
//! a CPU backend that compiles the same kernel source with the host compiler. What a
//! launch needs besides the machine — the input checks, the params struct, the grid,
//! the block and the dynamic shared memory — is computed here by one plan function
//! per kernel family, from addresses and lengths only, and returned as a
//! [`KernelLaunch`]. A backend implements [`Backend`] (allocate, copy, give
//! addresses, launch); the host-array API (upload, launch, download) is written once
//! over that trait, and the GPU's device-pointer API calls the same plans.

pub(crate) mod backward;
pub(crate) mod classes;
pub(crate) mod forward;
mod forward_path;
pub(crate) mod hopper_gemm;
mod layout;
pub(crate) mod naive;
#[cfg(test)]
mod probe;
#[cfg(test)]
mod probe_mbarrier;
#[cfg(test)]
mod probe_sm90;
#[cfg(test)]
mod probe_tma;
pub(crate) mod rope;
pub(crate) mod tensor_map;
pub(crate) mod xattn;

#[cfg(test)]
mod record;

use ndarray::{Array4, ArrayView4};

use crate::error::{invalid, Error, Result};
use crate::ffi;
use crate::shape::{AttnShape, Element};
use crate::tiles::TileConfig;

use tensor_map::{TensorMapBytes, TensorMapSpec};

pub use forward_path::{ForwardPath, FORWARD_PATH_ENV};
pub use layout::Layout4;

mod sealed {
    pub trait Scalar {}
    impl Scalar for half::f16 {}
    impl Scalar for half::bf16 {}
    impl Scalar for f32 {}
    impl Scalar for f64 {}
    impl Scalar for i32 {}
    impl Scalar for u32 {}
    impl Scalar for u8 {}
    impl Scalar for crate::tiles::TileSummary {}

    pub trait Kernel {}
    impl Kernel for half::f16 {}
    impl Kernel for half::bf16 {}
}

/// What cudarc requires of the elements of a device buffer, so that a GPU buffer can
/// hold any [`Scalar`].
#[cfg(feature = "cuda")]
pub trait CudaBounds: cudarc::driver::DeviceRepr + cudarc::driver::ValidAsZeroBits {}
#[cfg(feature = "cuda")]
impl<T: cudarc::driver::DeviceRepr + cudarc::driver::ValidAsZeroBits> CudaBounds for T {}

/// Without the GPU backend no backend adds requirements.
#[cfg(not(feature = "cuda"))]
pub trait CudaBounds {}
#[cfg(not(feature = "cuda"))]
impl<T> CudaBounds for T {}

/// Element types of backend buffers: those the kernels read and write (inputs,
/// LSE, scratch, mask tables, selections).
pub trait Scalar: sealed::Scalar + CudaBounds + Copy + Send + Sync + std::fmt::Debug + 'static {}

impl<T: sealed::Scalar + CudaBounds + Copy + Send + Sync + std::fmt::Debug + 'static> Scalar for T {}

/// Element types the kernels are compiled for: `half::f16` and `half::bf16`.
pub trait KernelElement: Element + Scalar + sealed::Kernel {
    /// The dtype's part of the kernel names.
    const KERNEL_NAME: &'static str;
}

impl KernelElement for half::f16 {
    const KERNEL_NAME: &'static str = "f16";
}

impl KernelElement for half::bf16 {
    const KERNEL_NAME: &'static str = "bf16";
}

/// A kernel's parameters as one `#[repr(C)]` value: either a params struct of
/// csrc/params.h that the kernel takes by value, or a struct whose fields are the
/// kernel's parameters in order (made by `kernel_args!`). The CPU backend hands the
/// kernel the whole value; cudarc wants one pointer per parameter, at `OFFSETS`.
///
/// # Safety
///
/// `Self` is `#[repr(C)]` and `OFFSETS` are the byte offsets in it of values of
/// exactly the kernel's parameter types, in the kernel's parameter order.
pub(crate) unsafe trait KernelArgs: Copy + std::fmt::Debug + 'static {
    /// Byte offsets of the kernel's parameters in `Self` (cudarc's launch wants one
    /// pointer per parameter; the CPU backend takes the whole value).
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    const OFFSETS: &'static [usize];
}

// SAFETY: bindgen's #[repr(C)] copies of csrc/params.h; each is the one by-value
// parameter of its kernels, so the whole struct sits at offset 0.
unsafe impl KernelArgs for ffi::MaskattnFwdParams {
    const OFFSETS: &'static [usize] = &[0];
}
// SAFETY: as above.
unsafe impl KernelArgs for ffi::MaskattnBwdParams {
    const OFFSETS: &'static [usize] = &[0];
}
// SAFETY: as above.
unsafe impl KernelArgs for ffi::MaskattnRopeParams {
    const OFFSETS: &'static [usize] = &[0];
}
// SAFETY: as above.
unsafe impl KernelArgs for ffi::MaskattnXattnScoreParams {
    const OFFSETS: &'static [usize] = &[0];
}
// SAFETY: as above.
unsafe impl KernelArgs for ffi::MaskattnXattnSelectParams {
    const OFFSETS: &'static [usize] = &[0];
}

/// Defines the [`KernelArgs`] struct of a kernel that takes several parameters. The
/// fields are written once, as the kernel's parameter list, so that the offsets
/// cudarc is given and the C layout the CPU backend passes cannot disagree.
/// Addresses are `u64` (pointers of the kernel's signature, 8 bytes on every
/// supported target).
macro_rules! kernel_args {
    ($(#[$meta:meta])* $name:ident { $($(#[$fmeta:meta])* $field:ident: $ty:ty,)* }) => {
        $(#[$meta])*
        #[repr(C)]
        #[derive(Debug, Clone, Copy, PartialEq)]
        pub(crate) struct $name {
            $($(#[$fmeta])* pub(crate) $field: $ty,)*
        }

        // SAFETY: #[repr(C)], and OFFSETS lists every field in declaration order,
        // which the macro's caller writes as the kernel's parameter list.
        unsafe impl $crate::launch::KernelArgs for $name {
            const OFFSETS: &'static [usize] = &[$(std::mem::offset_of!($name, $field)),*];
        }
    };
}
use kernel_args;

/// One kernel launch, checked: every address in `params` was checked by the plan
/// function that made it to cover what the kernel addresses with this grid.
#[derive(Debug, Clone)]
pub(crate) struct KernelLaunch<P> {
    /// The kernel's `extern "C"` name.
    pub kernel: String,
    /// Blocks (CTAs) in x, y, z.
    pub grid: (u32, u32, u32),
    /// Threads per block in x, y, z.
    pub block: (u32, u32, u32),
    /// Dynamic shared memory per block, in bytes.
    pub smem_bytes: u32,
    /// The kernel's parameters.
    pub params: P,
}

/// Where the kernels run: memory, copies and launches. The plans give every check
/// and number; a backend only moves bytes and starts kernels.
pub(crate) trait Backend {
    /// A buffer of `len` elements of `T` in the memory the kernels address.
    type Buf<T: Scalar>: std::fmt::Debug;

    /// Keeps a buffer's use by launches in order. On the GPU it is cudarc's event
    /// guard: dropped after the launches, it records the access on the stream, so
    /// that work of other streams on the buffer (and its free) waits for them. Keep
    /// it alive until after the last launch that uses the address.
    type Access<'a>
    where
        Self: 'a;

    /// Copies a host slice into a new buffer.
    fn upload<T: Scalar>(&self, host: &[T]) -> Result<Self::Buf<T>>;

    /// A zero-filled buffer of `len` elements.
    fn zeros<T: Scalar>(&self, len: usize) -> Result<Self::Buf<T>>;

    /// A buffer of `len` elements that a kernel fills before anything reads it.
    ///
    /// # Safety
    ///
    /// Its contents are unspecified: it must be written (by a kernel) before any
    /// kernel or download reads it.
    unsafe fn scratch<T: Scalar>(&self, len: usize) -> Result<Self::Buf<T>>;

    /// Copies a buffer to the host, after the launches made before.
    fn download<T: Scalar>(&self, buf: &Self::Buf<T>) -> Result<Vec<T>>;

    /// Elements of a buffer.
    fn len<T: Scalar>(&self, buf: &Self::Buf<T>) -> usize;

    /// The address of a buffer that launches read.
    fn addr<'a, T: Scalar>(&'a self, buf: &'a Self::Buf<T>) -> (u64, Self::Access<'a>);

    /// The address of a buffer that launches write.
    fn addr_mut<'a, T: Scalar>(&'a self, buf: &'a mut Self::Buf<T>) -> (u64, Self::Access<'a>);

    /// The dynamic shared memory one block may use, in bytes: the device's opt-in
    /// maximum on the GPU (99 KB on sm_86/89/120, 163 KB on sm_80, 227 KB on sm_90),
    /// [`crate::cpu::CpuOptions::max_dynamic_smem`] on the CPU backend.
    fn smem_budget(&self) -> u32;

    /// The tile configuration asked for (the plans resolve [`TileConfig::Auto`] with
    /// [`Backend::smem_budget`]).
    fn tile_config(&self) -> TileConfig;

    /// The forward kernel this backend runs, resolved (never [`ForwardPath::Auto`]),
    /// or [`Error::Unsupported`] where the path asked for cannot run here.
    fn forward_path(&self) -> Result<ForwardPath>;

    /// CTAs a persistent kernel launches at most: the number of SMs on the GPU.
    fn persistent_ctas(&self) -> u32;

    /// The tensor map `spec` describes, encoded for this backend's kernels (the
    /// driver's `CUtensorMap` on the GPU, csrc's `CpuTensorMap` on the CPU backend),
    /// or the typed error of [`TensorMapSpec::validate`]. A kernel takes it as a
    /// `const __grid_constant__ maskattn::sm90::TensorMap` parameter: a
    /// `kernel_args!` field of type [`TensorMapBytes`].
    #[cfg_attr(not(test), allow(dead_code))]
    fn tensor_map(&self, spec: &TensorMapSpec) -> Result<TensorMapBytes>;

    /// Runs (or queues) one kernel launch, or returns [`Error::Unsupported`] if it
    /// needs more shared memory than [`Backend::smem_budget`].
    ///
    /// # Safety
    ///
    /// `launch` comes from a plan function of this module, and every address in it
    /// is that of a live buffer of this backend (or of memory the kernels may
    /// address the same way) of at least the length the plan was given, whose
    /// [`Backend::Access`] is held until the launch is done or queued; buffers that
    /// it writes are not written by anything else meanwhile.
    unsafe fn launch<P: KernelArgs>(&self, launch: &KernelLaunch<P>) -> Result<()> {
        check_smem_budget(self, std::slice::from_ref(launch))?;
        // SAFETY: the caller's contract, passed on.
        unsafe { self.start(launch) }
    }

    /// [`Backend::launch`] after the budget check.
    ///
    /// # Safety
    ///
    /// As [`Backend::launch`], and `launch` fits [`Backend::smem_budget`].
    unsafe fn start<P: KernelArgs>(&self, launch: &KernelLaunch<P>) -> Result<()>;
}

/// A typed error, before anything runs, if one of `launches` needs more dynamic
/// shared memory per block than `b` allows (the kernels' tile configurations are
/// fixed per head dim: a smaller device cannot run the larger ones).
pub(crate) fn check_smem_budget<B: Backend + ?Sized, P>(b: &B, launches: &[KernelLaunch<P>]) -> Result<()> {
    let budget = b.smem_budget();
    match launches.iter().find(|l| l.smem_bytes > budget) {
        Some(l) => Err(Error::Unsupported(format!(
            "kernel {} needs {} bytes of shared memory per block; this device allows {budget}",
            l.kernel, l.smem_bytes
        ))),
        None => Ok(()),
    }
}

/// The GPU a conformance test runs its GPU half on, or `None` after a line saying why
/// it skips: no usable GPU (a failure instead under `MASKATTN_REQUIRE_GPU=1`), or,
/// with `sm90`, a GPU other than sm_90 (the Hopper instructions exist only there).
#[cfg(all(test, feature = "cuda"))]
pub(crate) fn test_gpu(what: &str, sm90: bool) -> Option<crate::cuda::Gpu> {
    let gpu = match crate::cuda::Gpu::new(0) {
        Ok(g) => g,
        Err(e) if std::env::var("MASKATTN_REQUIRE_GPU").as_deref() == Ok("1") => {
            panic!("MASKATTN_REQUIRE_GPU=1 but no GPU is usable: {e}")
        }
        Err(e) => {
            eprintln!("skipping the GPU half of the {what}: {e}");
            return None;
        }
    };
    if sm90 {
        match gpu.compute_capability() {
            Ok((9, 0)) => {}
            cc => {
                eprintln!("skipping the GPU half of the {what}: it needs sm_90a, the GPU is {cc:?}");
                return None;
            }
        }
    }
    Some(gpu)
}

/// One CPU backend per schedule (random, victim, round robin): a conformance test
/// runs on each, so that no interleaving hides a primitive's misordering.
#[cfg(all(test, feature = "cpu"))]
pub(crate) fn cpu_backends_per_schedule() -> impl Iterator<Item = (crate::cpu::Schedule, crate::cpu::CpuBackend)> {
    use crate::cpu::{CpuBackend, CpuOptions, Schedule};
    [Schedule::Random, Schedule::Victim, Schedule::RoundRobin]
        .into_iter()
        .map(|schedule| (schedule, CpuBackend::with_options(CpuOptions { schedule, ..CpuOptions::default() })))
}

/// A buffer as a plan sees it: its address and its length in elements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BufArg {
    /// Address of element 0.
    pub addr: u64,
    /// Elements.
    pub len: usize,
}

impl BufArg {
    /// A backend buffer that launches read.
    pub(crate) fn of<'a, B: Backend, T: Scalar>(b: &'a B, buf: &'a B::Buf<T>) -> (Self, B::Access<'a>) {
        let (addr, access) = b.addr(buf);
        (Self { addr, len: b.len(buf) }, access)
    }

    /// A backend buffer that launches write.
    pub(crate) fn of_mut<'a, B: Backend, T: Scalar>(b: &'a B, buf: &'a mut B::Buf<T>) -> (Self, B::Access<'a>) {
        let len = b.len(buf);
        let (addr, access) = b.addr_mut(buf);
        (Self { addr, len }, access)
    }
}

/// A `[B, L, H, D]` tensor as a plan sees it: a buffer starting at element
/// (0, 0, 0, 0) and the tensor's dims and strides in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TensorArg {
    /// Address of element (0, 0, 0, 0).
    pub addr: u64,
    /// Elements of the buffer from there.
    pub len: usize,
    /// Dims and strides.
    pub layout: Layout4,
}

impl TensorArg {
    /// A whole backend buffer, packed row-major as `dims`, that launches read.
    pub(crate) fn of<'a, B: Backend, T: Scalar>(
        b: &'a B,
        buf: &'a B::Buf<T>,
        dims: [usize; 4],
    ) -> (Self, B::Access<'a>) {
        let (BufArg { addr, len }, access) = BufArg::of(b, buf);
        (Self { addr, len, layout: Layout4::contiguous(dims) }, access)
    }

    /// A whole backend buffer, packed row-major as `dims`, that launches write.
    pub(crate) fn of_mut<'a, B: Backend, T: Scalar>(
        b: &'a B,
        buf: &'a mut B::Buf<T>,
        dims: [usize; 4],
    ) -> (Self, B::Access<'a>) {
        let (BufArg { addr, len }, access) = BufArg::of_mut(b, buf);
        (Self { addr, len, layout: Layout4::contiguous(dims) }, access)
    }

    /// What every kernel relies on for an input of `T` ([`Layout4::check`]).
    fn check<T>(&self, name: &str) -> Result<()> {
        self.layout.check(name, self.addr, self.len, std::mem::size_of::<T>())
    }

    /// What every kernel relies on for an output of `T`: an input's checks, and no
    /// two rows overlapping, since rows are written in parallel.
    fn check_output<T>(&self, name: &str) -> Result<()> {
        self.check::<T>(name)?;
        self.layout.check_disjoint(name)
    }
}

/// The softmax scale the attention kernels take: `scale`, or `1/sqrt(D)`. The kernels
/// mask scores with -inf before scaling: a scale <= 0 would turn them into NaN or
/// +inf, so only positive finite scales are taken.
fn kernel_scale(scale: Option<f32>, head_dim: usize) -> Result<f32> {
    match scale {
        Some(s) if !(s.is_finite() && s > 0.0) => {
            Err(invalid("scale", format!("{s}: the kernels need a positive finite scale")))
        }
        Some(s) => Ok(s),
        None => Ok(1.0 / (head_dim as f32).sqrt()),
    }
}

/// The LSE output `[B, Hq, Lq]` (contiguous f32) is long enough.
fn check_lse(lse: &BufArg, sh: &AttnShape) -> Result<()> {
    let lse_len = sh.batch * sh.heads_q * sh.len_q;
    if lse.len < lse_len {
        return Err(Error::Shape(format!("lse holds {} floats, needs B*Hq*Lq = {lse_len}", lse.len)));
    }
    Ok(())
}

/// The tensors' lengths are those the mask was prepared for.
fn check_mask_lens(sh: &AttnShape, len_q: usize, len_k: usize) -> Result<()> {
    if (sh.len_q, sh.len_k) != (len_q, len_k) {
        return Err(Error::Shape(format!(
            "the mask is for Lq={len_q}, Lk={len_k} but q, k have Lq={}, Lk={}",
            sh.len_q, sh.len_k
        )));
    }
    Ok(())
}

/// Element strides of the batch, row and head dims, as the params structs take them.
fn strides3(l: &Layout4) -> [i64; 3] {
    [l.strides[0] as i64, l.strides[1] as i64, l.strides[2] as i64]
}

/// Dims `[B, Lq, Hq, D]` of Q and `[B, Lk, Hkv, D]` of K and V.
fn qkv_dims(sh: &AttnShape) -> ([usize; 4], [usize; 4]) {
    ([sh.batch, sh.len_q, sh.heads_q, sh.head_dim], [sh.batch, sh.len_k, sh.heads_kv, sh.head_dim])
}

/// The dims of a host array.
fn dims<T>(a: &ArrayView4<T>) -> [usize; 4] {
    <[usize; 4]>::try_from(a.shape()).expect("4-d")
}

/// Uploads a host array, packed row-major.
fn upload_array<B: Backend, T: Scalar>(b: &B, a: &ArrayView4<T>) -> Result<B::Buf<T>> {
    b.upload(a.as_standard_layout().as_slice().expect("standard layout"))
}

/// Downloads a packed buffer as an array of `dims`.
fn download_array<B: Backend, T: Scalar>(b: &B, buf: &B::Buf<T>, dims: [usize; 4]) -> Result<Array4<T>> {
    Ok(Array4::from_shape_vec(dims, b.download(buf)?).expect("sizes match"))
}
