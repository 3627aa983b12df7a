//! The C allocator's settings, for the memory that librdkafka and RocksDB take
//! (Rust's own allocations go through mimalloc).
//!
//! glibc's malloc gives each thread that allocates at once an arena of its own
//! (up to eight per core) and raises its threshold for `mmap` each time a large
//! block is freed, so librdkafka's fetch buffers (hundreds of KiB, allocated on
//! its broker threads and freed on the engine's) end up inside arenas whose free
//! space is not given back to the system. Measured on `cargo bench ... -- scale`
//! with 1M customers, that held 100-140 MiB of RSS beyond what was in use.

/// Arenas for the C allocator: librdkafka and RocksDB threads share them.
const ARENAS: i32 = 2;
/// Blocks from this size up are mapped on their own and unmapped when freed.
const MMAP_THRESHOLD: i32 = 256 * 1024;

/// Bounds glibc's arenas and fixes its `mmap` threshold, so that memory the C
/// libraries free goes back to the system. A setting given in the environment
/// (`MALLOC_ARENA_MAX`, `MALLOC_MMAP_THRESHOLD_`) is left as it is. Call it at
/// start-up, before the Kafka clients and RocksDB start their threads. Returns
/// whether the allocator took the settings (always false off glibc).
pub fn tune_c_allocator() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let mut ok = true;
        if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
            // SAFETY: mallopt only sets allocator parameters; no memory is touched.
            ok &= unsafe { libc::mallopt(libc::M_ARENA_MAX, ARENAS) } == 1;
        }
        if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_none() {
            // SAFETY: as above.
            ok &= unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) } == 1;
        }
        ok
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn glibc_takes_the_settings() {
        assert!(super::tune_c_allocator());
    }
}
