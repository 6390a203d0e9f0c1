//! The CPU backend: maskattn's CUDA kernels, compiled from the same csrc/ source by
//! the host C++ compiler, executed warp-synchronously on the CPU.
//!
//! Every CUDA thread is a fiber; warp collectives (`ldmatrix`, `mma.sync`, shuffles,
//! votes, `__syncwarp`) are rendezvous of the lanes their mask names, and
//! `__syncthreads` one of the whole block. The primitives are emulated as the PTX
//! ISA defines them (`mma.sync.m16n8k16` with exact products and f32 accumulation,
//! `ldmatrix` with and without `.trans`, `cp.async` landing only at its
//! `wait_group`, with poison in its destination until then, round-to-nearest-even
//! conversions). Shared memory is exactly the launch's size and starts as NaN
//! poison; every address a primitive uses is bounds-checked against it and against
//! the buffers of this handle. Divergent warps and barrier deadlocks are errors
//! naming the kernel, block, warp and lanes. CTAs run in parallel on the host's
//! cores; the interleaving of the warps of a CTA follows a seeded [`Schedule`].
//!
//! What it is for: tests of the kernels' logic and memory protocol on machines
//! without a GPU (CI), and of code that uses maskattn there. It is slow (about 3 ms
//! of one core per forward key tile of 128 queries x 32 keys at D = 128) and no
//! production CPU path. It cannot see what the compiler makes of the source for
//! the GPU (SASS, register allocation), nor timing; an `ex2.approx` or `sincospif`
//! on the GPU may differ from the host's in the last bits.
//!
//! ```
//! # fn main() -> maskattn::Result<()> {
//! use maskattn::cpu::CpuBackend;
//! let cpu = CpuBackend::new();
//! let x = cpu.upload(&[1.0f32, 2.0, 3.0])?;
//! assert_eq!(cpu.download(&x)?, vec![1.0, 2.0, 3.0]);
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::ffi::CString;
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};
use crate::ffi;
use crate::launch::tensor_map::{TensorMapBytes, TensorMapSpec};
use crate::launch::{Backend, ForwardPath, KernelArgs, KernelLaunch, Scalar};
use crate::tiles::TileConfig;

/// How the warps of each CTA are interleaved between synchronization points.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schedule {
    /// A seeded random runnable thread at every step.
    Random,
    /// One seeded warp of each CTA runs only when no other thread can: the order
    /// that exposes a missing barrier before an epilogue.
    Victim,
    /// Threads in index order: warps in lockstep, the fair interleaving.
    RoundRobin,
}

/// Options of a [`CpuBackend`]'s launches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuOptions {
    /// Seeds the schedule and the early landing of copies (each CTA derives its own).
    pub seed: u64,
    /// The interleaving of warps.
    pub schedule: Schedule,
    /// OS threads running CTAs in parallel; 0 = one per core.
    pub workers: usize,
    /// Pending `cp.async` copies may also land at random steps between issue and
    /// wait, not only at the wait.
    pub early_landing: bool,
    /// Dynamic shared memory a block may use, bytes (an H100's 227 KB by default; 163 KB
    /// for an A100, 99 KB for sm_86/89/120). A launch needing more returns
    /// [`crate::Error::Unsupported`], as on a GPU with that budget.
    pub max_dynamic_smem: u32,
    /// The tile configuration ([`TileConfig::Auto`]: chosen from `max_dynamic_smem`, as
    /// a GPU chooses from its budget).
    pub tile_config: TileConfig,
    /// The forward kernel: [`ForwardPath::Auto`] is `MASKATTN_FORWARD_PATH` if set,
    /// else the mma.sync kernel; the CPU backend runs either.
    pub forward_path: ForwardPath,
    /// The SMs a persistent kernel (the Hopper forward) sizes its grid by: fewer than
    /// an H100's 132, so that each CTA takes several work items.
    pub sms: u32,
}

impl Default for CpuOptions {
    fn default() -> Self {
        Self {
            seed: 0,
            schedule: Schedule::Random,
            workers: 0,
            early_landing: false,
            max_dynamic_smem: 227 * 1024,
            tile_config: TileConfig::Auto,
            forward_path: ForwardPath::Auto,
            sms: 8,
        }
    }
}

/// Work a launch did, summed over its CTAs (see [`CpuBackend::counters`]).
pub type Counters = ffi::MaskattnCpuCounters;

impl Counters {
    fn add(&mut self, o: &Counters) {
        self.ctas += o.ctas;
        self.mma += o.mma;
        self.ldmatrix += o.ldmatrix;
        self.ldmatrix_conflicts += o.ldmatrix_conflicts;
        self.cp_async += o.cp_async;
        self.cp_async_zero_fill += o.cp_async_zero_fill;
        self.bytes_global_to_shared += o.bytes_global_to_shared;
        self.cp_async_conflicts += o.cp_async_conflicts;
        self.barriers += o.barriers;
        self.warp_syncs += o.warp_syncs;
        for i in 0..3 {
            self.key_tiles[i] += o.key_tiles[i];
        }
        self.races += o.races;
        self.wgmma += o.wgmma;
        self.tma_loads += o.tma_loads;
        self.bytes_tma += o.bytes_tma;
    }
}

