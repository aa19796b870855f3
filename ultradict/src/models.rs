//! Model checks of the concurrency protocol with loom, on the real code (`lock.rs`, the
//! state word and change sequence of `control.rs`, the reader's stream copy), built over
//! modelled atomics and a modelled futex (`sync.rs`). Each model explores every interleaving
//! of its threads (within a preemption bound, so that CI runs them in seconds) and the weak
//! memory orderings the atomics allow.
//!
//! ```text
//! RUSTFLAGS="--cfg loom" cargo test -p ultradict --lib --release models
//! ```
//!
//! Built with `--cfg ultradict_loom_broken` as well, the state word is published with a
//! Relaxed store instead of Release: `publish_then_catch_up_never_sees_torn_records` must then
//! fail (a reader sees the new offset before the record's bytes); and a lock waiter takes a
//! dead holder's lock over after letting go of its pin of the dead slot:
//! `a_takeover_never_robs_the_new_owner_of_the_dead_holders_slot` must then fail.

use loom::cell::UnsafeCell;
use loom::sync::Arc;
use loom::thread;

use crate::control::{Changes, LockFields, Published, StateWord};
use crate::lock::{self, Acquired, WaitPolicy};
use crate::lock_guard::Reentrant;
use crate::os::ThreadId;
use crate::sync::{AtomicU32, AtomicU64, Ordering};

fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(3);
    builder.check(f);
}

fn lock_fields() -> LockFields {
    LockFields {
        word: AtomicU32::new(0),
        _reserved: 0,
        held_since_ns: AtomicU64::new(0),
        recoveries: AtomicU64::new(0),
        last_dead_pid: AtomicU32::new(0),
        _reserved2: 0,
    }
}

/// How the models' lock waiters wait: one attempt, then sleep (loom runs no clock, so the
/// sleep's length never matters).
const POLICY: WaitPolicy = WaitPolicy {
    spins: 1,
    max_sleep: std::time::Duration::from_secs(3600),
};

/// Joins two threads that each added one to `counter` under `lock`, and checks that both
/// increments are there and that the lock ended free.
fn both_counted_and_released(
    threads: Vec<thread::JoinHandle<()>>,
    counter: &UnsafeCell<u32>,
    lock: &LockFields,
) {
    for thread in threads {
        thread.join().unwrap();
    }
    // SAFETY: both threads were joined: nothing else touches the cell.
    assert_eq!(counter.with(|n| unsafe { *n }), 2);
    assert_eq!(lock.word.load(Ordering::Relaxed), 0);
}

fn changes() -> Changes {
    Changes {
        sequence: AtomicU32::new(0),
        removed: AtomicU32::new(0),
    }
}

/// A state word, epoch word and change sequence, with a stream of `WORDS` 8-byte words.
struct Shared {
    state: AtomicU64,
    epoch: AtomicU32,
    changes: Changes,
    stream: Vec<AtomicU64>,
}

const WORDS: usize = 2;

