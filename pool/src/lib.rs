//! A bounded, recycling pool of host memory blocks for output tensors,
//! page-locked (pinned) through the CUDA driver when one is present.
//!
//! Key type: [`HostBufferPool`], a [`BlockAllocator`] the engine writes each
//! output batch into. A block handed out becomes the Arrow values buffer of
//! the `tensor` column through [`TensorBlock::into_buffer`]; when the last
//! Arrow reference drops, the block goes back on the free list (it is not
//! freed), so steady-state streaming performs no allocation at all.
//!
//! Invariants:
//! - the bytes of all blocks ever held at once never exceed `cap_bytes`; a
//!   producer that would exceed it waits on a condition variable until a block
//!   comes back (backpressure) — a request larger than the cap fails at once;
//! - pinned blocks are allocated with `cuMemHostAlloc(PORTABLE)`, not
//!   cudarc's `alloc_pinned` (which sets `WRITECOMBINED`: uncached, very slow
//!   for the CPU to read, and the IPC encoder reads these blocks);
//! - pinned memory is only freed with the pool's CUDA context bound to the
//!   freeing thread, whatever thread that is;
//! - without `libcuda` (or with no device, or `PinnedMode::Off`) blocks are
//!   page-aligned pageable memory, and the reason is logged once and reported
//!   in [`PoolStats::mode_reason`].
//!
//! Blocks are sized from the request (the spec's output batch bytes) rounded
//! up to a size class, and a free block up to twice the request is reused, so
//! a dataset's short tail batch does not allocate.

use std::alloc::Layout;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use cudarc::driver::{result as cu, sys as cusys, CudaContext};
use serde_json::{json, Value};

use pixelfeed_engine::{BlockAllocator, TensorBlock};

/// Alignment of every block: a page, which is more than the 64 bytes Arrow
/// asks for and what the CUDA driver works in.
const BLOCK_ALIGN: usize = 4096;

/// Whether the pool should try to page-lock its blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinnedMode {
    /// Pin through the CUDA driver when `libcuda` and a device are present,
    /// else fall back to pageable memory.
    Auto,
    /// Never touch CUDA; pageable memory only.
    Off,
}

/// Pool settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolConfig {
    /// Upper bound on the bytes of all blocks held at once.
    pub cap_bytes: usize,
    /// Whether to pin blocks.
    pub pinned: PinnedMode,
    /// CUDA device whose context owns pinned blocks.
    pub cuda_device: usize,
    /// How long a request may wait at the cap for a block to come back
    /// before it fails; `None` waits as long as it takes. A server's blocks
    /// come back when clients read, so it waits; an in-process caller that
    /// holds every block itself would wait forever, so it bounds the wait.
    pub max_wait: Option<Duration>,
}

/// The default cap: 1 GiB, or a quarter of physical memory on smaller machines.
pub fn default_cap_bytes() -> usize {
    const ONE_GIB: usize = 1 << 30;
    let total = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        m.lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<usize>().ok())
            .map(|kib| kib * 1024)
    });
    total.map_or(ONE_GIB, |t| ONE_GIB.min(t / 4))
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            cap_bytes: default_cap_bytes(),
            pinned: PinnedMode::Auto,
            cuda_device: 0,
            max_wait: None,
        }
    }
}

/// What kind of memory the pool hands out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemoryMode {
    /// Page-locked through the CUDA driver of the named device.
    Pinned {
        /// The device's name, as the driver reports it.
        device: String,
    },
    /// Ordinary page-aligned heap memory.
    Pageable {
        /// Why the pool is not pinning (no libcuda, no device, disabled, ...).
        reason: String,
    },
}

/// A snapshot of the pool's counters, served by `DoAction("stats")`.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolStats {
    /// `"pinned"` or `"pageable"`.
    pub mode: &'static str,
    /// Device name when pinned, the fallback reason when pageable.
    pub mode_reason: String,
    /// Blocks currently allocated (in use + free).
    pub blocks_total: usize,
    /// Blocks currently lent out to Arrow buffers.
    pub blocks_in_use: usize,
    /// Blocks on the free list.
    pub blocks_free: usize,
    /// Bytes of all allocated blocks.
    pub bytes_total: usize,
    /// Bytes of the blocks lent out.
    pub bytes_in_use: usize,
    /// The configured cap.
    pub cap_bytes: usize,
    /// Block allocations from the system since the pool was made.
    pub allocations: u64,
    /// Blocks returned to the system to make room for another size class.
    pub releases: u64,
    /// Requests served from the free list.
    pub reuses: u64,
    /// Requests that had to wait for a block to come back (backpressure).
    pub waits: u64,
    /// Total time spent waiting, in seconds.
    pub wait_seconds: f64,
}