/// Which checks the linked CPU backend was built with (`MASKATTN_CPU_CHECK` at build time).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckMode {
    /// The primitives' bounds, poison and protocol checks only.
    Plain,
    /// Plus AddressSanitizer and UndefinedBehaviorSanitizer over the kernels' plain C++.
    Memcheck,
    /// Plus the shared-memory race detector: every shared access of the kernels, by
    /// their plain C++ (through ThreadSanitizer's instrumentation) or by a primitive.
    Racecheck,
}

/// The check mode of this build.
pub fn check_mode() -> CheckMode {
    // SAFETY: a pure function of the build.
    match unsafe { ffi::maskattn_cpu_check_mode() } {
        1 => CheckMode::Racecheck,
        2 => CheckMode::Memcheck,
        _ => CheckMode::Plain,
    }
}

type Registry = Arc<Mutex<BTreeMap<u64, u64>>>;

/// A buffer in the CPU backend's "device memory": a host allocation of exactly
/// `len` elements, registered with its handle so that launches may address it.
#[derive(Debug)]
pub struct CpuBuffer<T: Scalar> {
    ptr: *mut T,
    len: usize,
    registry: Registry,
}

// SAFETY: the buffer owns its allocation; kernels touch it only during a launch,
// which borrows the handle and finishes before returning.
unsafe impl<T: Scalar> Send for CpuBuffer<T> {}
// SAFETY: as above; shared references only read (download) between launches.
unsafe impl<T: Scalar> Sync for CpuBuffer<T> {}

impl<T: Scalar> CpuBuffer<T> {
    /// Elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when it holds no element.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The address kernels see.
    pub fn addr(&self) -> u64 {
        self.ptr as u64
    }
}

impl<T: Scalar> Drop for CpuBuffer<T> {
    fn drop(&mut self) {
        self.registry.lock().expect("registry lock").remove(&(self.ptr as u64));
        // SAFETY: ptr/len come from Box::into_raw of a boxed slice of len elements.
        unsafe { drop(Box::from_raw(std::ptr::slice_from_raw_parts_mut(self.ptr, self.len))) };
    }
}

/// A handle on the CPU backend: its buffers, launch options and counters.
#[derive(Debug, Clone, Default)]
pub struct CpuBackend {
    options: CpuOptions,
    registry: Registry,
    counters: Arc<Mutex<Counters>>,
}

impl CpuBackend {
    /// A handle with the default options (random schedule, seed 0, every core).
    pub fn new() -> Self {
        Self::default()
    }

    /// A handle with `options`.
    pub fn with_options(options: CpuOptions) -> Self {
        Self { options, ..Self::default() }
    }

    /// This handle's options.
    pub fn options(&self) -> CpuOptions {
        self.options
    }

    /// Counters summed over every launch of this handle since the last
    /// [`CpuBackend::reset_counters`].
    pub fn counters(&self) -> Counters {
        *self.counters.lock().expect("counters lock")
    }

    /// Zeroes the counters.
    pub fn reset_counters(&self) {
        *self.counters.lock().expect("counters lock") = Counters::default();
    }

    fn alloc<T: Scalar>(&self, data: Box<[T]>) -> CpuBuffer<T> {
        let len = data.len();
        let ptr = Box::into_raw(data) as *mut T;
        self.registry.lock().expect("registry lock").insert(ptr as u64, (len * std::mem::size_of::<T>()) as u64);
        CpuBuffer { ptr, len, registry: self.registry.clone() }
    }

    /// Copies a host slice into a new buffer.
    pub fn upload<T: Scalar>(&self, host: &[T]) -> Result<CpuBuffer<T>> {
        Ok(self.alloc(host.to_vec().into_boxed_slice()))
    }

    /// A zero-filled buffer of `len` elements.
    pub fn zeros<T: Scalar>(&self, len: usize) -> Result<CpuBuffer<T>> {
        // SAFETY: every Scalar (numbers and structs of them) is valid as zero bits.
        Ok(self.alloc((0..len).map(|_| unsafe { std::mem::zeroed() }).collect()))
    }

    /// A buffer of NaN poison (all bits set), so that a kernel that reads scratch
    /// before writing it computes NaN instead of stale zeros.
    fn poisoned<T: Scalar>(&self, len: usize) -> CpuBuffer<T> {
        self.alloc(
            (0..len)
                .map(|_| {
                    let mut x = std::mem::MaybeUninit::<T>::uninit();
                    // SAFETY: every Scalar is valid for any bit pattern (integers, floats
                    // and structs of them), so all-ones is a value.
                    unsafe {
                        x.as_mut_ptr().write_bytes(0xff, 1);
                        x.assume_init()
                    }
                })
                .collect(),
        )
    }

    /// Copies a buffer out.
    pub fn download<T: Scalar>(&self, buf: &CpuBuffer<T>) -> Result<Vec<T>> {
        // SAFETY: the buffer is live and no launch runs (launches are synchronous
        // and borrow the handle for their duration).
        Ok(unsafe { std::slice::from_raw_parts(buf.ptr, buf.len) }.to_vec())
    }

