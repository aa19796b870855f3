//! Linux: POSIX shared memory in /dev/shm, futexes, /proc for process liveness.

use std::cell::Cell;
use std::fs;
use std::io;
use std::os::fd::OwnedFd;
use std::sync::Once;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use rustix::fs::{FallocateFlags, Mode};
use rustix::shm;
use rustix::thread::futex;

/// Where the kernel shows POSIX shared-memory objects.
pub(crate) const SHM_DIR: &str = "/dev/shm";

/// The longest file name the kernel accepts in /dev/shm.
pub(crate) const MAX_OBJECT_NAME: usize = 255;

fn shm_path(object: &str) -> String {
    format!("/{object}")
}

/// Creates `object` exclusively, readable and writable by its owner only, with `len` bytes
/// reserved. A full /dev/shm fails here with `ENOSPC` instead of a SIGBUS on first touch.
pub(crate) fn create_object(object: &str, len: u64) -> io::Result<OwnedFd> {
    let fd = shm::open(
        shm_path(object).as_str(),
        shm::OFlags::CREATE | shm::OFlags::EXCL | shm::OFlags::RDWR,
        Mode::RUSR | Mode::WUSR,
    )?;
    if let Err(err) = rustix::fs::fallocate(&fd, FallocateFlags::empty(), 0, len) {
        let _ = shm::unlink(shm_path(object).as_str());
        return Err(err.into());
    }
    Ok(fd)
}

/// Opens an existing object for reading and, when `writable`, writing.
pub(crate) fn open_object(object: &str, writable: bool) -> io::Result<OwnedFd> {
    let flags = if writable {
        shm::OFlags::RDWR
    } else {
        shm::OFlags::RDONLY
    };
    Ok(shm::open(shm_path(object).as_str(), flags, Mode::empty())?)
}

/// The size of an open object in bytes.
pub(crate) fn object_len(fd: &OwnedFd) -> io::Result<u64> {
    let stat = rustix::fs::fstat(fd)?;
    u64::try_from(stat.st_size).map_err(|_| io::Error::other("negative object size"))
}

/// Removes the name of an object; mappings that exist stay valid.
pub(crate) fn unlink_object(object: &str) -> io::Result<()> {
    Ok(shm::unlink(shm_path(object).as_str())?)
}

/// The names of every object in /dev/shm whose name starts with `prefix`.
pub(crate) fn list_objects(prefix: &str) -> io::Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in fs::read_dir(SHM_DIR)? {
        let entry = entry?;
        if let Some(name) = entry.file_name().to_str()
            && name.starts_with(prefix)
        {
            names.push(name.to_owned());
        }
    }
    names.sort();
    Ok(names)
}

/// Sleeps while `word` holds `expected`, at most `timeout`. Spurious wake-ups are possible;
/// callers re-check their condition. The futex is shared (not `FUTEX_PRIVATE`) so that
/// processes mapping the same page wake each other.
pub(crate) fn futex_wait(word: &AtomicU32, expected: u32, timeout: Duration) {
    let timeout = rustix::time::Timespec {
        tv_sec: i64::try_from(timeout.as_secs()).unwrap_or(i64::MAX),
        tv_nsec: i64::from(timeout.subsec_nanos()),
    };
    // EAGAIN (value changed), ETIMEDOUT and EINTR all mean "look again".
    let _ = futex::wait(word, futex::Flags::empty(), expected, Some(&timeout));
}

/// Wakes up to `count` waiters sleeping on `word`, in any process.
pub(crate) fn futex_wake(word: &AtomicU32, count: u32) {
    let _ = futex::wake(word, futex::Flags::empty(), count);
}

/// Bumped in every child right after `fork`, so per-thread caches of identity refresh.
static FORK_GENERATION: AtomicU64 = AtomicU64::new(0);
static ATFORK: Once = Once::new();

extern "C" fn after_fork_in_child() {
    FORK_GENERATION.fetch_add(1, Ordering::Relaxed);
}

/// Identity of a thread, cached per thread: ids change only across `fork`.
#[derive(Clone, Copy)]
struct ThreadIdentity {
    /// The [`FORK_GENERATION`] the entry was read in.
    generation: u64,
    tid: u32,
    pid: u32,
    /// Start time in clock ticks since boot, read lazily (0 until first asked).
    start_time: u64,
}

