//! The writers' lock word: a futex word in the control block that names its holder.
//!
//! The word holds the holder's process-table slot and thread id (0 when free), plus the
//! [`WAITERS`] bit when somebody sleeps on it. Taking it is one compare-and-swap; releasing it
//! is one compare-and-swap, plus a futex wake when the bit was set. The futex is shared, so
//! forked and independently started processes wait on it alike.
//!
//! A holder that dies is found by its waiters: before each sleep they ask whether the
//! holder's slot is still alive (the caller's [`Holders`], which asks the kernel through
//! `liveness`, valid across PID namespaces and pid reuse), and if it is not they take the word
//! over with a compare-and-swap. Only committed records count, so whatever the dead holder
//! half wrote is simply never published. The thread id only tells apart the threads of one
//! handle, which share its slot; it is never looked up.
//!
//! The judgement and the swap happen while no handle can claim the dead holder's slot
//! ([`Holders::if_dead`]). Otherwise a new handle could claim the slot between the two and
//! take the lock with the very word the dead holder had: thread ids are small numbers in a
//! fresh PID namespace, so a restarted container's thread often has its predecessor's id. The
//! waiter's swap would then succeed and rob the live holder.

use std::time::{Duration, Instant};

use crate::control::{LockFields, PROCESS_SLOTS};
use crate::sync::{self, Ordering};

/// Set in the lock word while at least one thread may be sleeping on it.
pub(crate) const WAITERS: u32 = 1 << 31;

/// Bits of the word holding `slot + 1`.
const SLOT_BITS: u32 = 9;
const SLOT_MASK: u32 = (1 << SLOT_BITS) - 1;
/// Bits of a thread id kept in the word: Linux thread ids stay below 2^22 (`PID_MAX_LIMIT`),
/// so within one process the kept bits are the whole id.
const TID_MASK: u32 = (1 << 22) - 1;

const _: () = assert!(PROCESS_SLOTS < (1 << SLOT_BITS));

/// The word of thread `tid` holding the lock through process-table slot `slot`.
#[inline]
pub(crate) fn holder_word(slot: usize, tid: u32) -> u32 {
    ((tid & TID_MASK) << SLOT_BITS) | (slot as u32 + 1)
}

/// The slot named by a lock word, `None` for a free (or nonsensical) word.
pub(crate) fn slot_of(word: u32) -> Option<usize> {
    match (word & SLOT_MASK) as usize {
        0 => None,
        slot if slot <= PROCESS_SLOTS => Some(slot - 1),
        _ => None,
    }
}

/// The thread id named by a lock word.
pub(crate) fn tid_of(word: u32) -> u32 {
    (word & !WAITERS) >> SLOT_BITS
}

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
    FromDead { dead_slot: Option<usize> },
}

/// Why an acquire did not succeed: held by the live holder in this slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Busy {
    pub(crate) holder_slot: Option<usize>,
}

/// Judges the handles named by lock words (see `liveness`).
pub(crate) trait Holders {
    /// Whether the handle in process-table slot `slot` lives. A doubt counts as alive.
    fn alive(&self, slot: usize) -> bool;

    /// Runs `take` if the handle in `slot` is dead, while no handle can claim that slot (as
    /// far as that can be had in time: see `Engine::if_slot_dead`), and returns what it
    /// returned. Returns false without running it if the handle lives.
    fn if_dead(&self, slot: usize, take: &mut dyn FnMut() -> bool) -> bool;
}

/// A plain judgement with nobody claiming slots meanwhile (the models).
impl<F: Fn(usize) -> bool> Holders for F {
    fn alive(&self, slot: usize) -> bool {
        self(slot)
    }

    fn if_dead(&self, slot: usize, take: &mut dyn FnMut() -> bool) -> bool {
        !self(slot) && take()
    }
}

/// Tries once, without waiting. Recovers from a dead holder on the spot.
pub(crate) fn try_acquire(
    lock: &LockFields,
    me: u32,
    holders: &dyn Holders,
) -> Result<Acquired, Busy> {
    let current = lock.word.load(Ordering::Acquire);
    if current == 0 {
        if take_free(lock, 0, me) {
            return Ok(Acquired::Free);
        }
    } else if let Some(acquired) = take_from_dead(lock, current, me, holders) {
        return Ok(acquired);
    }
    note_holder_seen(lock);
    Err(busy(lock))
}

