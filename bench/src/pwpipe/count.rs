//! A global allocator that counts, per thread, the allocations made while
//! counting is on: the benchmark's measure of steady-state heap traffic.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

pub struct Counting;

thread_local! {
    /// (on, allocations, bytes) of this thread. Const-initialised without
    /// a destructor, so reading it never allocates.
    static COUNT: Cell<(bool, u64, u64)> = const { Cell::new((false, 0, 0)) };
}

fn note(bytes: usize) {
    let _ = COUNT.try_with(|c| {
        let (on, n, b) = c.get();
        if on {
            c.set((on, n + 1, b + bytes as u64));
        }
    });
}

// SAFETY: every call is passed on to the system allocator unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

/// Allocations and bytes this thread made while `f` ran.
pub fn counted<T>(f: impl FnOnce() -> T) -> (T, u64, u64) {
    COUNT.with(|c| c.set((true, 0, 0)));
    let out = f();
    let (_, n, b) = COUNT.with(|c| c.replace((false, 0, 0)));
    (out, n, b)
}