thread_local! {
    static THIS_THREAD: Cell<ThreadIdentity> =
        const { Cell::new(ThreadIdentity { generation: u64::MAX, tid: 0, pid: 0, start_time: 0 }) };
}

fn this_thread() -> ThreadIdentity {
    ATFORK.call_once(|| {
        // SAFETY: `after_fork_in_child` only performs an atomic increment, which is
        // async-signal-safe, as a handler running in a freshly forked child must be.
        unsafe {
            libc::pthread_atfork(None, None, Some(after_fork_in_child));
        }
    });
    let generation = FORK_GENERATION.load(Ordering::Relaxed);
    THIS_THREAD.with(|cached| {
        let identity = cached.get();
        if identity.generation == generation {
            return identity;
        }
        let tid = rustix::thread::gettid()
            .as_raw_nonzero()
            .get()
            .unsigned_abs();
        let pid = rustix::process::getpid()
            .as_raw_nonzero()
            .get()
            .unsigned_abs();
        let identity = ThreadIdentity {
            generation,
            tid,
            pid,
            start_time: 0,
        };
        cached.set(identity);
        identity
    })
}

/// The calling thread's kernel thread id, cached per thread and refreshed after `fork`.
pub(crate) fn current_tid() -> u32 {
    this_thread().tid
}

/// The start time of the calling thread (clock ticks since boot), cached per thread.
pub(crate) fn current_thread_start_time() -> u64 {
    let identity = this_thread();
    if identity.start_time != 0 {
        return identity.start_time;
    }
    let start_time = match task(identity.tid) {
        Task::Alive { start_time } => start_time,
        Task::Dead => 0,
    };
    THIS_THREAD.with(|cached| {
        cached.set(ThreadIdentity {
            start_time,
            ..identity
        })
    });
    start_time
}

/// The calling process's id, cached per thread and refreshed after `fork`.
pub(crate) fn current_pid() -> u32 {
    this_thread().pid
}

/// What /proc says about a task (a process or a thread).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Task {
    /// Running (or sleeping) and started at this time, in clock ticks since boot.
    Alive { start_time: u64 },
    /// Gone, or a zombie that can never run again.
    Dead,
}

/// Looks a task id up in /proc. Thread ids work as well as process ids.
pub(crate) fn task(id: u32) -> Task {
    let Ok(stat) = fs::read_to_string(format!("/proc/{id}/stat")) else {
        return Task::Dead;
    };
    // The command name may hold spaces and parentheses: the fields start after the last ')'.
    let Some(rest) = stat.rfind(')').map(|at| &stat[at + 1..]) else {
        return Task::Dead;
    };
    let mut fields = rest.split_ascii_whitespace();
    let state = fields.next().unwrap_or("X");
    if state == "Z" || state == "X" || state == "x" {
        return Task::Dead;
    }
    // Field 22 of stat is the start time; the state was field 3.
    match fields.nth(18).and_then(|start| start.parse().ok()) {
        Some(start_time) => Task::Alive { start_time },
        None => Task::Dead,
    }
}

/// The start time of the calling process, cached and refreshed after `fork`.
pub(crate) fn current_process_start_time() -> u64 {
    static CACHE: AtomicU64 = AtomicU64::new(0);
    static CACHE_GENERATION: AtomicU64 = AtomicU64::new(u64::MAX);
    let generation = FORK_GENERATION.load(Ordering::Relaxed);
    if CACHE_GENERATION.load(Ordering::Acquire) == generation {
        return CACHE.load(Ordering::Relaxed);
    }
    let start = match task(current_pid()) {
        Task::Alive { start_time } => start_time,
        Task::Dead => 0,
    };
    CACHE.store(start, Ordering::Relaxed);
    CACHE_GENERATION.store(generation, Ordering::Release);
    start
}

/// Nanoseconds since the Unix epoch, for "held since" reports. The coarse clock (a few
/// milliseconds of resolution) costs a fraction of the precise one on every lock acquire.
pub(crate) fn unix_time_ns() -> u64 {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::RealtimeCoarse);
    u64::try_from(now.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(now.tv_nsec).unwrap_or(0)
}
