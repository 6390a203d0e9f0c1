//! Device, stream, memory and module loading.

use std::sync::{Arc, OnceLock};

use cudarc::driver::sys::CUdevice_attribute::{
    CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
};
use cudarc::driver::sys::CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES;
use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr, DevicePtrMut, DeviceRepr, LaunchConfig,
    PushKernelArg, SyncOnDrop, ValidAsZeroBits,
};
use cudarc::nvrtc::Ptx;

use super::build_info::{FATBIN, KERNEL_BUILD};
use crate::compat::{self, CudaVersion};
use crate::error::{Error, Result};
use crate::launch::tensor_map::{OobFill, TensorMapBytes, TensorMapSpec, TmaElement, TmaSwizzle};
use crate::launch::{self, Backend, ForwardPath, KernelArgs, KernelLaunch, Scalar};
use crate::mask::Mask;
use crate::tiles::{TileClass, TileConfig, TileShape, TileSummary};

#[cfg(target_os = "windows")]
const DRIVER_LIBS: &[&str] = &["nvcuda.dll"];
#[cfg(not(target_os = "windows"))]
const DRIVER_LIBS: &[&str] = &["libcuda.so.1", "libcuda.so"];

/// Checks that the CUDA driver library can be loaded. cudarc panics on its first
/// call when it cannot, so every entry point of this module asks here first.
pub fn driver_available() -> Result<()> {
    static PROBE: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    PROBE
        .get_or_init(|| {
            let mut why = Vec::new();
            for name in DRIVER_LIBS {
                // SAFETY: loading the driver runs its initializers, the same thing
                // cudarc does next; the handle is dropped at once.
                match unsafe { libloading::Library::new(name) } {
                    Ok(_) => return Ok(()),
                    Err(e) => why.push(e.to_string()),
                }
            }
            Err(why.join("; "))
        })
        .clone()
        .map_err(Error::NoDriver)
}

/// The newest CUDA version the installed driver supports (`cuDriverGetVersion`;
/// nvidia-smi's "CUDA Version").
pub fn driver_version() -> Result<CudaVersion> {
    driver_available()?;
    let mut version = 0;
    // SAFETY: one int written by the driver; callable before cuInit.
    unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut version) }.result()?;
    CudaVersion::from_driver_api(version).ok_or_else(|| Error::Cuda(format!("cuDriverGetVersion returned {version}")))
}

/// A CUDA device with a stream and maskattn's kernels loaded: the handle every GPU
/// call of the crate takes.
///
/// ```no_run
/// let gpu = maskattn::cuda::Gpu::new(0)?;
/// println!("{} (sm_{}{})", gpu.name()?, gpu.compute_capability()?.0, gpu.compute_capability()?.1);
/// let x = gpu.upload(&[1.0f32, 2.0, 3.0])?;
/// assert_eq!(gpu.download(&x)?, vec![1.0, 2.0, 3.0]);
/// # Ok::<(), maskattn::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Gpu {
    stream: Arc<CudaStream>,
    module: Arc<CudaModule>,
    /// The device's opt-in maximum of dynamic shared memory per block.
    smem_budget: u32,
    tile_config: TileConfig,
    forward_path: ForwardPath,
    compute_capability: (u32, u32),
    sms: u32,
}

impl Gpu {
    /// Opens device `ordinal` with a new stream.
    pub fn new(ordinal: usize) -> Result<Self> {
        driver_available()?;
        let ctx = CudaContext::new(ordinal).map_err(|e| Error::NoDevice(format!("device {ordinal}: {e}")))?;
        let stream = ctx.new_stream()?;
        Self::with_stream(stream)
    }

