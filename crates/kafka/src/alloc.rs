//! An allocator guard that processes serving the Kafka listener must install (`gearbox`
//! does, and the fuzz target): huge allocations are served as reserved-but-uncommitted memory
//! instead of failing.
//!
//! Why (KI-6, `docs/testing.md`): the `kafka-protocol` 0.18 decoder reserves
//! `Vec::with_capacity(n)` for an array count `n` read off the wire before it decodes any
//! element. A request of a hundred bytes declaring 2^31 elements asks for hundreds of GB; the
//! allocation fails and Rust aborts the process, so one unauthenticated request would take the
//! server down. With this guard the reservation succeeds as an anonymous `MAP_NORESERVE`
//! mapping: the kernel hands out address space without committing memory, the decoder runs out
//! of bytes at the first element or soon after (a frame is at most
//! [`crate::REQUEST_BYTES_MAX_DEFAULT`]), the request is refused, the connection is closed, and
//! the mapping is unmapped untouched. Requests are decoded on the runtime's worker threads, so
//! only a few such reservations exist at once.
//!
//! Nothing else in Gearbox allocates anywhere near [`HUGE_BYTES`] (every buffer has a named
//! limit far below it), so the guard changes nothing for legitimate work. It goes when the
//! codec bounds `n` by the bytes left (upstream pull requests exist).

#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Allocations at least this large are reserved lazily.
pub const HUGE_BYTES: usize = 1 << 30;
/// `mmap` returns page-aligned addresses; larger alignments go to the inner allocator.
const PAGE_BYTES: usize = 4096;

static HUGE_ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

/// Huge allocations served so far by every [`ReserveHuge`] (the fuzz target asserts on it).
#[must_use]
pub fn huge_allocations() -> u64 {
    HUGE_ALLOCATIONS.load(Relaxed)
}

/// `A`, except that allocations of [`HUGE_BYTES`] or more are lazily reserved mappings.
#[derive(Debug)]
pub struct ReserveHuge<A>(pub A);

fn is_huge(layout: Layout) -> bool {
    layout.size() >= HUGE_BYTES && layout.align() <= PAGE_BYTES
}

fn map(size: usize) -> *mut u8 {
    HUGE_ALLOCATIONS.fetch_add(1, Relaxed);
    // SAFETY: a new private anonymous mapping; no existing memory is involved. Its pages read
    // as zero and are committed only when touched.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        std::ptr::null_mut()
    } else {
        p.cast()
    }
}

// SAFETY: every pointer comes from the inner allocator or from `map`, and goes back to the
// same one, chosen by the same `is_huge` test on the layout it was allocated with.
unsafe impl<A: GlobalAlloc> GlobalAlloc for ReserveHuge<A> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if is_huge(layout) {
            return map(layout.size());
        }
        // SAFETY: forwarded as the caller gave it.
        unsafe { self.0.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if is_huge(layout) {
            // Fresh anonymous pages are zero.
            return map(layout.size());
        }
        // SAFETY: forwarded as the caller gave it.
        unsafe { self.0.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if is_huge(layout) {
            // SAFETY: `ptr` is a mapping of `layout.size()` bytes made by `map`.
            unsafe { libc::munmap(ptr.cast(), layout.size()) };
            return;
        }
        // SAFETY: `ptr` came from the inner allocator with this layout.
        unsafe { self.0.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let Ok(new) = Layout::from_size_align(new_size, layout.align()) else {
            return std::ptr::null_mut();
        };
        if !is_huge(layout) && !is_huge(new) {
            // SAFETY: both sides are the inner allocator's.
            return unsafe { self.0.realloc(ptr, layout, new_size) };
        }
        // SAFETY: a fresh allocation, the overlap copied, the old one freed by its own kind.
        unsafe {
            let out = self.alloc(new);
            if !out.is_null() {
                std::ptr::copy_nonoverlapping(ptr, out, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::alloc::System;

    #[test]
    fn a_reservation_far_beyond_memory_succeeds_and_costs_nothing_until_touched() {
        let a = ReserveHuge(System);
        // 256 GiB: more than this machine's memory and swap, so `System` alone would fail.
        let layout = Layout::from_size_align(256 << 30, 8).unwrap();
        let before = huge_allocations();
        // SAFETY: the layout is non-zero; the pointer is used within it and freed with it.
        unsafe {
            let p = a.alloc(layout);
            assert!(!p.is_null());
            p.write(7);
            p.add(layout.size() - 1).write(9);
            assert_eq!((p.read(), p.add(layout.size() - 1).read()), (7, 9));
            a.dealloc(p, layout);
        }
        assert_eq!(huge_allocations(), before + 1);
        // Ordinary sizes go to the inner allocator, and grow across the threshold intact.
        let small = Layout::from_size_align(64, 8).unwrap();
        // SAFETY: as above.
        unsafe {
            let p = a.alloc(small);
            p.write_bytes(3, 64);
            let grown = a.realloc(p, small, HUGE_BYTES);
            assert!(!grown.is_null());
            assert_eq!(grown.add(63).read(), 3);
            a.dealloc(grown, Layout::from_size_align(HUGE_BYTES, 8).unwrap());
        }
        assert_eq!(huge_allocations(), before + 2);
    }
}
