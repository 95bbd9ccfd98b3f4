//! Owned buffers: what an operation holds while the executor uses its memory.
//!
//! An I/O call takes its buffer by value and gives it back with the result, as
//! `(io::Result<usize>, B)`; while the request is in flight nobody else can touch it.
//! If the future is dropped first, the runtime keeps the buffer until the completion
//! arrives (see [`crate::rt`]), so the executor never writes into freed or reused memory.
//!
//! Implemented for `Vec<u8>`, `Box<[u8]>` and [`Slice`]s of either (or of any other
//! [`IoBuf`]); [`crate::ProvidedBuf`] (a received provided buffer) is an [`IoBuf`], so
//! its bytes can be sent without a copy.

use std::ops::{Bound, RangeBounds};

/// A buffer an operation may read from while it owns it.
///
/// # Safety
///
/// `stable_ptr` must point to `bytes_total` bytes that stay valid and at the same
/// address while the value is moved around (heap memory, not the value itself), until
/// the value is dropped or mutated through `&mut`; the first `bytes_init` of them must
/// be initialised.
pub unsafe trait IoBuf: Unpin + 'static {
    /// Start of the memory.
    fn stable_ptr(&self) -> *const u8;
    /// Initialised bytes (a write sends these).
    fn bytes_init(&self) -> usize;
    /// All bytes, initialised or not (a read may fill up to this many).
    fn bytes_total(&self) -> usize;

    /// A view of `range` of this buffer that owns it (`into_inner` gives it back).
    ///
    /// Panics if the range goes beyond [`IoBuf::bytes_total`].
    ///
    /// ```
    /// use fastio::rt::IoBuf;
    /// let s = b"hello world".to_vec().slice(6..);
    /// assert_eq!((s.begin(), s.end(), s.bytes_init()), (6, 11, 5));
    /// assert_eq!(s.into_inner().len(), 11);
    /// ```
    fn slice(self, range: impl RangeBounds<usize>) -> Slice<Self>
    where
        Self: Sized,
    {
        let begin = match range.start_bound() {
            Bound::Included(&n) => n,
            Bound::Excluded(&n) => n + 1,
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(&n) => n + 1,
            Bound::Excluded(&n) => n,
            Bound::Unbounded => self.bytes_total(),
        };
        assert!(
            begin <= end && end <= self.bytes_total(),
            "slice {begin}..{end} out of a buffer of {}",
            self.bytes_total()
        );
        Slice {
            buf: self,
            begin,
            end,
        }
    }
}

/// A buffer an operation may write into while it owns it.
///
/// # Safety
///
/// As [`IoBuf`], and `stable_mut_ptr` must be the same memory as `stable_ptr`, writable
/// for `bytes_total` bytes.
pub unsafe trait IoBufMut: IoBuf {
    /// Start of the memory, for writing.
    fn stable_mut_ptr(&mut self) -> *mut u8;

    /// Records that the first `pos` bytes are initialised (after a read filled them).
    ///
    /// # Safety
    ///
    /// The first `pos` bytes (at most `bytes_total`) must really be initialised.
    unsafe fn set_init(&mut self, pos: usize);
}

// SAFETY: a Vec's heap block does not move when the Vec is moved; `len` bytes of it are
// initialised, `capacity` allocated.
unsafe impl IoBuf for Vec<u8> {
    fn stable_ptr(&self) -> *const u8 {
        self.as_ptr()
    }
    fn bytes_init(&self) -> usize {
        self.len()
    }
    fn bytes_total(&self) -> usize {
        self.capacity()
    }
}

// SAFETY: as above; `as_mut_ptr` is the same block.
unsafe impl IoBufMut for Vec<u8> {
    fn stable_mut_ptr(&mut self) -> *mut u8 {
        self.as_mut_ptr()
    }
    unsafe fn set_init(&mut self, pos: usize) {
        if self.len() < pos {
            // SAFETY: the caller guarantees the first `pos` bytes are initialised, and
            // `pos <= capacity` (bytes_total).
            unsafe { self.set_len(pos) };
        }
    }
}

