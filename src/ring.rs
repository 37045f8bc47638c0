//! The Python-facing slot pool: slots handed to a producer thread, filled with the GIL
//! released and exported as DLPack leaves.

use crate::copy::{self, Conversion, Source};
use crate::dlpack::{self, DLDataType, DLDevice, Export};
use crate::error::{message, CoreError};
use crate::gil;
use crate::layout::{export_end, Fill, Layout};
use crate::pool::{AcquireError, Lease, Pool, PoolConfig};
use crate::queue::{timeout_from, QueueCore, ReadyQueue};
use crate::sync::{Arc, AtomicU64, Ordering};
use pyo3::buffer::PyUntypedBuffer;
use pyo3::prelude::*;
use pyo3::types::{PyCapsule, PyDict};
use std::time::Instant;

#[derive(Default)]
struct FillCounters {
    fills: AtomicU64,
    bytes: AtomicU64,
    nanos: AtomicU64,
}

/// The slot pool the producer fills: page-aligned, optionally pinned slots, reused once every
/// batch, DLPack export and JAX array that refers to a slot is gone.
///
/// The producer calls `acquire` → `Slot.fill` → `Slot.export`; waiting happens with the GIL
/// released. Given the `ReadyQueue` it feeds, the pool grows when the consumer waits on that
/// queue with nothing ready and every slot is held (a consumer that keeps batches never
/// deadlocks).
#[pyclass(module = "fastbridge._core", frozen)]
pub struct SlotPool {
    pool: Pool,
    queue: Option<Arc<QueueCore>>,
    copy_threads: usize,
    counters: Arc<FillCounters>,
}

#[pymethods]
impl SlotPool {
    #[new]
    #[pyo3(signature = (*, slots, max_bytes=None, lock=true, cuda=false, copy_threads=2, queue=None))]
    fn new(
        slots: usize,
        max_bytes: Option<usize>,
        lock: bool,
        cuda: bool,
        copy_threads: usize,
        queue: Option<PyRef<'_, ReadyQueue>>,
    ) -> PyResult<Self> {
        if slots == 0 {
            return Err(message!("at_least_one", name = "slots", value = slots).into());
        }
        if copy_threads == 0 {
            return Err(
                message!("at_least_one", name = "copy_threads", value = copy_threads).into(),
            );
        }
        let pool = Pool::new(PoolConfig {
            slots,
            max_bytes,
            lock,
            cuda,
        });
        let queue = match queue {
            Some(queue) => {
                queue.core.feed(pool.clone())?;
                Some(Arc::clone(&queue.core))
            }
            None => None,
        };
        Ok(Self {
            pool,
            queue,
            copy_threads,
            counters: Arc::new(FillCounters::default()),
        })
    }

    /// Producer: take a slot of at least `nbytes` to fill (GIL released while waiting).
    /// Grows the pool when the consumer is blocked with nothing ready and every slot is held.
    #[pyo3(signature = (nbytes, timeout=None))]
    fn acquire(&self, py: Python<'_>, nbytes: usize, timeout: Option<f64>) -> PyResult<Slot> {
        let timeout = timeout_from(timeout)?;
        let queue = self.queue.as_deref();
        let starving = || queue.is_some_and(QueueCore::starving);
        let lease = gil::wait(py, timeout, |slice| {
            match self.pool.acquire(nbytes, slice, starving) {
                Err(AcquireError::TimedOut) => None,
                done => Some(done),
            }
        })?
        .unwrap_or(Err(AcquireError::TimedOut))
        .map_err(CoreError::Acquire)?;
        Ok(Slot {
            lease: Some(lease),
            copy_threads: self.copy_threads,
            counters: Arc::clone(&self.counters),
        })
    }

    /// Stop handing out slots, wake a blocked producer and free every slot no batch holds.
    fn close(&self) {
        self.pool.close();
    }

    #[getter]
    fn closed(&self) -> bool {
        self.pool.is_closed()
    }

