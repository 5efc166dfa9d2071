//! The guest's allocator: a bump allocator that never frees.
//!
//! The host runs every evaluation in a fresh instance that is thrown away
//! afterwards, so freeing is wasted work: allocation is a pointer bump and
//! `free` does nothing. The deployment's memory cap bounds what one
//! evaluation may use; a rule that allocates without bound is stopped with
//! `OUT_OF_MEMORY` like any other.
//!
//! Enabled on `wasm32` with the default `bump-alloc` feature; turn the
//! feature off to use Rust's default allocator instead.

use core::alloc::{GlobalAlloc, Layout};
use core::cell::UnsafeCell;

const PAGE: usize = 64 * 1024;

/// Hands out memory from the end of linear memory, growing it as needed.
pub struct Bump {
    // (next free address, end of the memory we own)
    state: UnsafeCell<(usize, usize)>,
}

// SAFETY: a rule instance is single-threaded (no wasm threads in the rule
// world).
unsafe impl Sync for Bump {}

impl Bump {
    /// An allocator with nothing reserved yet.
    pub const fn new() -> Self {
        Self {
            state: UnsafeCell::new((0, 0)),
        }
    }
}

impl Default for Bump {
    fn default() -> Self {
        Self::new()
    }
}

unsafe impl GlobalAlloc for Bump {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: single-threaded, see above.
        let state = unsafe { &mut *self.state.get() };
        let align = layout.align();
        let start = (state.0 + align - 1) & !(align - 1);
        let Some(end) = start.checked_add(layout.size()) else {
            return core::ptr::null_mut();
        };
        if state.1 == 0 {
            // First use: the free tail of the initial memory, after the
            // data and the stack (`__heap_base`), needs no growing.
            unsafe extern "C" {
                static __heap_base: u8;
            }
            let base = core::ptr::addr_of!(__heap_base) as usize;
            state.0 = base;
            state.1 = core::arch::wasm32::memory_size(0) * PAGE;
            return unsafe { self.alloc(layout) };
        }
        if end > state.1 {
            // Grow by what is needed (at least 4 pages).
            let need = layout.size() + align;
            let pages = need.div_ceil(PAGE).max(4);
            let previous = core::arch::wasm32::memory_grow(0, pages);
            if previous == usize::MAX {
                return core::ptr::null_mut();
            }
            let base = previous * PAGE;
            if state.1 != base {
                // Not contiguous with what we had.
                state.0 = base;
            }
            state.1 = base + pages * PAGE;
            return unsafe { self.alloc(layout) };
        }
        state.0 = end;
        start as *mut u8
    }

    unsafe fn dealloc(&self, _ptr: *mut u8, _layout: Layout) {}

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: single-threaded, see above.
        let state = unsafe { &mut *self.state.get() };
        // The last allocation can grow in place.
        if ptr as usize + layout.size() == state.0 && ptr as usize + new_size <= state.1 {
            state.0 = ptr as usize + new_size;
            return ptr;
        }
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        let new = unsafe { self.alloc(new_layout) };
        if !new.is_null() {
            unsafe {
                core::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
            }
        }
        new
    }
}
