//! Memory for key material that is locked in RAM (`mlock`: never written to swap) and
//! left out of core dumps (`MADV_DONTDUMP`), where the operating system allows it, and
//! zeroed when freed. Each value gets pages of its own, so that the advice applies to it
//! alone. When the lock is refused (RLIMIT_MEMLOCK), the value still works, in ordinary
//! memory, and `locked()` says so.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};

const PAGE: usize = 4096;

/// Whether the last attempt to lock key memory failed (for status views).
static LOCK_REFUSED: AtomicBool = AtomicBool::new(false);

pub fn lock_refused() -> bool {
    LOCK_REFUSED.load(Ordering::Relaxed)
}

/// Locks `len` bytes at `ptr` (page-aligned) in RAM and excludes them from core dumps.
/// Returns whether the lock held.
///
/// # Safety
/// `ptr..ptr+len` must be a page-aligned mapping of this process.
pub unsafe fn protect_region(ptr: *mut u8, len: usize) -> bool {
    #[cfg(target_os = "linux")]
    libc::madvise(ptr.cast(), len, libc::MADV_DONTDUMP);
    let locked = libc::mlock(ptr.cast(), len) == 0;
    if !locked {
        LOCK_REFUSED.store(true, Ordering::Relaxed);
    }
    locked
}

/// A `T` in locked, undumpable pages of its own.
pub struct Locked<T> {
    ptr: NonNull<T>,
    layout: Layout,
    locked: bool,
}

// SAFETY: Locked<T> owns its T like a Box does.
unsafe impl<T: Send> Send for Locked<T> {}
// SAFETY: shared access only hands out &T.
unsafe impl<T: Sync> Sync for Locked<T> {}

impl<T> Locked<T> {
    pub fn new(value: T) -> Self {
        let size = std::mem::size_of::<T>().max(1).div_ceil(PAGE) * PAGE;
        let layout = Layout::from_size_align(size, PAGE.max(std::mem::align_of::<T>()))
            .expect("page-sized layouts are valid");
        // SAFETY: the layout has a non-zero size; the allocation is checked for null and
        // written before any read.
        unsafe {
            let raw = alloc_zeroed(layout);
            let Some(ptr) = NonNull::new(raw.cast::<T>()) else {
                std::alloc::handle_alloc_error(layout);
            };
            let locked = protect_region(raw, size);
            ptr.as_ptr().write(value);
            Locked {
                ptr,
                layout,
                locked,
            }
        }
    }

    pub fn locked(&self) -> bool {
        self.locked
    }
}

impl<T> std::ops::Deref for Locked<T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: ptr holds an initialized T for the life of self.
        unsafe { self.ptr.as_ref() }
    }
}

impl<T> Drop for Locked<T> {
    fn drop(&mut self) {
        // SAFETY: the T is dropped once (its own Drop zeroizes what it holds), then the
        // pages are zeroed, unlocked and freed with the layout they were allocated with.
        unsafe {
            std::ptr::drop_in_place(self.ptr.as_ptr());
            let raw = self.ptr.as_ptr().cast::<u8>();
            for i in 0..self.layout.size() {
                std::ptr::write_volatile(raw.add(i), 0);
            }
            if self.locked {
                libc::munlock(raw.cast(), self.layout.size());
            }
            dealloc(raw, self.layout);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_and_frees_a_value_on_pages_of_its_own() {
        let a = Locked::new([7u8; 32]);
        let b = Locked::new(String::from("x"));
        assert_eq!(a[0], 7);
        assert_eq!(b.as_str(), "x");
        let pa = (&*a as *const [u8; 32]) as usize;
        assert_eq!(pa % PAGE, 0, "page-aligned");
        drop(a);
        drop(b);
    }
}
