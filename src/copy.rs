//! Copy kernels: leaves from Python buffers into a slot, converting dtypes in the same pass.
//!
//! One of the crate's four `unsafe` modules (with [`crate::memory`], [`crate::dlpack`] and
//! [`crate::cuda`]): sources are raw pointers into buffers that Python
//! owns (kept exported by a borrow of the export for the whole copy), read with unaligned loads
//! and never turned into Rust references, because other Python threads may legally write to
//! them while the GIL is released (the values are then whatever NumPy's own copy would see).

use pyo3::buffer::PyUntypedBuffer;
use std::marker::PhantomData;
use std::ptr;

/// What to do with each element on the way into the slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Conversion {
    /// Bytes as they are.
    Copy,
    /// float64 → float32 (round to nearest, as NumPy's `astype`).
    F64ToF32,
    /// int64 → int32; a value out of range is an error, never wrapped.
    I64ToI32,
    /// uint64 → uint32; a value out of range is an error.
    U64ToU32,
    /// complex128 → complex64.
    C128ToC64,
}

impl Conversion {
    /// Every conversion, in code order: the code Python passes is the index.
    pub const ALL: [Self; 5] = [
        Self::Copy,
        Self::F64ToF32,
        Self::I64ToI32,
        Self::U64ToU32,
        Self::C128ToC64,
    ];

    pub fn from_code(code: u8) -> Option<Self> {
        Self::ALL.get(usize::from(code)).copied()
    }

    pub fn code(self) -> u8 {
        self as u8
    }

    /// The name Python knows the code by (`_core.CONVERSIONS`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Copy => "copy",
            Self::F64ToF32 => "f64_to_f32",
            Self::I64ToI32 => "i64_to_i32",
            Self::U64ToU32 => "u64_to_u32",
            Self::C128ToC64 => "c128_to_c64",
        }
    }

    /// (source, target) NumPy dtype names of a narrowing; `None` for the plain copy.
    pub fn dtypes(self) -> Option<(&'static str, &'static str)> {
        match self {
            Self::Copy => None,
            Self::F64ToF32 => Some(("float64", "float32")),
            Self::I64ToI32 => Some(("int64", "int32")),
            Self::U64ToU32 => Some(("uint64", "uint32")),
            Self::C128ToC64 => Some(("complex128", "complex64")),
        }
    }

    /// (source bytes, destination bytes) per unit of work.
    pub fn unit(self) -> (usize, usize) {
        match self {
            Self::Copy => (1, 1),
            Self::F64ToF32 | Self::I64ToI32 | Self::U64ToU32 => (8, 4),
            // A complex number is two floats; converting them one by one is the same thing.
            Self::C128ToC64 => (8, 4),
        }
    }
}

/// A read-only source region owned by Python, valid for as long as the borrow `'a` of its
/// buffer export lasts.
#[derive(Clone, Copy)]
pub struct Source<'a> {
    ptr: *const u8,
    len: usize,
    _export: PhantomData<&'a [u8]>,
}

// SAFETY: the region is only read, through raw pointers, and the borrow `'a` keeps the
// exporting object's buffer alive (and unresizable) until every thread that received a
// `Source` has been joined (scoped threads cannot outlive `'a`).
unsafe impl Send for Source<'_> {}
// SAFETY: as for `Send`; a `Source` is never written through.
unsafe impl Sync for Source<'_> {}

