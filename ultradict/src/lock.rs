//! The writers' lock: a pid-tagged futex word in the control block.
//!
//! The word holds the holder's thread id (0 when free) and the [`WAITERS`] bit when somebody
//! sleeps on it. Taking it is one compare-and-swap; releasing it is one swap, plus a futex
//! wake when the bit was set. The futex is shared, so forked and independently started
//! processes wait on it alike.
//!
//! A holder that dies is found by its waiters: before each sleep they look the holder's
//! thread up in /proc, and if it is gone (or its id now belongs to a task with another start
//! time) they take the word over with a compare-and-swap. Only committed records count, so
//! whatever the dead holder half wrote is simply never published.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::control::LockFields;
use crate::os;

/// Set in the lock word while at least one thread may be sleeping on it.
pub(crate) const WAITERS: u32 = 1 << 31;
const TID_MASK: u32 = !WAITERS;

/// How to wait for the lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct WaitPolicy {
    /// Compare-and-swap attempts before the first sleep.
    pub(crate) spins: u32,
    /// Longest single sleep on the futex: bounds how late a dead holder is noticed.
    pub(crate) max_sleep: Duration,
}

/// How an acquire ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Acquired {
    /// Taken from a free word.
    Free,
    /// Taken over from a holder that had died; the caller should tidy up after it.
    FromDead { dead_pid: u32 },
}

/// Why an acquire did not succeed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Busy {
    /// Held by a live thread of process `holder_pid`.
    Held { holder_pid: u32 },
}

/// Tries once, without waiting. Recovers from a dead holder on the spot.
pub(crate) fn try_acquire(lock: &LockFields, tid: u32) -> Result<Acquired, Busy> {
    let current = lock.word.load(Ordering::Acquire);
    if current == 0 {
        if lock
            .word
            .compare_exchange(0, tid, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
        {
            mark_held(lock);
            return Ok(Acquired::Free);
        }
    } else if let Some(acquired) = take_from_dead(lock, current, tid) {
        return Ok(acquired);
    }
    note_holder_seen(lock);
    Err(Busy::Held {
        holder_pid: holder_pid(lock),
    })
}

/// Waits for the lock until `deadline` (forever when `None`).
pub(crate) fn acquire(
    lock: &LockFields,
    tid: u32,
    policy: WaitPolicy,
    deadline: Option<Instant>,
) -> Result<Acquired, Busy> {
    for _ in 0..policy.spins {
        if lock
            .word
            .compare_exchange_weak(0, tid, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
        {
            mark_held(lock);
            return Ok(Acquired::Free);
        }
        std::hint::spin_loop();
    }
    loop {
        let current = lock.word.load(Ordering::Acquire);
        if current == 0 {
            // Others may still sleep: keep the bit so the next release wakes one of them.
            if lock
                .word
                .compare_exchange(0, tid | WAITERS, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                mark_held(lock);
                return Ok(Acquired::Free);
            }
            continue;
        }
        if let Some(acquired) = take_from_dead(lock, current, tid) {
            return Ok(acquired);
        }
        let sleep = match deadline {
            Some(deadline) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(Busy::Held {
                        holder_pid: holder_pid(lock),
                    });
                }
                left.min(policy.max_sleep)
            }
            None => policy.max_sleep,
        };
        note_holder_seen(lock);
        let waiting = current | WAITERS;
        if current & WAITERS == 0
            && lock
                .word
                .compare_exchange(current, waiting, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            continue;
        }
        os::futex_wait(&lock.word, waiting, sleep);
    }
}

/// Releases the lock held by thread `tid`. Does nothing if `tid` does not hold it (it was
/// taken over while this thread was wrongly believed dead: never release another's hold).
pub(crate) fn release(lock: &LockFields, tid: u32) {
    lock.holder.store(0, Ordering::Relaxed);
    lock.holder_pid.store(0, Ordering::Relaxed);
    lock.held_since_ns.store(0, Ordering::Relaxed);
    let mut current = lock.word.load(Ordering::Relaxed);
    loop {
        if current & TID_MASK != tid {
            return;
        }
        match lock
            .word
            .compare_exchange_weak(current, 0, Ordering::Release, Ordering::Relaxed)
        {
            Ok(_) => break,
            Err(now) => current = now,
        }
    }
    if current & WAITERS != 0 {
        os::futex_wake(&lock.word, 1);
    }
}