    /// Runs kernel `name` of csrc/ with the given grid, block, dynamic shared memory
    /// and argument struct (`P` is `#[repr(C)]`: the kernel's params struct, or a
    /// struct whose fields are its arguments in order). Every address in `params`
    /// must point into a live buffer of this handle.
    fn launch_raw<P: Copy>(
        &self,
        name: &str,
        grid: (u32, u32, u32),
        block: (u32, u32, u32),
        dynamic_smem: u32,
        params: &P,
    ) -> Result<()> {
        let cname = CString::new(name).map_err(|_| Error::Cuda(format!("kernel name {name:?}")))?;
        let buffers: Vec<ffi::MaskattnCpuBuffer> = self
            .registry
            .lock()
            .expect("registry lock")
            .iter()
            .map(|(&addr, &bytes)| ffi::MaskattnCpuBuffer { addr, bytes })
            .collect();
        let o = &self.options;
        let options = ffi::MaskattnCpuOptions {
            seed: o.seed,
            schedule: match o.schedule {
                Schedule::Random => ffi::MASKATTN_CPU_SCHEDULE_RANDOM,
                Schedule::Victim => ffi::MASKATTN_CPU_SCHEDULE_VICTIM,
                Schedule::RoundRobin => ffi::MASKATTN_CPU_SCHEDULE_ROUND_ROBIN,
            } as i32,
            workers: o.workers.min(i32::MAX as usize) as i32,
            early_landing: o.early_landing as i32,
            n_buffers: buffers.len() as i32,
            buffers: buffers.as_ptr(),
            max_dynamic_smem: o.max_dynamic_smem,
        };
        let mut counters = Counters::default();
        let mut err = vec![0u8; 2048];
        let grid = [grid.0, grid.1, grid.2];
        let block = [block.0, block.1, block.2];
        // SAFETY: the runtime reads params_bytes bytes of `params` (checked against
        // the kernel's argument layout), the option and buffer arrays live for the
        // call, and the kernel's memory accesses through the addresses in `params` are
        // checked against `buffers` (cp.async) or lie in buffers the caller's checks
        // (the launch plans) proved large enough.
        let rc = unsafe {
            ffi::maskattn_cpu_launch(
                cname.as_ptr(),
                grid.as_ptr(),
                block.as_ptr(),
                dynamic_smem,
                params as *const P as *const std::ffi::c_void,
                std::mem::size_of::<P>() as u64,
                &options,
                &mut counters,
                err.as_mut_ptr() as *mut std::ffi::c_char,
                err.len() as u64,
            )
        };
        self.counters.lock().expect("counters lock").add(&counters);
        if rc != 0 {
            let end = err.iter().position(|&b| b == 0).unwrap_or(err.len());
            return Err(Error::Kernel(String::from_utf8_lossy(&err[..end]).into_owned()));
        }
        Ok(())
    }
}

impl Backend for CpuBackend {
    type Buf<T: Scalar> = CpuBuffer<T>;
    // Launches are synchronous: nothing to keep in order.
    type Access<'a> = ();

    fn upload<T: Scalar>(&self, host: &[T]) -> Result<CpuBuffer<T>> {
        CpuBackend::upload(self, host)
    }

    fn zeros<T: Scalar>(&self, len: usize) -> Result<CpuBuffer<T>> {
        CpuBackend::zeros(self, len)
    }

    unsafe fn scratch<T: Scalar>(&self, len: usize) -> Result<CpuBuffer<T>> {
        Ok(self.poisoned(len))
    }

    fn download<T: Scalar>(&self, buf: &CpuBuffer<T>) -> Result<Vec<T>> {
        CpuBackend::download(self, buf)
    }

    fn len<T: Scalar>(&self, buf: &CpuBuffer<T>) -> usize {
        buf.len
    }

    fn addr<'a, T: Scalar>(&'a self, buf: &'a CpuBuffer<T>) -> (u64, ()) {
        (buf.addr(), ())
    }

    fn addr_mut<'a, T: Scalar>(&'a self, buf: &'a mut CpuBuffer<T>) -> (u64, ()) {
        (buf.addr(), ())
    }

    fn smem_budget(&self) -> u32 {
        self.options.max_dynamic_smem
    }

    fn tensor_map(&self, spec: &TensorMapSpec) -> Result<TensorMapBytes> {
        spec.encode_cpu()
    }

    fn tile_config(&self) -> TileConfig {
        self.options.tile_config
    }

    fn forward_path(&self) -> Result<ForwardPath> {
        self.options.forward_path.resolve(ForwardPath::Mma)
    }

    fn persistent_ctas(&self) -> u32 {
        self.options.sms.max(1)
    }

    unsafe fn start<P: KernelArgs>(&self, l: &KernelLaunch<P>) -> Result<()> {
        self.launch_raw(&l.kernel, l.grid, l.block, l.smem_bytes, &l.params)
    }
}
