//! glibc allocator settings of the agent process (decision 0006), in the library so that the
//! binary and the benchmarks run with the same allocator.
//!
//! - **One arena** (`M_ARENA_MAX = 1`): glibc gives threads their own arenas (up to 8 per core)
//!   and memory freed in one is not reused by another, so the agent's handful of threads (tokio
//!   workers, the blocking pool, the group committer) each kept a few MB: 27-29 MB RSS for 200
//!   devices at 1 Hz against 21-22 MB with one arena.
//! - **Trim above 8 MiB, grow by 1 MiB** (`M_TRIM_THRESHOLD`, `M_TOP_PAD`): glibc's default
//!   hands freed memory at the top of the heap back to the kernel as soon as 128 KiB are free,
//!   so a pipeline batch that frees a few MB (its measurements, Observation texts and ids) gave
//!   the pages back and the next batch faulted them in again: the mapping bench's full pipeline
//!   ran 1.4-1.5x slower from that alone (`docs/BENCHMARKS.md`, "Mapping engine"). At most
//!   8 MiB of free heap stays mapped after a burst.
//!
//! Each setting is left alone when its glibc environment variable is set (`MALLOC_ARENA_MAX`,
//! `MALLOC_TRIM_THRESHOLD_`, `MALLOC_TOP_PAD_`), so an operator can still override it. Other
//! C libraries (musl) have none of these knobs: the function does nothing there.

/// Bytes of free memory at the top of the heap that glibc keeps instead of returning them.
pub const TRIM_THRESHOLD_BYTES: i32 = 8 * 1024 * 1024;
/// Extra bytes glibc asks the kernel for whenever the heap grows.
pub const TOP_PAD_BYTES: i32 = 1024 * 1024;

/// Applies the settings above. Call it first thing in `main`, before any other thread exists.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn tune_allocator() {
    let unset = |var: &str| std::env::var_os(var).is_none();
    for (var, param, value) in [
        ("MALLOC_ARENA_MAX", libc::M_ARENA_MAX, 1),
        (
            "MALLOC_TRIM_THRESHOLD_",
            libc::M_TRIM_THRESHOLD,
            TRIM_THRESHOLD_BYTES,
        ),
        ("MALLOC_TOP_PAD_", libc::M_TOP_PAD, TOP_PAD_BYTES),
    ] {
        if unset(var) {
            // SAFETY: mallopt only sets a tunable of glibc's allocator and takes no pointers;
            // callers run it before other threads exist (documented above).
            unsafe {
                libc::mallopt(param, value);
            }
        }
    }
}

/// Does nothing: not glibc.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn tune_allocator() {}