impl<'a> Source<'a> {
    /// The bytes of a C-contiguous buffer export; `None` for any other layout.
    pub fn of(buffer: &'a PyUntypedBuffer) -> Option<Self> {
        buffer.is_c_contiguous().then(|| Self {
            ptr: buffer.buf_ptr().cast(),
            len: buffer.len_bytes(),
            _export: PhantomData,
        })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub(crate) fn slice(&self, start: usize, len: usize) -> Self {
        assert!(start + len <= self.len, "source sub-range out of bounds");
        Self {
            // SAFETY: `start + len <= self.len`, so the pointer stays inside the same region.
            ptr: unsafe { self.ptr.add(start) },
            len,
            _export: PhantomData,
        }
    }

    /// Whether the region shares any byte with `len` bytes at `start`.
    fn overlaps(&self, start: *const u8, len: usize) -> bool {
        let (a, b) = (self.ptr as usize, start as usize);
        self.len > 0 && len > 0 && a < b + len && b < a + self.len
    }
}

/// Why a buffer export cannot be written by [`dest_in`].
#[derive(Debug, PartialEq, Eq)]
pub enum DestError {
    ReadOnly,
    NotContiguous,
    /// The source shares memory with the destination.
    Overlap,
    /// The write does not fit; the destination has `capacity` bytes.
    TooSmall {
        capacity: usize,
    },
}

/// `len` bytes at byte `offset` of a writable, C-contiguous buffer export, refused when the
/// range is outside it or when `source` shares memory with it. The `&mut` borrow of the export
/// makes the slice the only Rust reference to that memory; Python code in other threads can
/// still write to it while the GIL is released, exactly as with NumPy's own GIL-free copies.
pub fn dest_in<'a>(
    buffer: &'a mut PyUntypedBuffer,
    offset: usize,
    len: usize,
    source: &Source<'_>,
) -> Result<&'a mut [u8], DestError> {
    if buffer.readonly() {
        return Err(DestError::ReadOnly);
    }
    if !buffer.is_c_contiguous() {
        return Err(DestError::NotContiguous);
    }
    let (base, capacity) = (buffer.buf_ptr().cast::<u8>(), buffer.len_bytes());
    if len > 0 && source.overlaps(base, capacity) {
        return Err(DestError::Overlap);
    }
    if offset.checked_add(len).is_none_or(|end| end > capacity) {
        return Err(DestError::TooSmall { capacity });
    }
    // SAFETY: a writable, C-contiguous export is valid for writes of `capacity` bytes until it
    // is released, which the borrow `'a` of it prevents; `offset + len <= capacity` (checked
    // above), and the source (read through raw pointers only) does not overlap it.
    Ok(unsafe { std::slice::from_raw_parts_mut(base.add(offset), len) })
}

/// A value that did not fit the destination dtype.
#[derive(Debug, PartialEq, Eq)]
pub struct OutOfRange {
    pub value: i128,
}

/// Copy/convert `source` into `dest`. `dest.len()` must equal the converted size.
pub fn convert(
    conversion: Conversion,
    source: Source<'_>,
    dest: &mut [u8],
) -> Result<(), OutOfRange> {
    let (src_unit, dst_unit) = conversion.unit();
    let count = source.len / src_unit;
    assert_eq!(
        source.len % src_unit,
        0,
        "source is not a whole number of elements"
    );
    assert_eq!(
        dest.len(),
        count * dst_unit,
        "destination size does not match the conversion"
    );
    if count == 0 {
        return Ok(());
    }
    let src = source.ptr;
    let dst = dest.as_mut_ptr();
    // SAFETY: in every arm, `src` is valid for `count * src_unit` bytes (the `Source`
    // invariant, checked above) and `dst` for `count * dst_unit` bytes (a live exclusive slice
    // of exactly that length). Sources are read unaligned; destinations are written unaligned
    // too, which costs nothing on the platforms we build for. The regions cannot overlap: the
    // source is never turned into a reference, and `dest` is exclusively borrowed.
    unsafe {
        match conversion {
            Conversion::Copy => ptr::copy_nonoverlapping(src, dst, count),
            Conversion::F64ToF32 | Conversion::C128ToC64 => {
                let (s, d) = (src.cast::<f64>(), dst.cast::<f32>());
                for i in 0..count {
                    d.add(i).write_unaligned(s.add(i).read_unaligned() as f32);
                }
            }
            Conversion::I64ToI32 => {
                let (s, d) = (src.cast::<i64>(), dst.cast::<i32>());
                let mut overflow = false;
                for i in 0..count {
                    let v = s.add(i).read_unaligned();
                    overflow |= v != i64::from(v as i32);
                    d.add(i).write_unaligned(v as i32);
                }
                if overflow {
                    let bad = (0..count)
                        .map(|i| s.add(i).read_unaligned())
                        .find(|&v| v != i64::from(v as i32))
                        .unwrap_or_default();
                    return Err(OutOfRange {
                        value: i128::from(bad),
                    });
                }
            }
            Conversion::U64ToU32 => {
                let (s, d) = (src.cast::<u64>(), dst.cast::<u32>());
                let mut overflow = false;
                for i in 0..count {
                    let v = s.add(i).read_unaligned();
                    overflow |= v > u64::from(u32::MAX);
                    d.add(i).write_unaligned(v as u32);
                }
                if overflow {
                    let bad = (0..count)
                        .map(|i| s.add(i).read_unaligned())
                        .find(|&v| v > u64::from(u32::MAX))
                        .unwrap_or_default();
                    return Err(OutOfRange {
                        value: i128::from(bad),
                    });
                }
            }
        }
    }
    Ok(())
}

