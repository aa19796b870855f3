//! The synchronization the shared protocol is made of: the atomics of the shared layouts, the
//! futex, pauses. std's and the kernel's in every build, loom's when the crate is built with
//! `--cfg loom` for the model checks (`models.rs`), so that the models run the real protocol
//! code (`lock.rs`, the state word and change sequence of `control.rs`) over modelled atomics.
//!
//! The modelled futex keeps its promise and nothing more: a wait returns at once if the word
//! no longer holds the expected value, and otherwise blocks until a wake-up on the same word
//! (a wake-up that never comes is a deadlock, which loom reports: a lost wake-up). Timeouts
//! never run out in a model.

#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{AtomicU32, AtomicU64, Ordering, fence};

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicU32, AtomicU64, Ordering, fence};

/// The instant `timeout` from now; far in the future (over a century) for a timeout too long
/// to add, such as `Duration::MAX` for "forever".
pub(crate) fn deadline_in(timeout: std::time::Duration) -> std::time::Instant {
    let now = std::time::Instant::now();
    now.checked_add(timeout)
        .unwrap_or_else(|| now + std::time::Duration::from_secs(u64::from(u32::MAX)))
}

/// Sleeps while `word` holds `expected`, at most `timeout`; returns whether the sleep ran out.
#[cfg(not(loom))]
pub(crate) fn futex_wait(word: &AtomicU32, expected: u32, timeout: std::time::Duration) -> bool {
    crate::os::futex_wait(word, expected, timeout)
}

/// Wakes up to `count` sleepers on `word`, in any process.
#[cfg(not(loom))]
pub(crate) fn futex_wake(word: &AtomicU32, count: u32) {
    crate::os::futex_wake(word, count);
}

/// A pause in a spin loop.
#[cfg(not(loom))]
pub(crate) fn spin_loop() {
    std::hint::spin_loop();
}

#[cfg(loom)]
mod modelled {
    use std::time::Duration;

    use loom::sync::{Condvar, Mutex};

    use super::{AtomicU32, Ordering};

    loom::lazy_static! {
        /// The futex's hash bucket: the check of the value and the going to sleep happen under
        /// it, as in the kernel, so a wake-up between them cannot be lost.
        static ref BUCKET: (Mutex<u64>, Condvar) = (Mutex::new(0), Condvar::new());
    }

    pub(crate) fn futex_wait(word: &AtomicU32, expected: u32, _timeout: Duration) -> bool {
        let (lock, wakeups) = &*BUCKET;
        let mut generation = lock.lock().unwrap();
        if word.load(Ordering::SeqCst) != expected {
            return false;
        }
        let seen = *generation;
        while *generation == seen {
            generation = wakeups.wait(generation).unwrap();
        }
        false
    }

    pub(crate) fn futex_wake(_word: &AtomicU32, _count: u32) {
        let (lock, wakeups) = &*BUCKET;
        *lock.lock().unwrap() += 1;
        wakeups.notify_all();
    }

    pub(crate) fn spin_loop() {
        loom::thread::yield_now();
    }
}

#[cfg(loom)]
pub(crate) use modelled::{futex_wait, futex_wake, spin_loop};