    /// Pool and fill counters (a dict of ints and floats).
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let pool = self.pool.stats();
        let dict = PyDict::new(py);
        dict.set_item("slots", pool.slots)?;
        dict.set_item("slots_free", pool.free)?;
        dict.set_item("slots_leased", pool.leased)?;
        dict.set_item("pool_bytes", pool.bytes)?;
        dict.set_item("pool_grown", pool.grown)?;
        dict.set_item("locked_slots", pool.locked_slots)?;
        dict.set_item("locked_bytes", pool.locked_bytes)?;
        dict.set_item("cuda_slots", pool.cuda_slots)?;
        dict.set_item("fills", self.counters.fills.load(Ordering::SeqCst))?;
        dict.set_item("bytes_copied", self.counters.bytes.load(Ordering::SeqCst))?;
        let nanos = self.counters.nanos.load(Ordering::SeqCst);
        dict.set_item("fill_seconds", nanos as f64 * 1e-9)?;
        Ok(dict)
    }
}

/// A slot being filled by the producer. Writable until its first export.
#[pyclass(module = "fastbridge._core")]
pub struct Slot {
    lease: Option<Arc<Lease>>,
    copy_threads: usize,
    counters: Arc<FillCounters>,
}

fn released() -> CoreError {
    message!("released").into()
}

fn already_exported() -> CoreError {
    message!("already_exported").into()
}

impl Slot {
    fn lease(&self) -> Result<&Arc<Lease>, CoreError> {
        self.lease.as_ref().ok_or_else(released)
    }
}