    /// Works on an existing stream (and its context), e.g. the one of a candle
    /// device, so that maskattn's kernels are ordered with the caller's work.
    ///
    /// A driver too old for the embedded kernels is [`Error::DriverTooOld`], found
    /// before the kernels are loaded (see [`crate::compat`]).
    pub fn with_stream(stream: Arc<CudaStream>) -> Result<Self> {
        driver_available()?;
        let ctx = stream.context();
        let (major, minor) = ctx.compute_capability()?;
        let cc = (u32::try_from(major).unwrap_or(0), u32::try_from(minor).unwrap_or(0));
        let requirement = KERNEL_BUILD.driver_requirement(cc)?;
        compat::check_driver(driver_version()?, KERNEL_BUILD.toolkit, &requirement)?;
        let module = ctx.load_module(Ptx::from_binary(FATBIN.to_vec()))?;
        let smem_budget = ctx.attribute(CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)?.max(0) as u32;
        let sms = ctx.attribute(CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?.max(1) as u32;
        Ok(Self {
            stream,
            module,
            smem_budget,
            tile_config: TileConfig::Auto,
            forward_path: ForwardPath::Auto,
            compute_capability: cc,
            sms,
        })
    }

    /// The stream every launch and copy of this handle goes to.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// The device name, e.g. "NVIDIA H100 80GB HBM3".
    pub fn name(&self) -> Result<String> {
        Ok(self.stream.context().name()?)
    }

    /// The dynamic shared memory one block may use on this device, in bytes
    /// (`MAX_SHARED_MEMORY_PER_BLOCK_OPTIN`). A launch needing more returns
    /// [`Error::Unsupported`] before anything runs.
    pub fn smem_budget(&self) -> u32 {
        self.smem_budget
    }

    /// This handle with the kernels' tile configuration forced to `config` (the
    /// default, [`TileConfig::Auto`], picks the largest that fits
    /// [`Gpu::smem_budget`]). A forced configuration that does not fit is
    /// [`Error::Unsupported`] at the launch. Masks uploaded before keep the
    /// configuration they were uploaded for.
    ///
    /// ```no_run
    /// use maskattn::tiles::TileConfig;
    /// let gpu = maskattn::cuda::Gpu::new(0)?.with_tile_config(TileConfig::Compact);
    /// assert_eq!(gpu.tile_config(), TileConfig::Compact);
    /// # Ok::<(), maskattn::Error>(())
    /// ```
    pub fn with_tile_config(mut self, config: TileConfig) -> Self {
        self.tile_config = config;
        self
    }

    /// The tile configuration asked for (see [`Gpu::with_tile_config`]).
    pub fn tile_config(&self) -> TileConfig {
        self.tile_config
    }

    /// This handle with the forward kernel forced to `path` (the default,
    /// [`ForwardPath::Auto`], takes `MASKATTN_FORWARD_PATH` if set, else the Hopper
    /// kernel on sm_90 and the mma.sync kernel elsewhere). The Hopper path on another
    /// GPU is [`Error::Unsupported`] at the forward.
    ///
    /// ```no_run
    /// use maskattn::ForwardPath;
    /// let gpu = maskattn::cuda::Gpu::new(0)?.with_forward_path(ForwardPath::Mma);
    /// assert_eq!(gpu.forward_path()?, ForwardPath::Mma);
    /// # Ok::<(), maskattn::Error>(())
    /// ```
    pub fn with_forward_path(mut self, path: ForwardPath) -> Self {
        self.forward_path = path;
        self
    }

    /// The forward kernel this handle runs, resolved (see [`Gpu::with_forward_path`]).
    pub fn forward_path(&self) -> Result<ForwardPath> {
        let sm90 = self.compute_capability == (9, 0);
        let path = self.forward_path.resolve(if sm90 { ForwardPath::Hopper } else { ForwardPath::Mma })?;
        if path == ForwardPath::Hopper && !sm90 {
            let (major, minor) = self.compute_capability;
            return Err(Error::Unsupported(format!(
                "the Hopper forward kernel needs an sm_90 GPU; this one is sm_{major}{minor}"
            )));
        }
        Ok(path)
    }

    /// (major, minor) compute capability.
    pub fn compute_capability(&self) -> Result<(i32, i32)> {
        Ok(self.stream.context().compute_capability()?)
    }

    /// Copies a host slice to a new device buffer.
    pub fn upload<T: DeviceRepr>(&self, host: &[T]) -> Result<CudaSlice<T>> {
        Ok(self.stream.clone_htod(host)?)
    }

    /// Copies a device buffer to the host, after the stream's pending work.
    pub fn download<T: DeviceRepr>(&self, dev: &CudaSlice<T>) -> Result<Vec<T>> {
        let host = self.stream.clone_dtoh(dev)?;
        self.stream.synchronize()?;
        Ok(host)
    }

    /// A zero-filled device buffer of `len` elements.
    pub fn zeros<T: DeviceRepr + ValidAsZeroBits>(&self, len: usize) -> Result<CudaSlice<T>> {
        Ok(self.stream.alloc_zeros(len)?)
    }

    /// Waits for the stream's work.
    pub fn synchronize(&self) -> Result<()> {
        Ok(self.stream.synchronize()?)
    }

    /// A kernel of the embedded fatbin by its `extern "C"` name.
    fn function(&self, name: &str) -> Result<CudaFunction> {
        self.module.load_function(name).map_err(|e| Error::Cuda(format!("kernel {name}: {e}")))
    }

    /// The class of every (query tile, key tile) pair, row-major `[query tile][key
    /// tile]`, computed on the device by the kernels' own classification code. Equal
    /// to [`crate::tiles::tile_classes`] (tests/gpu_smoke.rs checks it).
    pub fn tile_classes(&self, mask: &Mask, shape: TileShape) -> Result<Vec<TileClass>> {
        launch::classes::tile_classes(self, mask, shape)
    }
}

// SAFETY: 11 `i32` (#[repr(C)]), copied to the device as an array; every bit
// pattern, zero included, is a valid summary.
unsafe impl DeviceRepr for TileSummary {}
// SAFETY: as above.
unsafe impl ValidAsZeroBits for TileSummary {}

/// One kernel parameter inside a [`KernelArgs`] value: cudarc hands the driver a
/// pointer to it, and the driver copies the parameter's size, which the kernel's
/// signature gives, from there.
#[repr(transparent)]
struct Param(u8);

// SAFETY: only ever a pointer to a parameter of the kernel's type (`KernelArgs`).
unsafe impl DeviceRepr for Param {}

/// The GPU backend: everything on this handle's stream. Accesses are cudarc's event
/// guards, so buffers shared with other streams stay ordered with the launches.
impl Backend for Gpu {
    type Buf<T: Scalar> = CudaSlice<T>;
    type Access<'a> = SyncOnDrop<'a>;

