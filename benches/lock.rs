//! The cross-process lock against a robust, process-shared pthread mutex, in one run.
//! Run with `cargo bench --bench lock`.
//!
//! - uncontended lock + unlock in one process;
//! - two processes incrementing a counter in shared memory under the lock (locked increments
//!   per second, total checked);
//! - two processes doing `UltraDict::update` on one key (a whole atomic dict update);
//! - the liveness check a waiter makes before each sleep: a probe of the holder's byte lock
//!   (`F_OFD_GETLK`, what ultradict does) against reading `/proc/PID/stat` (what a pid and
//!   start-time check costs, and what does not hold across PID namespaces); and taking plus
//!   giving back a byte lock (what attach and detach add);
//! - opening and closing a handle (attach + detach).

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use ultradict::{Create, UltraDict};

const UNCONTENDED_OPS: u64 = 2_000_000;
const CONTENDED_OPS: u64 = 2_000_000;
const UPDATE_OPS: u64 = 200_000;

/// A robust, process-shared pthread mutex and a counter, in anonymous shared memory.
#[repr(C)]
struct Shared {
    mutex: libc::pthread_mutex_t,
    counter: AtomicU64,
    /// Children wait for this to be set, so that they really run at the same time.
    go: AtomicU64,
    ready: AtomicU64,
}

fn shared_mutex() -> &'static Shared {
    // SAFETY: a fresh anonymous shared mapping of the right size, initialized below before
    // any use; it lives until the process exits (and in forked children).
    unsafe {
        let map = libc::mmap(
            std::ptr::null_mut(),
            std::mem::size_of::<Shared>(),
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        assert_ne!(map, libc::MAP_FAILED);
        let shared = map.cast::<Shared>();
        let mut attr: libc::pthread_mutexattr_t = std::mem::zeroed();
        libc::pthread_mutexattr_init(&mut attr);
        libc::pthread_mutexattr_setpshared(&mut attr, libc::PTHREAD_PROCESS_SHARED);
        libc::pthread_mutexattr_setrobust(&mut attr, libc::PTHREAD_MUTEX_ROBUST);
        libc::pthread_mutex_init(&raw mut (*shared).mutex, &attr);
        &*shared
    }
}

fn pthread_lock(shared: &Shared) {
    // SAFETY: the mutex was initialized by `shared_mutex` and lives in mapped memory.
    unsafe { libc::pthread_mutex_lock((&raw const shared.mutex).cast_mut()) };
}

fn pthread_unlock(shared: &Shared) {
    // SAFETY: as above; called by the thread that locked it.
    unsafe { libc::pthread_mutex_unlock((&raw const shared.mutex).cast_mut()) };
}

/// Runs `work` in two forked processes at once; returns the wall time in seconds from the
/// moment both were ready to both having finished.
fn in_two_processes(shared: &Shared, work: impl Fn()) -> f64 {
    shared.go.store(0, Ordering::SeqCst);
    shared.ready.store(0, Ordering::SeqCst);
    let children: Vec<_> = (0..2)
        .map(|_| {
            // SAFETY: the bench is single-threaded; the child runs `work` and `_exit`s.
            let pid = unsafe { libc::fork() };
            assert!(pid >= 0);
            if pid == 0 {
                shared.ready.fetch_add(1, Ordering::SeqCst);
                while shared.go.load(Ordering::SeqCst) == 0 {
                    std::hint::spin_loop();
                }
                work();
                // SAFETY: end the child without running the parent's destructors.
                unsafe { libc::_exit(0) };
            }
            pid
        })
        .collect();
    while shared.ready.load(Ordering::SeqCst) < 2 {
        std::thread::yield_now();
    }
    let start = Instant::now();
    shared.go.store(1, Ordering::SeqCst);
    for pid in children {
        let mut status = 0;
        // SAFETY: reaping our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
    }
    start.elapsed().as_secs_f64()
}