impl PoolStats {
    /// The stats as a JSON object.
    pub fn to_json(&self) -> Value {
        json!({
            "mode": self.mode,
            "mode_reason": self.mode_reason,
            "blocks_total": self.blocks_total,
            "blocks_in_use": self.blocks_in_use,
            "blocks_free": self.blocks_free,
            "bytes_total": self.bytes_total,
            "bytes_in_use": self.bytes_in_use,
            "cap_bytes": self.cap_bytes,
            "allocations": self.allocations,
            "releases": self.releases,
            "reuses": self.reuses,
            "waits": self.waits,
            "wait_seconds": self.wait_seconds,
        })
    }
}

/// One block of raw memory; owned by the pool's free list or by a [`Lease`].
struct RawBlock {
    ptr: NonNull<u8>,
    capacity: usize,
}

// SAFETY: a RawBlock is plain memory with a single owner at a time (free list
// or lease); moving it between threads is fine.
unsafe impl Send for RawBlock {}
// SAFETY: shared references to a RawBlock expose only its address and size.
unsafe impl Sync for RawBlock {}

/// How blocks are obtained from and returned to the system.
enum Backend {
    Pinned(Arc<CudaContext>),
    Pageable,
}

impl Backend {
    fn allocate(&self, capacity: usize) -> Result<RawBlock, String> {
        let ptr = match self {
            Backend::Pinned(ctx) => {
                ctx.bind_to_thread()
                    .map_err(|e| format!("binding CUDA context: {e}"))?;
                // SAFETY: a context is bound; the returned memory is
                // uninitialised bytes, which is fine for u8.
                let p = unsafe { cu::malloc_host(capacity, cusys::CU_MEMHOSTALLOC_PORTABLE) }
                    .map_err(|e| format!("cuMemHostAlloc({capacity}) failed: {e}"))?;
                p.cast::<u8>()
            }
            Backend::Pageable => {
                let layout = Layout::from_size_align(capacity, BLOCK_ALIGN)
                    .map_err(|e| format!("bad block layout: {e}"))?;
                // SAFETY: capacity > 0 (size classes start at 64 KiB).
                unsafe { std::alloc::alloc(layout) }
            }
        };
        let ptr = NonNull::new(ptr)
            .ok_or_else(|| format!("out of memory allocating {capacity} bytes"))?;
        Ok(RawBlock { ptr, capacity })
    }

    fn free(&self, block: RawBlock) {
        match self {
            Backend::Pinned(ctx) => {
                // Freeing pinned memory needs the owning context current on
                // this thread, which may be any thread that dropped a buffer.
                if let Err(e) = ctx.bind_to_thread() {
                    tracing::error!(
                        "cannot bind CUDA context to free a pinned block (leaking it): {e}"
                    );
                    return;
                }
                // SAFETY: the pointer came from malloc_host in `allocate`.
                if let Err(e) = unsafe { cu::free_host(block.ptr.as_ptr().cast()) } {
                    tracing::error!("cuMemFreeHost failed: {e}");
                }
            }
            Backend::Pageable => {
                // SAFETY: allocated in `allocate` with this exact layout.
                unsafe {
                    std::alloc::dealloc(
                        block.ptr.as_ptr(),
                        Layout::from_size_align_unchecked(block.capacity, BLOCK_ALIGN),
                    )
                }
            }
        }
    }
}

#[derive(Default)]
struct State {
    free: Vec<RawBlock>,
    blocks_total: usize,
    bytes_total: usize,
    blocks_in_use: usize,
    bytes_in_use: usize,
}

struct PoolInner {
    backend: Backend,
    mode: MemoryMode,
    cap_bytes: usize,
    max_wait: Option<Duration>,
    state: Mutex<State>,
    returned: Condvar,
    allocations: AtomicU64,
    releases: AtomicU64,
    reuses: AtomicU64,
    waits: AtomicU64,
    wait_nanos: AtomicU64,
}

impl PoolInner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves counters that are still
        // consistent (every mutation is a single step), so poison is ignored.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn give_back(&self, block: RawBlock) {
        let mut st = self.lock();
        st.blocks_in_use -= 1;
        st.bytes_in_use -= block.capacity;
        st.free.push(block);
        drop(st);
        self.returned.notify_all();
    }
}

