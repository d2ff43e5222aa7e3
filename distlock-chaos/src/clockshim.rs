//! Steps a running Redis node's wall clock.
//!
//! Debian's libfaketime (0.9.10, the `faketime` package) cannot start Debian's redis-server:
//! redis-server is linked with jemalloc, which calls `clock_gettime` while libfaketime is
//! still initialising, and libfaketime gives up ("Unexpected recursive calls to
//! clock_gettime()", libfaketime issue #130, open upstream). So the harness builds a
//! 60-line `LD_PRELOAD` shim with the system C compiler (`cc`, which every Rust toolchain
//! needs for linking anyway): it adds an offset, in milliseconds, read from the file named by
//! [`ENV`] (reread at most every 20 ms with raw system calls, so it never allocates), to
//! `CLOCK_REALTIME` as `clock_gettime`, `gettimeofday` and `time` report it. Monotonic clocks
//! are left alone, as libfaketime's `FAKETIME_DONT_FAKE_MONOTONIC=1` would. Redis keeps key
//! expiries as wall-clock times, so a forward step ends every grant early; `TIME` (which
//! Redis's fencing tokens use) follows the step too.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{ChaosError, Result};

/// The environment variable naming the offset file.
pub const ENV: &str = "DISTLOCK_CHAOS_CLOCK_FILE";

const SOURCE: &str = r#"
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static long long offset_ns, next_check_ns;

static long long mono_ns(void) {
    struct timespec t;
    syscall(SYS_clock_gettime, CLOCK_MONOTONIC, &t);
    return (long long)t.tv_sec * 1000000000LL + t.tv_nsec;
}

static void refresh(void) {
    long long now = mono_ns();
    if (now < __atomic_load_n(&next_check_ns, __ATOMIC_RELAXED)) return;
    __atomic_store_n(&next_check_ns, now + 20000000LL, __ATOMIC_RELAXED);
    const char *path = getenv("DISTLOCK_CHAOS_CLOCK_FILE");
    if (!path) return;
    int fd = (int)syscall(SYS_openat, AT_FDCWD, path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return;
    char buf[32];
    long n = syscall(SYS_read, fd, buf, sizeof buf - 1);
    syscall(SYS_close, fd);
    if (n <= 0) return;
    long long v = 0;
    int neg = 0, i = 0;
    if (buf[0] == '-') { neg = 1; i = 1; } else if (buf[0] == '+') { i = 1; }
    for (; i < n && buf[i] >= '0' && buf[i] <= '9'; i++) v = v * 10 + (buf[i] - '0');
    __atomic_store_n(&offset_ns, (neg ? -v : v) * 1000000LL, __ATOMIC_RELAXED);
}

int clock_gettime(clockid_t id, struct timespec *ts) {
    long r = syscall(SYS_clock_gettime, id, ts);
    if (r == 0 && (id == CLOCK_REALTIME || id == CLOCK_REALTIME_COARSE)) {
        refresh();
        long long t = (long long)ts->tv_sec * 1000000000LL + ts->tv_nsec
            + __atomic_load_n(&offset_ns, __ATOMIC_RELAXED);
        ts->tv_sec = t / 1000000000LL;
        ts->tv_nsec = t % 1000000000LL;
    }
    return (int)r;
}

int gettimeofday(struct timeval *tv, void *tz) {
    (void)tz;
    struct timespec ts;
    int r = clock_gettime(CLOCK_REALTIME, &ts);
    if (r == 0 && tv) { tv->tv_sec = ts.tv_sec; tv->tv_usec = ts.tv_nsec / 1000; }
    return r;
}

time_t time(time_t *out) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    if (out) *out = ts.tv_sec;
    return ts.tv_sec;
}
"#;

/// Builds the shim into `dir` and returns the library's path.
///
/// # Errors
/// When there is no C compiler (`cc`) or it fails; the message says so.
pub fn build(dir: &Path) -> Result<PathBuf> {
    let src = dir.join("chaos-clock.c");
    let lib = dir.join("libchaosclock.so");
    std::fs::write(&src, SOURCE).map_err(|e| ChaosError::io("write the clock shim source", e))?;
    let out = Command::new("cc")
        .args(["-shared", "-fPIC", "-O2", "-o"])
        .arg(&lib)
        .arg(&src)
        .output()
        .map_err(|e| ChaosError::Config(format!("the clock scenarios need a C compiler (cc): {e}")))?;
    if !out.status.success() {
        return Err(ChaosError::Config(format!(
            "building the clock shim failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(lib)
}