fn main() {
    let shared = shared_mutex();
    let name = format!("bench-lock-{}", std::process::id());
    let dict: UltraDict<u32, u64> = UltraDict::open(&name).expect("open");

    // Uncontended, best of 5.
    let best = |f: &dyn Fn()| {
        (0..5)
            .map(|_| {
                let start = Instant::now();
                f();
                start.elapsed().as_nanos() as f64 / UNCONTENDED_OPS as f64
            })
            .fold(f64::INFINITY, f64::min)
    };
    let pthread_ns = best(&|| {
        for _ in 0..UNCONTENDED_OPS {
            pthread_lock(shared);
            pthread_unlock(shared);
        }
    });
    let ours_ns = best(&|| {
        for _ in 0..UNCONTENDED_OPS {
            drop(black_box(dict.lock().expect("lock")));
        }
    });

    // Two processes, a shared counter under each lock.
    shared.counter.store(0, Ordering::Relaxed);
    let pthread_secs = in_two_processes(shared, || {
        for _ in 0..CONTENDED_OPS {
            pthread_lock(shared);
            let v = shared.counter.load(Ordering::Relaxed);
            shared.counter.store(v + 1, Ordering::Relaxed);
            pthread_unlock(shared);
        }
    });
    assert_eq!(shared.counter.load(Ordering::Relaxed), 2 * CONTENDED_OPS);

    shared.counter.store(0, Ordering::Relaxed);
    let ours_secs = in_two_processes(shared, || {
        let d: UltraDict<u32, u64> = UltraDict::builder()
            .name(&name)
            .create(Create::Open)
            .open()
            .expect("attach");
        for _ in 0..CONTENDED_OPS {
            let _guard = d.lock().expect("lock");
            let v = shared.counter.load(Ordering::Relaxed);
            shared.counter.store(v + 1, Ordering::Relaxed);
        }
    });
    assert_eq!(shared.counter.load(Ordering::Relaxed), 2 * CONTENDED_OPS);

    let update_secs = in_two_processes(shared, || {
        let d: UltraDict<u32, u64> = UltraDict::builder()
            .name(&name)
            .create(Create::Open)
            .open()
            .expect("attach");
        for _ in 0..UPDATE_OPS {
            d.update(&0, |n| n.unwrap_or(0) + 1).expect("update");
        }
    });
    assert_eq!(dict.get(&0).expect("get"), Some(2 * UPDATE_OPS));

    let per_sec = |ops: u64, secs: f64| ops as f64 / secs;
    println!("lock: ratio = ultradict / pthread (robust, process-shared) in the same run");
    println!(
        "{:<46} {:>14} {:>14} {:>8}",
        "", "pthread", "ultradict", "ratio"
    );
    println!(
        "{:<46} {:>11.1} ns {:>11.1} ns {:>7.2}x",
        "uncontended lock + unlock",
        pthread_ns,
        ours_ns,
        ours_ns / pthread_ns
    );
    let (p, o) = (
        per_sec(2 * CONTENDED_OPS, pthread_secs),
        per_sec(2 * CONTENDED_OPS, ours_secs),
    );
    println!(
        "{:<46} {:>12.0}/s {:>12.0}/s {:>7.2}x",
        "2 processes, locked increments",
        p,
        o,
        o / p
    );
    println!(
        "{:<46} {:>14} {:>12.0}/s",
        "2 processes, UltraDict::update of one key",
        "-",
        per_sec(2 * UPDATE_OPS, update_secs)
    );
    // Attach + detach of a second handle while the first keeps the dict alive, with an empty
    // stream (a new handle applies every record since the last dump: that cost is not this).
    dict.dump().expect("dump");
    const ATTACHES: u64 = 2_000;
    let start = Instant::now();
    for _ in 0..ATTACHES {
        let d: UltraDict<u32, u64> = UltraDict::builder()
            .name(&name)
            .create(Create::Open)
            .open()
            .expect("attach");
        drop(black_box(d));
    }
    println!(
        "{:<46} {:>11.1} us",
        "open (attach) + close (detach) of a handle",
        start.elapsed().as_secs_f64() * 1e6 / ATTACHES as f64
    );
    liveness_probes(&name);
    dict.close().expect("close");
}

/// The liveness primitives, one process holding a byte lock on the dict's control segment.
fn liveness_probes(name: &str) {
    use std::os::fd::AsRawFd;
    const PROBES: u64 = 200_000;
    let path = format!("/dev/shm/ultradict.{name}");
    let holder = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .expect("open control segment");
    let prober = std::fs::File::open(&path).expect("open control segment");
    let lock = |fd: i32, command: i32, kind: i32, byte: i64| {
        // SAFETY: plain C struct of integers, all zeroes valid.
        let mut flock: libc::flock = unsafe { std::mem::zeroed() };
        flock.l_type = kind as libc::c_short;
        flock.l_whence = libc::SEEK_SET as libc::c_short;
        flock.l_start = byte;
        flock.l_len = 1;
        // SAFETY: a valid descriptor and a valid `flock` for the call.
        let result = unsafe { libc::fcntl(fd, command, &mut flock) };
        assert_ne!(result, -1);
        flock.l_type
    };
    // A byte far from any slot a handle of the dict uses.
    const BYTE: i64 = 1 << 20;
    lock(holder.as_raw_fd(), libc::F_OFD_SETLK, libc::F_WRLCK, BYTE);
    let start = Instant::now();
    for _ in 0..PROBES {
        let kind = lock(prober.as_raw_fd(), libc::F_OFD_GETLK, libc::F_WRLCK, BYTE);
        assert_eq!(i32::from(black_box(kind)), libc::F_WRLCK);
    }
    let ofd_ns = start.elapsed().as_nanos() as f64 / PROBES as f64;
    let stat = format!("/proc/{}/stat", std::process::id());
    let start = Instant::now();
    for _ in 0..PROBES / 10 {
        black_box(std::fs::read_to_string(&stat).expect("read /proc"));
    }
    let proc_ns = start.elapsed().as_nanos() as f64 / (PROBES / 10) as f64;
    let start = Instant::now();
    for _ in 0..PROBES {
        lock(
            prober.as_raw_fd(),
            libc::F_OFD_SETLK,
            libc::F_RDLCK,
            BYTE + 1,
        );
        lock(
            prober.as_raw_fd(),
            libc::F_OFD_SETLK,
            libc::F_UNLCK,
            BYTE + 1,
        );
    }
    let take_ns = start.elapsed().as_nanos() as f64 / PROBES as f64;
    println!(
        "{:<46} {:>11.1} ns {:>11.1} ns {:>7.2}x",
        "liveness probe: /proc/PID/stat vs byte lock",
        proc_ns,
        ofd_ns,
        ofd_ns / proc_ns
    );
    println!(
        "{:<46} {:>14} {:>11.1} ns",
        "take + give back a byte lock (attach, detach)", "-", take_ns
    );
}