/// One leaf's copy: where it comes from, where it goes, and how.
pub struct Task<'a> {
    pub leaf: usize,
    pub conversion: Conversion,
    pub source: Source<'a>,
    pub dest: &'a mut [u8],
}

/// Below this many destination bytes a batch is copied on the calling thread: spawning helpers
/// costs tens of microseconds, a 4 MiB memcpy a few hundred.
pub const PARALLEL_THRESHOLD: usize = 4 << 20;
/// Pieces handed to helper threads are at most this big, and split on element boundaries.
const PIECE: usize = 1 << 20;

/// Run every task, on up to `threads` threads for large batches. Returns the first leaf
/// (by index) whose values did not fit, with the value.
pub fn run(tasks: Vec<Task<'_>>, threads: usize) -> Result<(), (usize, OutOfRange)> {
    let total: usize = tasks.iter().map(|t| t.dest.len()).sum();
    let threads = threads.max(1);
    if threads == 1 || total < PARALLEL_THRESHOLD {
        for task in tasks {
            convert(task.conversion, task.source, task.dest).map_err(|e| (task.leaf, e))?;
        }
        return Ok(());
    }
    // Split into element-aligned pieces, then deal them out in contiguous runs of roughly
    // equal size, one run per thread (contiguous runs keep the hardware prefetchers useful).
    let mut pieces: Vec<Task<'_>> = Vec::new();
    for task in tasks {
        let (src_unit, dst_unit) = task.conversion.unit();
        let mut source_at = 0;
        let mut rest = task.dest;
        while !rest.is_empty() {
            let take = PIECE.min(rest.len()) / dst_unit * dst_unit;
            let take = if take == 0 { rest.len() } else { take };
            let (head, tail) = rest.split_at_mut(take);
            let source_len = take / dst_unit * src_unit;
            pieces.push(Task {
                leaf: task.leaf,
                conversion: task.conversion,
                source: task.source.slice(source_at, source_len),
                dest: head,
            });
            source_at += source_len;
            rest = tail;
        }
    }
    let share = total.div_ceil(threads);
    let mut runs: Vec<Vec<Task<'_>>> = vec![Vec::new()];
    let mut filled = 0;
    for piece in pieces {
        if filled >= share && runs.len() < threads {
            runs.push(Vec::new());
            filled = 0;
        }
        filled += piece.dest.len();
        runs.last_mut().expect("runs starts non-empty").push(piece);
    }
    let work = |run: Vec<Task<'_>>| -> Result<(), (usize, OutOfRange)> {
        for task in run {
            convert(task.conversion, task.source, task.dest).map_err(|e| (task.leaf, e))?;
        }
        Ok(())
    };
    let mut runs = runs.into_iter();
    let first = runs.next().unwrap_or_default();
    let results: Vec<Result<(), (usize, OutOfRange)>> = std::thread::scope(|scope| {
        let helpers: Vec<_> = runs.map(|run| scope.spawn(move || work(run))).collect();
        let mut results = vec![work(first)];
        results.extend(
            helpers
                .into_iter()
                .map(|h| h.join().expect("copy kernels do not panic")),
        );
        results
    });
    results
        .into_iter()
        .filter_map(Result::err)
        .min_by_key(|(leaf, _)| *leaf)
        .map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source_of<T>(values: &[T]) -> Source<'_> {
        Source {
            ptr: values.as_ptr().cast(),
            len: std::mem::size_of_val(values),
            _export: PhantomData,
        }
    }

    #[test]
    fn copies_bytes_exactly() {
        let data: Vec<u8> = (0..=255).collect();
        let mut out = vec![0u8; 256];
        convert(Conversion::Copy, source_of(&data), &mut out).unwrap();
        assert_eq!(out, data);
    }

    #[test]
    fn narrows_floats_like_numpy() {
        let data = [1.5f64, -0.1, 1e40, f64::NAN];
        let mut out = vec![0u8; 16];
        convert(Conversion::F64ToF32, source_of(&data), &mut out).unwrap();
        let got: Vec<f32> = out
            .chunks(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(got[0], 1.5);
        assert_eq!(got[1], -0.1f64 as f32);
        assert!(got[2].is_infinite());
        assert!(got[3].is_nan());
    }

    #[test]
    fn integer_narrowing_refuses_to_wrap() {
        let ok = [i64::from(i32::MIN), 0, i64::from(i32::MAX)];
        let mut out = vec![0u8; 12];
        convert(Conversion::I64ToI32, source_of(&ok), &mut out).unwrap();
        let bad = [1i64, 1 << 40, -(1 << 41)];
        assert_eq!(
            convert(Conversion::I64ToI32, source_of(&bad), &mut out),
            Err(OutOfRange { value: 1 << 40 })
        );
        let big = [u64::from(u32::MAX) + 1];
        let mut out = vec![0u8; 4];
        assert!(convert(Conversion::U64ToU32, source_of(&big), &mut out).is_err());
    }

    #[test]
    fn parallel_run_matches_serial_and_reports_the_first_bad_leaf() {
        let a: Vec<u8> = (0..(9 << 20)).map(|i| (i % 251) as u8).collect();
        let b: Vec<f64> = (0..(1 << 19)).map(|i| i as f64 * 0.5).collect();
        let mut out_a = vec![0u8; a.len()];
        let mut out_b = vec![0u8; b.len() * 4];
        let tasks = vec![
            Task {
                leaf: 0,
                conversion: Conversion::Copy,
                source: source_of(&a),
                dest: &mut out_a,
            },
            Task {
                leaf: 1,
                conversion: Conversion::F64ToF32,
                source: source_of(&b),
                dest: &mut out_b,
            },
        ];
        run(tasks, 3).unwrap();
        assert_eq!(out_a, a);
        for (i, c) in out_b.chunks(4).enumerate() {
            assert_eq!(f32::from_le_bytes(c.try_into().unwrap()), i as f32 * 0.5);
        }
        let mut c: Vec<i64> = vec![1; 1 << 20];
        c[777_777] = 1 << 33;
        let mut out_c = vec![0u8; c.len() * 4];
        let tasks = vec![
            Task {
                leaf: 0,
                conversion: Conversion::Copy,
                source: source_of(&a),
                dest: &mut out_a,
            },
            Task {
                leaf: 5,
                conversion: Conversion::I64ToI32,
                source: source_of(&c),
                dest: &mut out_c,
            },
        ];
        assert_eq!(run(tasks, 2), Err((5, OutOfRange { value: 1 << 33 })));
    }
}
