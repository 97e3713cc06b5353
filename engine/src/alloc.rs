//! Where output tensor bytes live.
//!
//! The engine asks a [`BlockAllocator`] for one [`TensorBlock`] per output
//! batch, writes every row's tensor straight into it, then turns it into the
//! Arrow values buffer of the `tensor` column without copying
//! ([`TensorBlock::into_buffer`]). The default [`HeapAllocator`] uses
//! 64-byte-aligned heap memory; the pinned host pool plugs in here too.

use std::ptr::NonNull;
use std::sync::Arc;

use arrow_buffer::{alloc::Allocation, Buffer, MutableBuffer};

/// A writable, 64-byte-aligned region that becomes an Arrow [`Buffer`].
pub struct TensorBlock {
    ptr: NonNull<u8>,
    len: usize,
    owner: Arc<dyn Allocation>,
}

// SAFETY: a TensorBlock is the unique writer of its region until it is
// turned into a Buffer; the owner is Send + Sync by the Allocation bound.
unsafe impl Send for TensorBlock {}

impl TensorBlock {
    /// Wraps `len` bytes at `ptr` kept alive by `owner`.
    ///
    /// # Safety
    /// `ptr` must be valid for reads and writes of `len` bytes, 64-byte
    /// aligned, not aliased by anyone else, and stay valid until `owner` is
    /// dropped.
    pub unsafe fn from_raw(ptr: NonNull<u8>, len: usize, owner: Arc<dyn Allocation>) -> Self {
        Self { ptr, len, owner }
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the block holds zero bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The block's bytes, for writing.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: from_raw's contract: valid, unaliased, `len` bytes.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }

    /// Hands the bytes to Arrow with no copy; the owner is released when the
    /// last Arrow reference is dropped.
    pub fn into_buffer(self) -> Buffer {
        // SAFETY: from_raw's contract guarantees validity for `len` bytes
        // while `owner` lives, and Buffer keeps `owner` alive.
        unsafe { Buffer::from_custom_allocation(self.ptr, self.len, self.owner) }
    }
}

/// Source of output blocks. Implementations may block (backpressure) until
/// a block is free; the engine calls this from a worker thread, never from
/// an async task.
pub trait BlockAllocator: Send + Sync {
    /// A block of exactly `len` bytes. Contents are unspecified (the engine
    /// overwrites every byte, zeroing failed rows itself).
    fn allocate(&self, len: usize) -> Result<TensorBlock, String>;

    /// Counters describing the allocator, served by `DoAction("stats")`.
    fn stats(&self) -> serde_json::Value {
        serde_json::json!({"mode": "heap"})
    }
}

/// Plain 64-byte-aligned heap memory, one allocation per batch.
#[derive(Debug, Default, Clone, Copy)]
pub struct HeapAllocator;

struct HeapOwner(#[allow(dead_code)] MutableBuffer);

impl BlockAllocator for HeapAllocator {
    fn allocate(&self, len: usize) -> Result<TensorBlock, String> {
        let mut buf = MutableBuffer::from_len_zeroed(len);
        let ptr = NonNull::new(buf.as_mut_ptr()).ok_or("null allocation")?;
        // SAFETY: MutableBuffer memory is 64-byte aligned, `len` bytes long,
        // and its heap pointer is stable when the MutableBuffer is moved into
        // the owner; nobody else references it.
        Ok(unsafe { TensorBlock::from_raw(ptr, len, Arc::new(HeapOwner(buf))) })
    }
}