/// The holder's process id, or its thread id while it has not written its pid yet.
pub(crate) fn holder_pid(lock: &LockFields) -> u32 {
    match lock.holder_pid.load(Ordering::Acquire) {
        0 => lock.word.load(Ordering::Relaxed) & TID_MASK,
        pid => pid,
    }
}

/// Thread id of the holder, 0 when free.
pub(crate) fn holder_tid(lock: &LockFields) -> u32 {
    lock.word.load(Ordering::Acquire) & TID_MASK
}

/// A holder's identity as the lock stores it: thread id and the low half of its start time,
/// in one word, so that nobody pairs one holder's id with another's start time.
fn identity(tid: u32, start_time: u64) -> u64 {
    (u64::from(tid) << 32) | (start_time & 0xffff_ffff)
}

/// The calling thread's identity.
fn own_identity() -> u64 {
    identity(os::current_tid(), os::current_thread_start_time())
}

/// Whether the lock is held by the calling thread (through any handle).
pub(crate) fn held_by_caller(lock: &LockFields) -> bool {
    holder_tid(lock) == os::current_tid() && lock.holder.load(Ordering::Acquire) == own_identity()
}

/// Whether the thread in the lock word `word` still runs; `None` when the lock is free.
///
/// Its identity is written just after it took the word, so it may not be there yet: then
/// only /proc saying the thread is gone counts as death. With the identity there, a thread id
/// now used by a task with another start time also counts as dead.
pub(crate) fn holder_alive(lock: &LockFields, word: u32) -> Option<bool> {
    let tid = word & TID_MASK;
    if tid == 0 {
        return None;
    }
    let identity = lock.holder.load(Ordering::Acquire);
    let now = os::task(tid);
    Some(match now {
        os::Task::Dead => false,
        os::Task::Alive { start_time } => {
            (identity >> 32) as u32 != tid || identity == self::identity(tid, start_time)
        }
    })
}

fn mark_held(lock: &LockFields) {
    lock.holder.store(own_identity(), Ordering::Release);
    // Reading a clock on every acquire would cost a quarter of an uncontended lock: the
    // holder leaves the time blank and the first observer stamps it (`note_holder_seen`).
    lock.held_since_ns.store(0, Ordering::Relaxed);
    lock.holder_pid.store(os::current_pid(), Ordering::Release);
}

/// Stamps "held since" with the current time if nobody has yet since the holder took the
/// lock. Called by waiters before they sleep and by status reports, so a lock held for long
/// shows (to within the first observer's delay) when it was taken.
pub(crate) fn note_holder_seen(lock: &LockFields) {
    if lock.held_since_ns.load(Ordering::Relaxed) == 0 {
        let _ = lock.held_since_ns.compare_exchange(
            0,
            os::unix_time_ns(),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }
}

/// Takes the word over if its holder (`current`) is dead. The caller (`tid`) does not hold
/// the lock, so a word holding its own thread id is a dead thread's whose id was reused.
fn take_from_dead(lock: &LockFields, current: u32, tid: u32) -> Option<Acquired> {
    let holder = current & TID_MASK;
    if holder != tid && holder_alive(lock, current) != Some(false) {
        return None;
    }
    let dead_pid = match lock.holder_pid.load(Ordering::Acquire) {
        0 => holder,
        pid => pid,
    };
    // The compare-and-swap on the exact word also fails if the holder changed meanwhile.
    // Keep the waiters bit: others may sleep on the word.
    lock.word
        .compare_exchange(
            current,
            tid | (current & WAITERS),
            Ordering::Acquire,
            Ordering::Relaxed,
        )
        .ok()?;
    lock.recoveries.fetch_add(1, Ordering::Relaxed);
    lock.last_dead_pid.store(dead_pid, Ordering::Relaxed);
    mark_held(lock);
    Some(Acquired::FromDead { dead_pid })
}