#[pymethods]
impl Slot {
    /// Copy leaves into the slot with the GIL released. `leaves` holds
    /// `(array, offset, conversion)` triples: any C-contiguous buffer, its byte offset in the
    /// slot, and a conversion code (`_core.CONVERSIONS`: 0 copy, 1 f64→f32, 2 i64→i32,
    /// 3 u64→u32, 4 c128→c64). `write` does the same from a `Layout` made once.
    fn fill(&mut self, py: Python<'_>, leaves: Vec<(Bound<'_, PyAny>, usize, u8)>) -> PyResult<()> {
        let lease = self.lease.as_mut().ok_or_else(released)?;
        let lease = Arc::get_mut(lease).ok_or_else(already_exported)?;
        let mut sources = Vec::with_capacity(leaves.len());
        let mut fills = Vec::with_capacity(leaves.len());
        for (index, (array, offset, code)) in leaves.into_iter().enumerate() {
            let buffer = PyUntypedBuffer::get(&array)?;
            fills.push((index, 0, buffer.len_bytes(), offset, code));
            sources.push(buffer);
        }
        let layout = Layout::build(sources.len(), &fills, &[])?;
        fill_slot(
            py,
            lease,
            &sources,
            &layout,
            self.copy_threads,
            &self.counters,
        )
    }

    /// Fill the slot as `layout` says, from `sources` (C-contiguous buffers, in the layout's
    /// source order), with the GIL released, then export the layout's leaves: one call per
    /// batch. A value that does not fit its narrowing raises `CoreRangeError` whose `leaf` is
    /// the index of the layout's fill entry.
    fn write(
        &mut self,
        py: Python<'_>,
        sources: Vec<Bound<'_, PyAny>>,
        layout: PyRef<'_, Layout>,
    ) -> PyResult<Vec<Leaf>> {
        let lease = self.lease.as_mut().ok_or_else(released)?;
        let lease = Arc::get_mut(lease).ok_or_else(already_exported)?;
        if sources.len() != layout.sources {
            let (expected, given) = (layout.sources, sources.len());
            return Err(message!("layout_sources", expected = expected, given = given).into());
        }
        let buffers = sources
            .iter()
            .map(PyUntypedBuffer::get)
            .collect::<PyResult<Vec<_>>>()?;
        fill_slot(
            py,
            lease,
            &buffers,
            &layout,
            self.copy_threads,
            &self.counters,
        )?;
        let lease = self.lease()?;
        let device_type = device_type_of(lease);
        Ok(layout
            .exports
            .iter()
            .map(|leaf| Leaf {
                lease: Arc::clone(lease),
                offset: leaf.offset,
                shape: leaf.shape.clone(),
                dtype: leaf.dtype,
                device: DLDevice {
                    device_type,
                    device_id: leaf.device_id,
                },
            })
            .collect())
    }

    /// Export `shape` elements of DLPack dtype (`code`, `bits`) at byte `offset` as a leaf that
    /// JAX (or NumPy) can import without copying. After the first export the slot is read-only.
    /// `device_id` is the id the leaf reports in `__dlpack_device__` (host memory is reachable
    /// from every CPU device; JAX places the import on the device with that id).
    #[pyo3(signature = (offset, shape, code, bits, device_id=0))]
    fn export(
        &self,
        offset: usize,
        shape: Vec<i64>,
        code: u8,
        bits: u8,
        device_id: i32,
    ) -> PyResult<Leaf> {
        let lease = self.lease()?;
        let capacity = lease.buffer().capacity();
        match export_end(offset, &shape, bits) {
            Err(why) => return Err(why.into()),
            Ok(end) if end > capacity => {
                let shape = format!("{shape:?}");
                return Err(message!(
                    "export_past_slot",
                    shape = shape,
                    bits = bits,
                    offset = offset,
                    capacity = capacity
                )
                .into());
            }
            Ok(_) => {}
        }
        let device_type = device_type_of(lease);
        Ok(Leaf {
            lease: Arc::clone(lease),
            offset,
            shape,
            dtype: DLDataType {
                code,
                bits,
                lanes: 1,
            },
            device: DLDevice {
                device_type,
                device_id,
            },
        })
    }

    /// Drop the producer's reference; the slot returns when every exported leaf is gone too.
    fn release(&mut self) {
        self.lease = None;
    }

    /// Start address of the slot's memory.
    #[getter]
    fn address(&self) -> PyResult<usize> {
        Ok(self.lease()?.buffer().as_ptr() as usize)
    }

    /// Usable bytes in the slot (whole pages).
    #[getter]
    fn capacity(&self) -> PyResult<usize> {
        Ok(self.lease()?.buffer().capacity())
    }

    /// This slot's memory's allocation id: never reused, unlike its address.
    #[getter]
    fn buffer_id(&self) -> PyResult<u64> {
        Ok(self.lease()?.buffer().id())
    }

    /// Whether the slot's pages are registered with the CUDA driver (exports then say
    /// `kDLCUDAHost`).
    #[getter]
    fn cuda(&self) -> PyResult<bool> {
        Ok(self.lease()?.buffer().pinning().cuda)
    }

    /// Whether the slot's pages are locked in RAM.
    #[getter]
    fn locked(&self) -> PyResult<bool> {
        Ok(self.lease()?.buffer().pinning().locked)
    }
}

/// DLPack's device type for a slot's memory: CUDA host memory once registered with the driver.
fn device_type_of(lease: &Lease) -> i32 {
    if lease.buffer().pinning().cuda {
        dlpack::DEVICE_CUDA_HOST
    } else {
        dlpack::DEVICE_CPU
    }
}