impl Drop for PoolInner {
    fn drop(&mut self) {
        let st = self.state.get_mut().unwrap_or_else(|p| p.into_inner());
        for block in std::mem::take(&mut st.free) {
            self.backend.free(block);
        }
    }
}

/// The Arrow-side owner of a lent block: returns it to the pool on drop.
struct Lease {
    pool: Arc<PoolInner>,
    block: Option<RawBlock>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(block) = self.block.take() {
            self.pool.give_back(block);
        }
    }
}

// SAFETY: the lease only moves its block back into the mutex-protected pool;
// no interior state is observable half-updated across a panic.
impl std::panic::RefUnwindSafe for Lease {}

/// A bounded pool of reusable (pinned when possible) host memory blocks.
/// Cloning shares the pool.
#[derive(Clone)]
pub struct HostBufferPool {
    inner: Arc<PoolInner>,
}

impl std::fmt::Debug for HostBufferPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostBufferPool")
            .field("mode", &self.inner.mode)
            .field("cap_bytes", &self.inner.cap_bytes)
            .finish()
    }
}

/// Size class of a request: whole 64 KiB units below 4 MiB, whole MiB above,
/// so batches of the same spec land in the same class.
fn size_class(len: usize) -> usize {
    let unit = if len < (4 << 20) { 64 << 10 } else { 1 << 20 };
    len.max(1).div_ceil(unit) * unit
}

/// Probes for a usable CUDA device without ever panicking: cudarc's
/// `CudaContext::new` panics when libcuda cannot be loaded, so the library's
/// presence and the device count are checked first.
fn probe_cuda(device: usize) -> Result<Arc<CudaContext>, String> {
    // SAFETY: only tries to dlopen libcuda.
    if !unsafe { cusys::is_culib_present() } {
        return Err("no CUDA driver (libcuda) found".into());
    }
    let count = CudaContext::device_count().map_err(|e| format!("CUDA driver error: {e}"))?;
    if count <= 0 {
        return Err("CUDA driver present but no device".into());
    }
    if device >= count as usize {
        return Err(format!("CUDA device {device} requested, {count} present"));
    }
    CudaContext::new(device).map_err(|e| format!("creating CUDA context: {e}"))
}

impl HostBufferPool {
    /// Builds a pool; with [`PinnedMode::Auto`] probes for CUDA once and logs
    /// which memory it will use.
    pub fn new(config: PoolConfig) -> Self {
        let (backend, mode) = match config.pinned {
            PinnedMode::Off => (
                Backend::Pageable,
                MemoryMode::Pageable {
                    reason: "pinning disabled by configuration".into(),
                },
            ),
            PinnedMode::Auto => match probe_cuda(config.cuda_device) {
                Ok(ctx) => {
                    let device = ctx
                        .name()
                        .unwrap_or_else(|_| format!("cuda:{}", config.cuda_device));
                    (Backend::Pinned(ctx), MemoryMode::Pinned { device })
                }
                Err(reason) => (Backend::Pageable, MemoryMode::Pageable { reason }),
            },
        };
        match &mode {
            MemoryMode::Pinned { device } => {
                tracing::info!(
                    cap_bytes = config.cap_bytes,
                    "output pool: pinned host memory on {device}"
                )
            }
            MemoryMode::Pageable { reason } => tracing::info!(
                cap_bytes = config.cap_bytes,
                "output pool: pageable host memory ({reason})"
            ),
        }
        Self {
            inner: Arc::new(PoolInner {
                backend,
                mode,
                cap_bytes: config.cap_bytes,
                max_wait: config.max_wait,
                state: Mutex::new(State::default()),
                returned: Condvar::new(),
                allocations: AtomicU64::new(0),
                releases: AtomicU64::new(0),
                reuses: AtomicU64::new(0),
                waits: AtomicU64::new(0),
                wait_nanos: AtomicU64::new(0),
            }),
        }
    }

    /// Which memory the pool hands out.
    pub fn mode(&self) -> &MemoryMode {
        &self.inner.mode
    }