/// `IoBuf` for a type that dereferences to a byte slice, all of it initialised.
macro_rules! whole_slice_io_buf {
    ($t:ty) => {
        unsafe impl IoBuf for $t {
            fn stable_ptr(&self) -> *const u8 {
                self.as_ptr()
            }
            fn bytes_init(&self) -> usize {
                self.len()
            }
            fn bytes_total(&self) -> usize {
                self.len()
            }
        }
    };
}

// SAFETY: a boxed slice's heap block does not move with the box; all of it is
// initialised.
whole_slice_io_buf!(Box<[u8]>);

// SAFETY: the bytes of a provided buffer live in its group's heap block, which the
// `ProvidedBuf` keeps alive (an `Arc`) and does not move; the executor does not write
// into a buffer until it is given back, when the `ProvidedBuf` is dropped. Every byte
// of `len` was received, so initialised. Read-only: no `IoBufMut`.
whole_slice_io_buf!(crate::proactor::ProvidedBuf);

// SAFETY: as for `Box<[u8]>` above.
unsafe impl IoBufMut for Box<[u8]> {
    fn stable_mut_ptr(&mut self) -> *mut u8 {
        self.as_mut_ptr()
    }
    unsafe fn set_init(&mut self, _pos: usize) {}
}

/// A range of an owned buffer, itself an owned buffer: `buf.slice(4..)` writes from byte
/// 4, and a read into it fills from byte 4.
#[derive(Debug)]
pub struct Slice<T> {
    buf: T,
    begin: usize,
    end: usize,
}

impl<T> Slice<T> {
    /// Offset of the view in the buffer.
    pub fn begin(&self) -> usize {
        self.begin
    }
    /// End of the view in the buffer.
    pub fn end(&self) -> usize {
        self.end
    }
    /// The buffer.
    pub fn get_ref(&self) -> &T {
        &self.buf
    }
    /// The whole buffer back.
    pub fn into_inner(self) -> T {
        self.buf
    }
}

// SAFETY: a sub-range of `T`'s stable memory; initialised bytes are those of `T` that
// fall into the range.
unsafe impl<T: IoBuf> IoBuf for Slice<T> {
    fn stable_ptr(&self) -> *const u8 {
        // `begin <= bytes_total` (checked by `slice`): in bounds or one past the end.
        self.buf.stable_ptr().wrapping_add(self.begin)
    }
    fn bytes_init(&self) -> usize {
        self.buf
            .bytes_init()
            .min(self.end)
            .saturating_sub(self.begin)
    }
    fn bytes_total(&self) -> usize {
        self.end - self.begin
    }
}

// SAFETY: as above.
unsafe impl<T: IoBufMut> IoBufMut for Slice<T> {
    fn stable_mut_ptr(&mut self) -> *mut u8 {
        self.buf.stable_mut_ptr().wrapping_add(self.begin)
    }
    unsafe fn set_init(&mut self, pos: usize) {
        // SAFETY: forwarded: bytes begin..begin+pos of the buffer are initialised, and
        // so (the slice reads and writes only after its own begin) are those before
        // `begin` that the buffer already counted.
        unsafe { self.buf.set_init(self.begin + pos) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vec_box_and_slices_report_their_ranges() {
        let mut v = Vec::with_capacity(16);
        v.extend_from_slice(b"abcd");
        assert_eq!((v.bytes_init(), v.bytes_total()), (4, v.capacity()));
        let s = v.slice(2..8);
        assert_eq!((s.bytes_init(), s.bytes_total()), (2, 6));
        let mut s = s;
        // SAFETY: pretend a read filled 4 bytes at the slice's start.
        unsafe {
            s.stable_mut_ptr().copy_from(b"WXYZ".as_ptr(), 4);
            s.set_init(4);
        }
        assert_eq!(s.into_inner(), b"abWXYZ");
        let b: Box<[u8]> = vec![1, 2, 3].into_boxed_slice();
        let s = b.slice(1..);
        assert_eq!((s.bytes_init(), s.bytes_total()), (2, 2));
        assert_eq!(s.stable_ptr(), s.get_ref().as_ptr().wrapping_add(1));
    }

    #[test]
    #[should_panic(expected = "out of a buffer")]
    fn a_slice_beyond_the_buffer_panics() {
        let _ = vec![0u8; 4].into_boxed_slice().slice(2..5);
    }
}