/// Waits for the lock until `deadline` (forever when `None`).
pub(crate) fn acquire(
    lock: &LockFields,
    me: u32,
    policy: WaitPolicy,
    deadline: Option<Instant>,
    holders: &dyn Holders,
) -> Result<Acquired, Busy> {
    for _ in 0..policy.spins {
        if take_free(lock, 0, me) {
            return Ok(Acquired::Free);
        }
        sync::spin_loop();
    }
    // The holder is asked after (a kernel call) when the lock is first found taken, and again
    // after every sleep that ran out, or once `max_sleep` passed since the last time (sleeps
    // cut short by signals again and again never run out): a holder that dies never wakes
    // anyone, so its death is noticed at most about one sleep late, and a busy lock costs no
    // call per wake-up.
    let mut ask_holder = true;
    let mut asked = Instant::now();
    loop {
        let current = lock.word.load(Ordering::Acquire);
        if current == 0 {
            // Others may still sleep: keep the bit so the next release wakes one of them.
            if take_free(lock, WAITERS, me) {
                return Ok(Acquired::Free);
            }
            continue;
        }
        if ask_holder || asked.elapsed() >= policy.max_sleep {
            asked = Instant::now();
            if let Some(acquired) = take_from_dead(lock, current, me, holders) {
                return Ok(acquired);
            }
        }
        let sleep = match deadline {
            Some(deadline) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    // A release's wake-up may have come to this waiter, which leaves: pass it
                    // on to another sleeper, if any.
                    if current & WAITERS != 0 {
                        sync::futex_wake(&lock.word, 1);
                    }
                    return Err(busy(lock));
                }
                left.min(policy.max_sleep)
            }
            None => policy.max_sleep,
        };
        // Back off without touching the word before sleeping: a holder on another core then
        // runs its next critical sections undisturbed, and without the wake-up call that every
        // release costs while a sleeper is flagged; most waits end within the back-off.
        if policy.spins > 0 {
            backoff(sleep);
            if lock.word.load(Ordering::Relaxed) == 0 {
                continue;
            }
        }
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
        ask_holder = sync::futex_wait(&lock.word, waiting, sleep);
    }
}

/// Releases the lock held as `me`. Does nothing if `me` does not hold it (it was taken over
/// while wrongly believed dead: never release another's hold).
#[inline]
pub(crate) fn release(lock: &LockFields, me: u32) {
    lock.held_since_ns.store(0, Ordering::Relaxed);
    let mut current = lock.word.load(Ordering::Relaxed);
    loop {
        if current & !WAITERS != me {
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
        sync::futex_wake(&lock.word, 1);
    }
}

/// The current holder's word (without [`WAITERS`]), 0 when free.
pub(crate) fn holder(lock: &LockFields) -> u32 {
    lock.word.load(Ordering::Acquire) & !WAITERS
}

/// Pauses the calling thread for [`BACKOFF`] (at most `at_most`) without touching shared memory (the time is
/// measured: a pause instruction takes from a few to over a hundred cycles across CPUs).
fn backoff(at_most: Duration) {
    // Time does not pass in a model: a back-off there is one yield.
    if cfg!(loom) {
        sync::spin_loop();
        return;
    }
    let until = Instant::now() + BACKOFF.min(at_most);
    while Instant::now() < until {
        for _ in 0..16 {
            std::hint::spin_loop();
        }
    }
}

/// How long a waiter backs off before its first sleep.
const BACKOFF: Duration = Duration::from_micros(20);

/// Takes a free word as `me`, with the `bits` (the waiters bit or none) set.
#[inline]
pub(crate) fn take_free(lock: &LockFields, bits: u32, me: u32) -> bool {
    let taken = lock
        .word
        .compare_exchange(0, me | bits, Ordering::Acquire, Ordering::Relaxed)
        .is_ok();
    if taken {
        mark_held(lock);
    }
    taken
}

fn busy(lock: &LockFields) -> Busy {
    Busy {
        holder_slot: slot_of(holder(lock)),
    }
}

#[inline]
fn mark_held(lock: &LockFields) {
    // Reading a clock on every acquire would cost a quarter of an uncontended lock: the
    // holder leaves the time blank and the first observer stamps it (`note_holder_seen`).
    lock.held_since_ns.store(0, Ordering::Relaxed);
}

/// Stamps "held since" with the current time if nobody has yet since the holder took the
/// lock. Called by waiters before they sleep and by status reports, so a lock held for long
/// shows (to within the first observer's delay) when it was taken.
pub(crate) fn note_holder_seen(lock: &LockFields) {
    if lock.held_since_ns.load(Ordering::Relaxed) == 0 {
        let _ = lock.held_since_ns.compare_exchange(
            0,
            crate::os::unix_time_ns(),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }
}

/// Takes the word over if its holder (`current`) is dead. The caller (`me`) does not hold
/// the lock, so a word naming the caller itself is a leftover (of a thread of the same handle
/// that exited, or of a slot this handle took over from a dead handle), also dead; so is a
/// word naming no slot.
fn take_from_dead(
    lock: &LockFields,
    current: u32,
    me: u32,
    holders: &dyn Holders,
) -> Option<Acquired> {
    let holder = current & !WAITERS;
    let dead_slot = slot_of(holder);
    let taken = match dead_slot {
        Some(slot) if holder != me => {
            // The cheap look first: a live holder costs a waiter no more than this.
            if holders.alive(slot) {
                return None;
            }
            crate::fault::point("lock-judged");
            holders.if_dead(slot, &mut || take_over(lock, current, me))
        }
        _ => take_over(lock, current, me),
    };
    taken.then_some(Acquired::FromDead { dead_slot })
}

/// Replaces the word `current` (a dead holder's) with `me`, keeping the waiters bit: others
/// may sleep on the word. Fails if the word changed meanwhile.
pub(crate) fn take_over(lock: &LockFields, current: u32, me: u32) -> bool {
    if lock
        .word
        .compare_exchange(
            current,
            me | (current & WAITERS),
            Ordering::Acquire,
            Ordering::Relaxed,
        )
        .is_err()
    {
        return false;
    }
    lock.recoveries.fetch_add(1, Ordering::Relaxed);
    mark_held(lock);
    true
}
