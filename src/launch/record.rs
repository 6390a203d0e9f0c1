//! A backend that runs nothing, for tests of the plans and of the generic host API
//! without a device: it hands out distinct fake addresses (256-byte aligned, as
//! device allocations are) and records every buffer and launch.

use std::any::Any;
use std::cell::{Ref, RefCell};

use super::{Backend, KernelArgs, KernelLaunch, Scalar};
use crate::error::Result;

/// A recorded launch.
pub(crate) struct Recorded {
    pub kernel: String,
    pub grid: (u32, u32, u32),
    pub block: (u32, u32, u32),
    pub smem_bytes: u32,
    /// The params value: its bytes include padding, which is no value to compare.
    params: Box<dyn Any>,
}

impl Recorded {
    /// The launch's params, of the type its plan made.
    pub(crate) fn params<P: KernelArgs>(&self) -> P {
        *self.params.downcast_ref::<P>().expect("the params type of this launch")
    }
}

struct Allocation {
    addr: u64,
    len: usize,
    /// What `upload` was given (a `Vec<T>`); `None` for zeros and scratch.
    uploaded: Option<Box<dyn Any>>,
}

#[derive(Default)]
struct State {
    allocations: Vec<Allocation>,
    launches: Vec<Recorded>,
}

#[derive(Default)]
pub(crate) struct Recorder {
    state: RefCell<State>,
    /// The configuration the recorder reports (its budget is unlimited).
    pub(crate) tile_config: crate::tiles::TileConfig,
    /// The forward path it reports; `Auto` is the mma.sync kernel, whatever the
    /// environment says, so that the plans' tests see what they set.
    pub(crate) forward_path: super::ForwardPath,
}

/// A recorder's buffer: its fake address and its contents, which no launch changes.
#[derive(Debug)]
pub(crate) struct FakeBuf<T> {
    addr: u64,
    data: Vec<T>,
}

impl Recorder {
    fn alloc<T: Scalar>(&self, data: Vec<T>, uploaded: bool) -> FakeBuf<T> {
        let mut st = self.state.borrow_mut();
        // 64 bytes per element reserves enough for every Scalar; the gap keeps
        // neighbours apart.
        let addr = st.allocations.last().map_or(1 << 32, |a| {
            let end = a.addr + (a.len.max(1) * 64) as u64;
            end.next_multiple_of(256) + 256
        });
        let copy: Option<Box<dyn Any>> = uploaded.then(|| Box::new(data.clone()) as Box<dyn Any>);
        st.allocations.push(Allocation { addr, len: data.len(), uploaded: copy });
        FakeBuf { addr, data }
    }

    /// Every launch so far, in order.
    pub(crate) fn launches(&self) -> Ref<'_, Vec<Recorded>> {
        Ref::map(self.state.borrow(), |s| &s.launches)
    }

    /// What was uploaded to the buffer at `addr`, if one of `T` was.
    pub(crate) fn uploaded<T: Scalar>(&self, addr: u64) -> Option<Vec<T>> {
        let st = self.state.borrow();
        let a = st.allocations.iter().find(|a| a.addr == addr)?;
        a.uploaded.as_ref()?.downcast_ref::<Vec<T>>().cloned()
    }

    /// Buffers allocated so far (uploads, zeros and scratch).
    pub(crate) fn allocations(&self) -> usize {
        self.state.borrow().allocations.len()
    }

    /// Elements of the buffer at `addr`.
    pub(crate) fn buffer_len(&self, addr: u64) -> Option<usize> {
        self.state.borrow().allocations.iter().find(|a| a.addr == addr).map(|a| a.len)
    }
}

impl Backend for Recorder {
    type Buf<T: Scalar> = FakeBuf<T>;
    type Access<'a> = ();

    fn upload<T: Scalar>(&self, host: &[T]) -> Result<FakeBuf<T>> {
        Ok(self.alloc(host.to_vec(), true))
    }

    fn zeros<T: Scalar>(&self, len: usize) -> Result<FakeBuf<T>> {
        // SAFETY: every Scalar (numbers and structs of them) is valid as zero bits.
        let zero: T = unsafe { std::mem::zeroed() };
        Ok(self.alloc(vec![zero; len], false))
    }

    unsafe fn scratch<T: Scalar>(&self, len: usize) -> Result<FakeBuf<T>> {
        self.zeros(len)
    }

    fn download<T: Scalar>(&self, buf: &FakeBuf<T>) -> Result<Vec<T>> {
        Ok(buf.data.clone())
    }

    fn len<T: Scalar>(&self, buf: &FakeBuf<T>) -> usize {
        buf.data.len()
    }

    fn addr<'a, T: Scalar>(&'a self, buf: &'a FakeBuf<T>) -> (u64, ()) {
        (buf.addr, ())
    }

    fn addr_mut<'a, T: Scalar>(&'a self, buf: &'a mut FakeBuf<T>) -> (u64, ()) {
        (buf.addr, ())
    }

    /// No device: a plan's shared memory is what the tests assert on.
    fn smem_budget(&self) -> u32 {
        u32::MAX
    }

    fn tile_config(&self) -> crate::tiles::TileConfig {
        self.tile_config
    }

    fn forward_path(&self) -> Result<super::ForwardPath> {
        Ok(match self.forward_path {
            super::ForwardPath::Auto => super::ForwardPath::Mma,
            path => path,
        })
    }

    /// An H100's SM count.
    fn persistent_ctas(&self) -> u32 {
        132
    }

    /// The CPU backend's encoding: readable bytes for the tests to assert on.
    fn tensor_map(&self, spec: &super::tensor_map::TensorMapSpec) -> Result<super::tensor_map::TensorMapBytes> {
        spec.encode_cpu()
    }

    unsafe fn start<P: KernelArgs>(&self, l: &KernelLaunch<P>) -> Result<()> {
        self.state.borrow_mut().launches.push(Recorded {
            kernel: l.kernel.clone(),
            grid: l.grid,
            block: l.block,
            smem_bytes: l.smem_bytes,
            params: Box::new(l.params),
        });
        Ok(())
    }
}
