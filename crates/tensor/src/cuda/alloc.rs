//! The caching allocator: device memory is taken from the runtime in rounded blocks and kept
//! for reuse when a tensor is dropped, so steady-state training and decoding allocate nothing
//! from the driver (cudaMalloc synchronises the device and costs tens of microseconds).
//!
//! All work on a device goes through one stream, so a block freed by one op and handed to
//! the next is safe without events: the stream orders the old reader before the new writer.
//! When the runtime is out of memory, every cached block is returned and the request retried.

use std::collections::BTreeMap;

use crate::Result;
use crate::cuda::runtime::Runtime;

/// Requests up to this size are rounded to `SMALL_ROUND` bytes and reused only at an exact
/// size; larger ones are rounded to `LARGE_ROUND` and may reuse a block up to a quarter
/// larger.
const SMALL_LIMIT: usize = 1 << 20;
const SMALL_ROUND: usize = 512;
const LARGE_ROUND: usize = 2 << 20;

/// Bytes in use and cached on one device.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryStats {
    /// Held by live tensors.
    pub allocated: usize,
    /// The most `allocated` has been.
    pub peak_allocated: usize,
    /// Freed by tensors and kept for reuse.
    pub cached: usize,
    /// Blocks taken from the runtime so far (each one a cudaMalloc).
    pub runtime_allocations: usize,
}

#[derive(Default)]
pub(crate) struct Pool {
    free: BTreeMap<usize, Vec<u64>>,
    stats: MemoryStats,
}

pub(crate) fn rounded(bytes: usize) -> usize {
    if bytes <= SMALL_LIMIT {
        bytes.div_ceil(SMALL_ROUND).max(1) * SMALL_ROUND
    } else {
        bytes.div_ceil(LARGE_ROUND) * LARGE_ROUND
    }
}

impl Pool {
    /// A block of at least `bytes`: `(pointer, block size)`.
    pub fn alloc(&mut self, rt: &dyn Runtime, bytes: usize) -> Result<(u64, usize)> {
        let size = rounded(bytes);
        let (ptr, size) = match self.take(size) {
            Some((ptr, size)) => {
                rt.reused(ptr, size);
                (ptr, size)
            }
            None => {
                let ptr = match rt.malloc(size) {
                    Ok(p) => p,
                    Err(_) => {
                        self.release_cached(rt);
                        rt.malloc(size)?
                    }
                };
                self.stats.runtime_allocations += 1;
                (ptr, size)
            }
        };
        self.stats.allocated += size;
        self.stats.peak_allocated = self.stats.peak_allocated.max(self.stats.allocated);
        Ok((ptr, size))
    }

    fn take(&mut self, size: usize) -> Option<(u64, usize)> {
        let limit = if size <= SMALL_LIMIT { size } else { size + size / 4 };
        let (&found, _) = self.free.range(size..=limit).find(|(_, v)| !v.is_empty())?;
        let list = self.free.get_mut(&found)?;
        let ptr = list.pop()?;
        if list.is_empty() {
            self.free.remove(&found);
        }
        self.stats.cached -= found;
        Some((ptr, found))
    }

    /// Returns a block to the cache.
    pub fn release(&mut self, ptr: u64, size: usize) {
        self.stats.allocated -= size;
        self.stats.cached += size;
        self.free.entry(size).or_default().push(ptr);
    }

    /// Hands every cached block back to the runtime.
    pub fn release_cached(&mut self, rt: &dyn Runtime) {
        for (_, ptrs) in std::mem::take(&mut self.free) {
            for p in ptrs {
                rt.free(p);
            }
        }
        self.stats.cached = 0;
    }

    pub fn stats(&self) -> MemoryStats {
        self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding() {
        assert_eq!(rounded(1), 512);
        assert_eq!(rounded(512), 512);
        assert_eq!(rounded(513), 1024);
        assert_eq!(rounded(SMALL_LIMIT), SMALL_LIMIT);
        assert_eq!(rounded(SMALL_LIMIT + 1), LARGE_ROUND);
        assert_eq!(rounded(5 << 20), 6 << 20);
    }
}