    fn upload<T: Scalar>(&self, host: &[T]) -> Result<CudaSlice<T>> {
        Gpu::upload(self, host)
    }

    fn zeros<T: Scalar>(&self, len: usize) -> Result<CudaSlice<T>> {
        Gpu::zeros(self, len)
    }

    unsafe fn scratch<T: Scalar>(&self, len: usize) -> Result<CudaSlice<T>> {
        // SAFETY: the caller writes it before reading it (the trait's contract).
        Ok(unsafe { self.stream.alloc::<T>(len) }?)
    }

    fn download<T: Scalar>(&self, buf: &CudaSlice<T>) -> Result<Vec<T>> {
        Gpu::download(self, buf)
    }

    fn len<T: Scalar>(&self, buf: &CudaSlice<T>) -> usize {
        buf.len()
    }

    fn addr<'a, T: Scalar>(&'a self, buf: &'a CudaSlice<T>) -> (u64, SyncOnDrop<'a>) {
        buf.device_ptr(&self.stream)
    }

    fn addr_mut<'a, T: Scalar>(&'a self, buf: &'a mut CudaSlice<T>) -> (u64, SyncOnDrop<'a>) {
        buf.device_ptr_mut(&self.stream)
    }

    fn smem_budget(&self) -> u32 {
        self.smem_budget
    }

    fn tile_config(&self) -> TileConfig {
        self.tile_config
    }

    fn forward_path(&self) -> Result<ForwardPath> {
        Gpu::forward_path(self)
    }

    fn persistent_ctas(&self) -> u32 {
        self.sms
    }

    fn tensor_map(&self, spec: &TensorMapSpec) -> Result<TensorMapBytes> {
        encode_tensor_map(&self.stream, spec)
    }

    unsafe fn start<P: KernelArgs>(&self, l: &KernelLaunch<P>) -> Result<()> {
        let f = self.function(&l.kernel)?;
        if l.smem_bytes > 48 * 1024 {
            f.set_attribute(CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, l.smem_bytes as i32)?;
        }
        let mut builder = self.stream.launch_builder(&f);
        let base = std::ptr::from_ref(&l.params).cast::<u8>();
        for &offset in P::OFFSETS {
            // SAFETY: KernelArgs puts a parameter of the kernel's type at `offset`
            // inside `l.params`, which outlives the launch call.
            builder.arg(unsafe { &*base.add(offset).cast::<Param>() });
        }
        let cfg = LaunchConfig { grid_dim: l.grid, block_dim: l.block, shared_mem_bytes: l.smem_bytes };
        // SAFETY: the parameters are the kernel's, in order (KernelArgs); the caller
        // vouches for the addresses in them (the trait's contract), and the plan for
        // the grid and shared memory.
        unsafe { builder.launch(cfg) }?;
        Ok(())
    }
}