/// Copy `sources` into the slot as `layout` says, with the GIL released (on up to `threads`
/// threads for large batches), and count the fill.
fn fill_slot(
    py: Python<'_>,
    lease: &mut Lease,
    sources: &[PyUntypedBuffer],
    layout: &Layout,
    threads: usize,
    counters: &FillCounters,
) -> PyResult<()> {
    let capacity = lease.buffer().capacity();
    if layout.nbytes > capacity {
        let needed = layout.nbytes;
        return Err(message!("layout_too_large", needed = needed, capacity = capacity).into());
    }
    let mut views = Vec::with_capacity(sources.len());
    for (index, buffer) in sources.iter().enumerate() {
        let view = Source::of(buffer)
            .ok_or_else(|| message!("not_contiguous", buffer = format!("source {index}")))?;
        views.push(view);
    }
    for fill in &layout.fills {
        let (buffer, view) = (&sources[fill.source], &views[fill.source]);
        if fill.start + fill.len > view.len() {
            let (start, end, size) = (fill.start, fill.start + fill.len, view.len());
            let error = message!("past_source", start = start, end = end, size = size);
            return Err(error.within(format!("fill {}", fill.index)).into());
        }
        let item = buffer.item_size();
        if fill.conversion != Conversion::Copy && item != 8 && item != 16 {
            let conversion = format!("{:?}", fill.conversion);
            let error = message!("item_size", conversion = conversion, item = item);
            return Err(error.within(format!("fill {}", fill.index)).into());
        }
    }
    let started = Instant::now();
    let total: usize = layout.fills.iter().map(Fill::written).sum();
    let result = {
        let mut rest = lease.buffer_mut().as_mut_slice();
        let mut consumed = 0;
        let mut tasks = Vec::with_capacity(layout.fills.len());
        for fill in &layout.fills {
            let (_, tail) = rest.split_at_mut(fill.offset - consumed);
            let (dest, tail) = tail.split_at_mut(fill.written());
            rest = tail;
            consumed = fill.offset + fill.written();
            tasks.push(copy::Task {
                leaf: fill.index,
                conversion: fill.conversion,
                source: views[fill.source].slice(fill.start, fill.len),
                dest,
            });
        }
        gil::run(py, || copy::run(tasks, threads))
    };
    counters.fills.fetch_add(1, Ordering::SeqCst);
    counters.bytes.fetch_add(total as u64, Ordering::SeqCst);
    let nanos = started.elapsed().as_nanos().min(u128::from(u64::MAX)) as u64;
    counters.nanos.fetch_add(nanos, Ordering::SeqCst);
    result.map_err(|overflow| CoreError::from(overflow).into())
}

/// One array inside a slot, importable through DLPack (`jax.dlpack.from_dlpack`,
/// `np.from_dlpack`). Holding it, or anything imported from it, keeps the slot leased.
#[pyclass(module = "fastbridge._core", frozen)]
pub struct Leaf {
    lease: Arc<Lease>,
    offset: usize,
    shape: Vec<i64>,
    dtype: DLDataType,
    device: DLDevice,
}

#[pymethods]
impl Leaf {
    #[pyo3(signature = (*, stream=None, max_version=None, dl_device=None, copy=None))]
    fn __dlpack__<'py>(
        &self,
        py: Python<'py>,
        stream: Option<Bound<'py, PyAny>>,
        max_version: Option<(u32, u32)>,
        dl_device: Option<(i32, i32)>,
        copy: Option<bool>,
    ) -> PyResult<Bound<'py, PyCapsule>> {
        // Host memory has no stream to synchronise with; any value is accepted and ignored.
        let _ = stream;
        if copy == Some(true) {
            return Err(message!("copy_refused").into());
        }
        if let Some((device_type, device_id)) = dl_device {
            if (device_type, device_id) != (self.device.device_type, self.device.device_id) {
                let device = format!("{:?}", (self.device.device_type, self.device.device_id));
                let asked = format!("{:?}", (device_type, device_id));
                return Err(message!("wrong_device", device = device, asked = asked).into());
            }
        }
        let versioned = max_version.is_some_and(|(major, _)| major >= 1);
        let export = Export {
            lease: Arc::clone(&self.lease),
            offset: self.offset,
            shape: self.shape.clone(),
            dtype: self.dtype,
            device: self.device,
        };
        dlpack::capsule(py, export, versioned)
    }

    fn __dlpack_device__(&self) -> (i32, i32) {
        (self.device.device_type, self.device.device_id)
    }

    /// Address of the first element.
    #[getter]
    fn address(&self) -> usize {
        self.lease.buffer().as_ptr() as usize + self.offset
    }

    #[getter]
    fn shape(&self) -> Vec<i64> {
        self.shape.clone()
    }
}

/// Whether a CUDA driver could be loaded and a device opened in this process.
#[pyfunction]
pub fn cuda_available() -> bool {
    crate::cuda::available()
}