impl Shared {
    fn new() -> Self {
        Shared {
            state: AtomicU64::new(0),
            epoch: AtomicU32::new(0),
            changes: changes(),
            stream: (0..WORDS).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn published(&self) -> Published<'_> {
        Published {
            state: &self.state,
            epoch: &self.epoch,
            changes: &self.changes,
        }
    }
}

/// What record `i` of epoch `epoch` holds.
fn record(epoch: u32, i: usize) -> u64 {
    (u64::from(epoch) << 32) | (i as u64 + 1)
}

/// A writer appends two records (their bytes, then the new committed offset), then starts a
/// new epoch and writes its first record over the old bytes. A reader catches up as the
/// engine does: load the state word, copy the committed range with atomic loads, and keep the
/// copy only if the epoch word still holds the epoch it loaded (`Published::still_in`).
/// Whatever it keeps must be whole records of that epoch.
#[test]
fn publish_then_catch_up_never_sees_torn_records() {
    model(|| {
        let shared = Arc::new(Shared::new());
        let writer = {
            let shared = Arc::clone(&shared);
            thread::spawn(move || {
                let published = shared.published();
                for i in 0..WORDS {
                    shared.stream[i].store(record(0, i), Ordering::Relaxed);
                    published.publish(StateWord {
                        epoch: 0,
                        committed: (8 * (i + 1)) as u32,
                    });
                }
                // A full dump starts epoch 1 (offset 0), then its first record.
                published.publish_epoch(StateWord {
                    epoch: 1,
                    committed: 0,
                });
                shared.stream[0].store(record(1, 0), Ordering::Relaxed);
                published.publish(StateWord {
                    epoch: 1,
                    committed: 8,
                });
            })
        };
        let published = shared.published();
        let target = published.state();
        let words = target.committed as usize / 8;
        let copy: Vec<u64> = (0..words)
            .map(|i| shared.stream[i].load(Ordering::Relaxed))
            .collect();
        if published.still_in(target.epoch) {
            for (i, &word) in copy.iter().enumerate() {
                assert_eq!(word, record(target.epoch, i), "a torn or stale record");
            }
        }
        writer.join().unwrap();
    });
}

/// Two threads take the lock word in turn; each increments a plain (non-atomic) cell inside:
/// loom reports any access the lock does not order as a data race.
#[test]
fn the_lock_word_excludes() {
    model(|| {
        let lock = Arc::new(lock_fields());
        let counter = Arc::new(UnsafeCell::new(0u32));
        let threads: Vec<_> = (0..2)
            .map(|slot| {
                let (lock, counter) = (Arc::clone(&lock), Arc::clone(&counter));
                thread::spawn(move || {
                    let me = lock::holder_word(slot, 100 + slot as u32);
                    let acquired = lock::acquire(&lock, me, POLICY, None, &|_| true);
                    assert_eq!(acquired, Ok(Acquired::Free));
                    // SAFETY: loom's cell; the lock is what this model checks makes it exclusive.
                    counter.with_mut(|n| unsafe { *n += 1 });
                    lock::release(&lock, me);
                })
            })
            .collect();
        both_counted_and_released(threads, &counter, &lock);
    });
}

/// Two threads of one handle share its re-entrant hold: each takes the lock, enters it again,
/// leaves twice; only the second leave releases the word, and the other thread never passes
/// for the holder. (Thread ids are given explicitly: loom runs its threads on one OS thread.)
#[test]
fn the_reentrant_hold_of_one_handle_excludes_its_threads() {
    model(|| {
        let lock = Arc::new(lock_fields());
        let hold = Arc::new(Reentrant::default());
        let counter = Arc::new(UnsafeCell::new(0u32));
        let threads: Vec<_> = (0..2u32)
            .map(|i| {
                let (lock, hold, counter) =
                    (Arc::clone(&lock), Arc::clone(&hold), Arc::clone(&counter));
                thread::spawn(move || {
                    let me = ThreadId {
                        generation: crate::os::fork_generation(),
                        tid: 100 + i,
                        pid: 1,
                    };
                    assert_eq!(hold.reenter(me), None, "not held by this thread yet");
                    let word = lock::holder_word(0, me.tid);
                    lock::acquire(&lock, word, POLICY, None, &|_| true).unwrap();
                    let outer = hold.enter(me, word);
                    let inner = hold.reenter(me).expect("re-entered");
                    // SAFETY: loom's cell; the lock is what this model checks makes it exclusive.
                    counter.with_mut(|n| unsafe { *n += 1 });
                    assert_eq!(hold.leave(inner), None, "the inner leave keeps the lock");
                    let released = hold.leave(outer).expect("the outer leave releases");
                    lock::release(&lock, released);
                })
            })
            .collect();
        both_counted_and_released(threads, &counter, &lock);
    });
}

/// A holder died with the lock: two waiters find it dead, exactly one takes it over, and the
/// other gets it after that one releases. Neither frees a hold that is not its own.
#[test]
fn a_dead_holder_is_taken_over_once() {
    model(|| {
        const DEAD_SLOT: usize = 7;
        let lock = Arc::new(lock_fields());
        lock.word
            .store(lock::holder_word(DEAD_SLOT, 42), Ordering::Relaxed);
        let threads: Vec<_> = (0..2)
            .map(|slot| {
                let lock = Arc::clone(&lock);
                thread::spawn(move || {
                    let me = lock::holder_word(slot, 100 + slot as u32);
                    let alive = |slot: usize| slot != DEAD_SLOT;
                    let acquired = lock::acquire(&lock, me, POLICY, None, &alive).unwrap();
                    lock::release(&lock, me);
                    matches!(acquired, Acquired::FromDead { .. })
                })
            })
            .collect();
        let takeovers = threads
            .into_iter()
            .map(|t| t.join().unwrap())
            .filter(|&took_over| took_over)
            .count();
        assert_eq!(takeovers, 1);
        assert_eq!(lock.recoveries.load(Ordering::Relaxed), 1);
        assert_eq!(lock.word.load(Ordering::Relaxed), 0);
    });
}

/// The process table of the next model: one slot, whose handle died holding the lock. Its
/// byte lock is the flag: claimed by a handle, or pinned by a waiter judging it (a claim
/// and a pin both succeed only on a free slot, as the kernel's byte locks do).
struct Table {
    slot_locked: loom::sync::atomic::AtomicBool,
}

impl Table {
    fn try_lock_slot(&self) -> bool {
        self.slot_locked
            .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
    }
}

/// A waiter's judge, as `Engine::if_slot_dead` judges: the slot pinned around the takeover.
/// Built with `--cfg ultradict_loom_broken`, it judges and then takes over without holding
/// the pin, as the lock did before: the model must then fail.
struct Judge<'a>(&'a Table);