    /// Whether blocks are page-locked.
    pub fn is_pinned(&self) -> bool {
        matches!(self.inner.mode, MemoryMode::Pinned { .. })
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> PoolStats {
        let st = self.inner.lock();
        let (mode, mode_reason) = match &self.inner.mode {
            MemoryMode::Pinned { device } => ("pinned", device.clone()),
            MemoryMode::Pageable { reason } => ("pageable", reason.clone()),
        };
        PoolStats {
            mode,
            mode_reason,
            blocks_total: st.blocks_total,
            blocks_in_use: st.blocks_in_use,
            blocks_free: st.free.len(),
            bytes_total: st.bytes_total,
            bytes_in_use: st.bytes_in_use,
            cap_bytes: self.inner.cap_bytes,
            allocations: self.inner.allocations.load(Ordering::Relaxed),
            releases: self.inner.releases.load(Ordering::Relaxed),
            reuses: self.inner.reuses.load(Ordering::Relaxed),
            waits: self.inner.waits.load(Ordering::Relaxed),
            wait_seconds: self.inner.wait_nanos.load(Ordering::Relaxed) as f64 * 1e-9,
        }
    }

    /// Takes a block of at least `len` bytes, waiting while the pool is at its
    /// cap. Fails at once when `len` alone is over the cap.
    fn take(&self, len: usize) -> Result<RawBlock, String> {
        let inner = &self.inner;
        let class = size_class(len);
        if class > inner.cap_bytes {
            return Err(format!(
                "an output batch needs {len} bytes, more than the whole pool ({} bytes); use smaller batches or a larger pool (--pinned-pool-bytes; pool_bytes in Python)",
                inner.cap_bytes
            ));
        }
        let mut st = inner.lock();
        let mut waited: Option<Instant> = None;
        let block = loop {
            // Reuse the smallest free block that fits without wasting more
            // than half of it.
            let best = st
                .free
                .iter()
                .enumerate()
                .filter(|(_, b)| b.capacity >= len && b.capacity <= class.saturating_mul(2))
                .min_by_key(|(_, b)| b.capacity)
                .map(|(i, _)| i);
            if let Some(i) = best {
                inner.reuses.fetch_add(1, Ordering::Relaxed);
                break st.free.swap_remove(i);
            }
            // Make room by returning free blocks of other sizes.
            while st.bytes_total + class > inner.cap_bytes && !st.free.is_empty() {
                let victim = st.free.swap_remove(0);
                st.blocks_total -= 1;
                st.bytes_total -= victim.capacity;
                inner.backend.free(victim);
                inner.releases.fetch_add(1, Ordering::Relaxed);
            }
            if st.bytes_total + class <= inner.cap_bytes {
                let block = inner.backend.allocate(class)?;
                inner.allocations.fetch_add(1, Ordering::Relaxed);
                st.blocks_total += 1;
                st.bytes_total += class;
                break block;
            }
            // At the cap with every block lent out: wait for one to return.
            let since = *waited.get_or_insert_with(|| {
                inner.waits.fetch_add(1, Ordering::Relaxed);
                Instant::now()
            });
            if let Some(limit) = inner.max_wait {
                if since.elapsed() >= limit {
                    inner
                        .wait_nanos
                        .fetch_add(since.elapsed().as_nanos() as u64, Ordering::Relaxed);
                    return Err(format!(
                        "all {} bytes of the output pool are held by batches still in use, and \
                         none came back within {limit:?}; drop batches sooner or give the pool \
                         more bytes",
                        inner.cap_bytes
                    ));
                }
            }
            let slice = inner.max_wait.map_or(Duration::from_secs(1), |limit| {
                limit
                    .saturating_sub(since.elapsed())
                    .min(Duration::from_secs(1))
            });
            st = inner
                .returned
                .wait_timeout(st, slice)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        };
        if let Some(start) = waited {
            inner
                .wait_nanos
                .fetch_add(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
        }
        st.blocks_in_use += 1;
        st.bytes_in_use += block.capacity;
        Ok(block)
    }
}

impl BlockAllocator for HostBufferPool {
    fn allocate(&self, len: usize) -> Result<TensorBlock, String> {
        let block = self.take(len)?;
        let ptr = block.ptr;
        let lease = Arc::new(Lease {
            pool: Arc::clone(&self.inner),
            block: Some(block),
        });
        // SAFETY: the block is page aligned, at least `len` bytes, lent to
        // this lease alone, and stays allocated until the lease returns it.
        Ok(unsafe { TensorBlock::from_raw(ptr, len, lease) })
    }

    fn stats(&self) -> Value {
        HostBufferPool::stats(self).to_json()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(cap: usize) -> HostBufferPool {
        HostBufferPool::new(PoolConfig {
            cap_bytes: cap,
            pinned: PinnedMode::Off,
            cuda_device: 0,
            max_wait: None,
        })
    }

    #[test]
    fn blocks_are_reused_not_reallocated() {
        let p = pool(64 << 20);
        for _ in 0..100 {
            let mut a = p.allocate(1_000_000).unwrap();
            let b = p.allocate(999_000).unwrap();
            a.as_mut_slice()[0] = 7;
            let buf = a.into_buffer();
            assert_eq!(buf.len(), 1_000_000);
            assert_eq!(buf.as_ptr() as usize % 64, 0);
            drop((buf, b));
        }
        let s = p.stats();
        assert_eq!(
            s.allocations, 2,
            "two blocks live at once, so exactly two allocations"
        );
        assert_eq!(s.blocks_total, 2);
        assert_eq!(s.blocks_in_use, 0);
        assert_eq!(s.reuses, 198);
        assert_eq!(s.mode, "pageable");
    }

    #[test]
    fn a_short_tail_batch_reuses_a_bigger_block() {
        let p = pool(64 << 20);
        drop(p.allocate(8 << 20).unwrap());
        drop(p.allocate(5 << 20).unwrap());
        assert_eq!(p.stats().allocations, 1);
    }

    #[test]
    fn request_over_the_cap_fails_at_once() {
        let p = pool(1 << 20);
        let err = p.allocate(2 << 20).map(|_| ()).unwrap_err();
        assert!(err.contains("more than the whole pool"), "{err}");
    }

    #[test]
    fn producers_wait_at_the_cap_instead_of_growing() {
        let p = pool(2 << 20);
        let a = p.allocate(1 << 20).unwrap();
        let b = p.allocate(1 << 20).unwrap();
        let p2 = p.clone();
        let waiter = std::thread::spawn(move || p2.allocate(1 << 20).map(|blk| blk.len()));
        std::thread::sleep(Duration::from_millis(200));
        assert!(
            !waiter.is_finished(),
            "third block must wait: the cap is two blocks"
        );
        drop(a);
        assert_eq!(waiter.join().unwrap().unwrap(), 1 << 20);
        drop(b);
        let s = p.stats();
        assert_eq!(s.allocations, 2);
        assert!(s.bytes_total <= s.cap_bytes);
        assert_eq!(s.waits, 1);
        assert!(s.wait_seconds > 0.1);
    }

    #[test]
    fn a_bounded_wait_fails_instead_of_hanging_and_recovers() {
        let p = HostBufferPool::new(PoolConfig {
            cap_bytes: 1 << 20,
            pinned: PinnedMode::Off,
            cuda_device: 0,
            max_wait: Some(Duration::from_millis(150)),
        });
        let held = p.allocate(1 << 20).unwrap();
        let started = Instant::now();
        let err = p.allocate(1 << 20).map(|_| ()).unwrap_err();
        assert!(started.elapsed() >= Duration::from_millis(150));
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "waited too long"
        );
        assert!(err.contains("none came back within"), "{err}");
        drop(held);
        assert_eq!(p.allocate(1 << 20).unwrap().len(), 1 << 20);
        assert_eq!(p.stats().waits, 1);
    }

    #[test]
    fn other_size_classes_are_released_to_make_room() {
        let p = pool((3 << 20) + (512 << 10));
        drop(p.allocate(3 << 20).unwrap());
        drop(p.allocate(1 << 20).unwrap());
        let s = p.stats();
        assert_eq!((s.allocations, s.releases, s.blocks_total), (2, 1, 1));
    }

    #[test]
    fn blocks_return_from_other_threads() {
        let p = pool(8 << 20);
        let buf = p.allocate(1 << 20).unwrap().into_buffer();
        std::thread::spawn(move || drop(buf)).join().unwrap();
        assert_eq!(p.stats().blocks_in_use, 0);
        assert_eq!(p.stats().blocks_free, 1);
    }

    #[test]
    fn auto_mode_never_panics_without_cuda() {
        let p = HostBufferPool::new(PoolConfig::default());
        // Either pinned (a GPU machine) or pageable with a reason; both serve.
        let s = p.stats();
        assert!(!s.mode_reason.is_empty());
        let mut blk = p.allocate(4096).unwrap();
        blk.as_mut_slice().fill(1);
        assert_eq!(
            blk.into_buffer()
                .as_slice()
                .iter()
                .map(|&x| x as usize)
                .sum::<usize>(),
            4096
        );
    }
}
