//! glibc malloc settings for the `gossip` process, applied before any thread starts.
//!
//! Each 512 KiB message makes three payload-sized allocations: gRPC's send slice, gRPC's
//! receive slices and the received `Bytes`. With glibc's defaults such sizes are served by a
//! fresh `mmap` (or the heap is trimmed after they are freed), so every message faults in and
//! zeroes its pages again, and each of the many threads gets its own arena. Keeping blocks up to
//! 16 MiB on the heap, trimming only past 32 MiB of free space, and two arenas took the seed
//! round from 0.081-0.086 s to 0.061-0.067 s per round and its peak RSS from 66-72 MiB to
//! 58-66 MiB (`docs/performance.md`, "Allocation"). Programs that embed the library can do the
//! same with `mallopt` or with the `GLIBC_TUNABLES` shown there.

/// Largest block served from the heap rather than its own `mmap`.
const MMAP_THRESHOLD: i32 = 16 << 20;
/// Free space at the top of the heap kept before it is returned to the system.
const TRIM_THRESHOLD: i32 = 32 << 20;
/// Arenas (glibc's default is 8 per core).
const ARENA_MAX: i32 = 2;

static APPLIED: std::sync::OnceLock<Option<&'static str>> = std::sync::OnceLock::new();

/// Applies the settings, unless `GLIBC_TUNABLES` sets malloc tunables (the operator's choice
/// wins) or this is not glibc. Call first thing in `main`.
pub(crate) fn tune() {
    let explicit = std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains("glibc.malloc."));
    let _ = APPLIED.set(if explicit { None } else { apply() });
}

/// What [`tune`] applied, for the log.
pub(crate) fn applied() -> Option<&'static str> {
    APPLIED.get().copied().flatten()
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn apply() -> Option<&'static str> {
    for (param, value) in [
        (libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD),
        (libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD),
        (libc::M_ARENA_MAX, ARENA_MAX),
    ] {
        // SAFETY: `mallopt` only changes allocator parameters; it is called from `main` before
        // any other thread exists, and an unsupported value is refused with 0, not UB.
        if unsafe { libc::mallopt(param, value) } == 0 {
            return None;
        }
    }
    Some("mmap_threshold=16MiB trim_threshold=32MiB arena_max=2")
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn apply() -> Option<&'static str> {
    None
}