impl lock::Holders for Judge<'_> {
    fn alive(&self, _slot: usize) -> bool {
        self.0.slot_locked.load(Ordering::SeqCst)
    }

    fn if_dead(&self, _slot: usize, take: &mut dyn FnMut() -> bool) -> bool {
        if !self.0.try_lock_slot() {
            return false;
        }
        if cfg!(ultradict_loom_broken) {
            self.0.slot_locked.store(false, Ordering::SeqCst);
            return take();
        }
        let taken = take();
        self.0.slot_locked.store(false, Ordering::SeqCst);
        taken
    }
}

/// A holder died with the lock; a waiter judges it dead while a newcomer claims its slot,
/// recovers the lock as an attach does, and takes it with the very word the dead holder had
/// (same slot, same thread id: a restarted container). The waiter's takeover must never land
/// on the newcomer's live hold: the counter's cell would be touched by both at once.
#[test]
fn a_takeover_never_robs_the_new_owner_of_the_dead_holders_slot() {
    model(|| {
        const SLOT: usize = 1;
        let dead = lock::holder_word(SLOT, 42);
        let lock = Arc::new(lock_fields());
        lock.word.store(dead, Ordering::Relaxed);
        let table = Arc::new(Table {
            slot_locked: loom::sync::atomic::AtomicBool::new(false),
        });
        let counter = Arc::new(UnsafeCell::new(0u32));
        let waiter = {
            let (lock, table, counter) = (lock.clone(), table.clone(), counter.clone());
            thread::spawn(move || {
                let me = lock::holder_word(0, 7);
                lock::acquire(&lock, me, POLICY, None, &Judge(&table)).unwrap();
                // SAFETY: under the lock (the model checks exactly that).
                counter.with_mut(|n| unsafe { *n += 1 });
                lock::release(&lock, me);
            })
        };
        let newcomer = {
            let (lock, table, counter) = (lock.clone(), table.clone(), counter.clone());
            thread::spawn(move || {
                // The slot is the lowest free one; a pin holds it for a moment.
                while !table.try_lock_slot() {
                    thread::yield_now();
                }
                // `Engine::recover_lock_of`: a word naming the claimed slot is a dead one's.
                let current = lock.word.load(Ordering::Acquire);
                if lock::slot_of(current & !lock::WAITERS) == Some(SLOT)
                    && lock::take_over(&lock, current, dead)
                {
                    lock::release(&lock, dead);
                }
                // Its own slot is alive; the waiter's too.
                lock::acquire(&lock, dead, POLICY, None, &|_| true).unwrap();
                // SAFETY: under the lock (the model checks exactly that).
                counter.with_mut(|n| unsafe { *n += 1 });
                lock::release(&lock, dead);
            })
        };
        both_counted_and_released(vec![waiter, newcomer], &counter, &lock);
    });
}

/// A sleeper in `wait_for_change` and a writer that publishes once: the sleeper always wakes
/// (a lost wake-up would leave it blocked on the modelled futex: loom reports a deadlock).
#[test]
fn a_sleeper_always_sees_the_change() {
    model(|| {
        let shared = Arc::new(Shared::new());
        let sleeper = {
            let shared = Arc::clone(&shared);
            thread::spawn(move || {
                let seen = StateWord {
                    epoch: 0,
                    committed: 0,
                };
                shared
                    .published()
                    .wait_for_change(seen, std::time::Duration::from_secs(3600))
            })
        };
        shared.published().publish(StateWord {
            epoch: 0,
            committed: 16,
        });
        assert!(sleeper.join().unwrap(), "the sleeper saw the change");
    });
}
