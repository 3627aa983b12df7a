//! Hints that ask the CPU to start loading memory a later step will read.
//!
//! Rapport's hot path is bound by memory latency, not arithmetic: each event
//! reads one customer's profile, which with many customers is rarely in cache.
//! The processor looks a few records ahead and prefetches their profiles, so
//! the loads overlap with the work on the records before them. A prefetch never
//! changes what a program computes, only when memory arrives; on targets
//! without a prefetch instruction these are no-ops.

/// Cache line size assumed for the hints (x86-64 and most ARM cores).
const LINE: usize = 64;

/// Prefetches at most this many lines per call, so one large value cannot
/// flood the cache with lines nobody reads.
const MAX_LINES: usize = 16;

/// Starts loading the memory of `value` (up to [`MAX_LINES`] cache lines).
#[inline]
pub fn value<T: ?Sized>(value: &T) {
    bytes(
        (value as *const T).cast::<u8>(),
        std::mem::size_of_val(value),
    );
}

/// Starts loading the elements of `items` (up to [`MAX_LINES`] cache lines).
#[inline]
pub fn slice<T>(items: &[T]) {
    if !items.is_empty() {
        bytes(items.as_ptr().cast::<u8>(), std::mem::size_of_val(items));
    }
}

#[inline]
fn bytes(start: *const u8, len: usize) {
    let lines = len.div_ceil(LINE).min(MAX_LINES);
    for i in 0..lines {
        line(start.wrapping_add(i * LINE));
    }
}

#[cfg(all(target_arch = "x86_64", target_feature = "sse"))]
#[inline]
fn line(p: *const u8) {
    // SAFETY: the build enables SSE (the cfg above), which is all the
    // intrinsic requires; a prefetch reads nothing the program sees and cannot
    // fault, whatever the address.
    unsafe { std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast::<i8>()) }
}

#[cfg(not(all(target_arch = "x86_64", target_feature = "sse")))]
#[inline]
fn line(_p: *const u8) {}