/// `spec` encoded by the driver (`cuTensorMapEncodeTiled`), after the same checks
/// the CPU backend makes, so that both refuse the same maps with the same errors.
fn encode_tensor_map(stream: &CudaStream, spec: &TensorMapSpec) -> Result<TensorMapBytes> {
    use cudarc::driver::sys::{
        self, CUtensorMapDataType, CUtensorMapFloatOOBfill, CUtensorMapInterleave, CUtensorMapL2promotion,
        CUtensorMapSwizzle,
    };
    spec.validate()?;
    let data_type = match spec.elem {
        TmaElement::F16 => CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_FLOAT16,
        TmaElement::Bf16 => CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_BFLOAT16,
        TmaElement::F32 => CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_FLOAT32,
    };
    let swizzle = match spec.swizzle {
        TmaSwizzle::None => CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_NONE,
        TmaSwizzle::B32 => CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_32B,
        TmaSwizzle::B64 => CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_64B,
        TmaSwizzle::B128 => CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_128B,
    };
    let oob = match spec.oob {
        OobFill::Zero => CUtensorMapFloatOOBfill::CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE,
        OobFill::Nan => CUtensorMapFloatOOBfill::CU_TENSOR_MAP_FLOAT_OOB_FILL_NAN_REQUEST_ZERO_FMA,
    };
    // Every element of the box is copied: element strides of 1.
    let element_strides = [1u32; launch::tensor_map::MAX_RANK];
    // cudarc's CUtensorMap (128 bytes, aligned as the driver asks); its bytes are
    // then the kernel parameter.
    let mut map = sys::CUtensorMap { opaque: [0; 16] };
    stream.context().bind_to_thread()?;
    // SAFETY: the arrays hold rank dims and box dims and rank - 1 strides (validate
    // checked the lengths), `map` is a live, aligned CUtensorMap; the driver only
    // records the global address, it does not access it.
    unsafe {
        sys::cuTensorMapEncodeTiled(
            &mut map,
            data_type,
            spec.rank() as u32,
            spec.base as *mut std::ffi::c_void,
            spec.dims.as_ptr(),
            spec.strides.as_ptr(),
            spec.box_dims.as_ptr(),
            element_strides.as_ptr(),
            CUtensorMapInterleave::CU_TENSOR_MAP_INTERLEAVE_NONE,
            swizzle,
            // A cache hint only: what a copy writes does not depend on it.
            CUtensorMapL2promotion::CU_TENSOR_MAP_L2_PROMOTION_L2_128B,
            oob,
        )
    }
    .result()
    .map_err(|e| Error::Cuda(format!("cuTensorMapEncodeTiled for tensor map {}: {e}", spec.name)))?;
    let mut out = TensorMapBytes([0; 128]);
    for (chunk, word) in out.0.chunks_exact_mut(8).zip(map.opaque) {
        chunk.copy_from_slice(&word.to_ne_bytes());
    }
    Ok(out)
}
