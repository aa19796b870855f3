//! The cross-process lock as a handle holds it: how to wait for it, the re-entrant hold of one
//! thread, and the guard that releases it. The lock word itself is in `lock.rs`.

use crate::sync::{AtomicU32, AtomicU64, Ordering};
use std::fmt;
use std::time::Duration;

use std::time::Instant;

use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::lock::{self, Acquired, WaitPolicy};
use crate::os::ThreadId;
use crate::schema::Schema;
use crate::segment;

/// How long to wait for a dict's lock, and how.
///
/// ```
/// # fn main() -> ultradict::Result<()> {
/// use std::time::Duration;
/// use ultradict::{LockOptions, UltraDict};
///
/// let d: UltraDict<u32, u32> = UltraDict::builder().open()?;
/// let _guard = d.lock_with(LockOptions::new().timeout(Duration::from_millis(250)))?;
/// # Ok(()) }
/// ```
///
/// There is no "steal after timeout" switch: a holder whose process died (its pid is gone, a
/// zombie, or reused by a process with another start time) is taken over at the next attempt,
/// whatever the options, and a live holder is never robbed: the caller gets
/// [`Error::LockTimeout`](crate::Error::LockTimeout) or [`Error::WouldBlock`](crate::Error::WouldBlock)
/// with its pid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LockOptions {
    pub(crate) wait: Wait,
    pub(crate) spins: u32,
    pub(crate) sleep_time: Duration,
}

/// Whether and how long to wait.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Wait {
    Forever,
    NonBlocking,
    Timeout(Duration),
}

impl Default for LockOptions {
    fn default() -> Self {
        LockOptions {
            wait: Wait::Forever,
            spins: 100,
            sleep_time: Duration::from_millis(50),
        }
    }
}

impl LockOptions {
    /// Wait as long as it takes (the default), spinning briefly, then sleeping on the futex.
    pub fn new() -> Self {
        Self::default()
    }

    /// Do not wait: fail at once with [`Error::WouldBlock`](crate::Error::WouldBlock) if a live
    /// process holds the lock.
    pub fn non_blocking(mut self) -> Self {
        self.wait = Wait::NonBlocking;
        self
    }

    /// Give up after `timeout` with [`Error::LockTimeout`](crate::Error::LockTimeout) (never
    /// before).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.wait = Wait::Timeout(timeout);
        self
    }

    /// Compare-and-swap attempts before the first sleep (default 100). Spinning wins when
    /// critical sections are a few hundred nanoseconds. After them, and before every sleep, a
    /// waiter backs off for up to 20 us without touching the lock, so that a holder in another
    /// process runs its next critical sections undisturbed; 0 sleeps at once, without either.
    pub fn spin(mut self, attempts: u32) -> Self {
        self.spins = attempts;
        self
    }

    /// The longest single sleep on the futex between two looks at the holder (default 50 ms;
    /// UltraDict's `sleep_time`). A release wakes a sleeper at once; this bounds how late a
    /// dead holder is noticed. Values under 1 ms are raised to 1 ms.
    pub fn sleep_time(mut self, sleep_time: Duration) -> Self {
        self.sleep_time = sleep_time.max(Duration::from_millis(1));
        self
    }
}

/// A handle's re-entrant hold on its dict's writers' lock: which thread holds the lock through
/// this handle, and how often it entered. Only that thread changes it while it holds the lock.
#[derive(Debug, Default)]
pub(crate) struct Reentrant {
    /// `fork generation << 32 | thread id` of the holding thread, 0 if none: a thread of a
    /// forked child never passes for the parent's thread that held the lock at the fork.
    owner: AtomicU64,
    /// The lock word this handle's holder wrote, to release exactly its own hold.
    word: AtomicU32,
    /// How many times the owner entered.
    depth: AtomicU32,
}

#[inline]
fn owner_key(thread: ThreadId) -> u64 {
    (thread.generation << 32) | u64::from(thread.tid)
}

impl Reentrant {
    /// Enters once more if `thread` already holds the lock through this handle; returns the
    /// key for its guard.
    #[inline]
    pub(crate) fn reenter(&self, thread: ThreadId) -> Option<u64> {
        let key = owner_key(thread);
        if self.owner.load(Ordering::Relaxed) != key {
            return None;
        }
        // Only the owner thread touches `depth`: a load and a store, no atomic RMW.
        self.depth
            .store(self.depth.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        Some(key)
    }

    /// Records that `thread` just took the lock as `word`; returns the key for its guard.
    #[inline]
    pub(crate) fn enter(&self, thread: ThreadId, word: u32) -> u64 {
        let key = owner_key(thread);
        self.word.store(word, Ordering::Relaxed);
        self.depth.store(1, Ordering::Relaxed);
        self.owner.store(key, Ordering::Relaxed);
        key
    }

    /// Leaves one level of the hold taken as `key`; after the last, returns the lock word to
    /// release. Does nothing unless the calling thread is the holder that took `key` (a guard
    /// copied into a forked child, or moved to another thread, releases nothing).
    #[inline]
    pub(crate) fn leave(&self, key: u64) -> Option<u32> {
        // A guard cannot move to another thread (it is not `Send`), so only a fork can put it
        // in the hands of a thread other than the one that took it: compare generations.
        if self.owner.load(Ordering::Relaxed) != key || key >> 32 != crate::os::fork_generation() {
            return None;
        }
        let depth = self.depth.load(Ordering::Relaxed) - 1;
        self.depth.store(depth, Ordering::Relaxed);
        if depth > 0 {
            return None;
        }
        self.owner.store(0, Ordering::Relaxed);
        Some(self.word.load(Ordering::Relaxed))
    }

    /// Whether the calling thread holds the lock through this handle.
    pub(crate) fn held_by_caller(&self) -> bool {
        let owner = self.owner.load(Ordering::Relaxed);
        owner != 0 && owner == owner_key(crate::os::current_thread())
    }
}

/// What a guard releases: one level of a re-entrant hold.
pub(crate) trait Unlock: Sync {
    /// Leaves one level of the hold taken as `key`, releasing the lock after the last.
    fn unlock(&self, key: u64);
}

/// Holds a dict's cross-process lock for the thread that took it; dropping it releases the
/// lock (or one level of it, when taken re-entrantly).
///
/// The guard cannot move to another thread: the lock belongs to the thread. A guard copied
/// into a forked child releases nothing there.
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct LockGuard<'a> {
    holder: &'a dyn Unlock,
    /// The holding thread, as `Reentrant::owner` records it.
    key: u64,
    _not_send: std::marker::PhantomData<*const ()>,
}

impl<'a> LockGuard<'a> {
    pub(crate) fn new(holder: &'a dyn Unlock, key: u64) -> Self {
        LockGuard {
            holder,
            key,
            _not_send: std::marker::PhantomData,
        }
    }
}

impl Drop for LockGuard<'_> {
    fn drop(&mut self) {
        self.holder.unlock(self.key);
    }
}

impl fmt::Debug for LockGuard<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LockGuard")
    }
}

// ---------------------------------------------------------------- a handle taking the lock

impl<S: Schema> Engine<S> {
    /// Whether the calling thread holds the writers' lock through this handle.
    pub(crate) fn holds_lock(&self) -> bool {
        self.reentrant.held_by_caller()
    }

    /// Whether the handle in slot `slot` lives (see `liveness`).
    fn slot_alive(&self, slot: usize) -> bool {
        self.membership.anchor.read().slot_alive(slot)
    }

    /// Runs `take` if the handle in slot `slot` is dead, with the slot pinned: no handle can
    /// claim it meanwhile (see `lock` and `Anchor::pin_dead_slot`).
    fn if_slot_dead(&self, slot: usize, take: &mut dyn FnMut() -> bool) -> bool {
        let anchor = self.membership.anchor.read();
        let Some(pin) = anchor.pin_dead_slot(slot) else {
            return false;
        };
        let taken = take();
        drop(pin);
        taken
    }

    /// Takes the writers' lock for the calling thread (re-entrantly).
    pub(crate) fn acquire(&self, options: &LockOptions) -> Result<LockGuard<'_>> {
        self.hold(options).map(Held::into_guard)
    }

    /// Takes the writers' lock for the calling thread (re-entrantly), for the engine's own
    /// writes: the uncontended path is inlined into the caller and the hold is released
    /// without the public guard's dynamic call. A profile of a hot `insert` put a tenth of it
    /// in passing the guard out of an out-of-line `acquire` (stores reloaded before they
    /// could be forwarded).
    #[inline]
    pub(crate) fn hold(&self, options: &LockOptions) -> Result<Held<'_, S>> {
        let me = crate::os::current_thread();
        if let Some(key) = self.reentrant.reenter(me) {
            return Ok(Held {
                engine: self,
                key,
                _not_send: std::marker::PhantomData,
            });
        }
        if let Some(slot) = self.membership.slot_in(me.generation) {
            let word = lock::holder_word(slot, me.tid);
            // A free lock is held by nobody, this thread through another handle included.
            if lock::take_free(&self.control().lock.0, 0, word) {
                return Ok(self.entered(me, word));
            }
        }
        self.hold_contended(me, options)
    }

    /// The hold just taken as `word` by `me`.
    #[inline]
    fn entered(&self, me: ThreadId, word: u32) -> Held<'_, S> {
        let held = Held {
            engine: self,
            key: self.reentrant.enter(me, word),
            _not_send: std::marker::PhantomData,
        };
        crate::fault::point("locked");
        held
    }

    /// [`hold`](Self::hold) when the lock was not free at the first look (or this thread has
    /// no slot yet in a forked child).
    #[cold]
    #[inline(never)]
    fn hold_contended(&self, me: ThreadId, options: &LockOptions) -> Result<Held<'_, S>> {
        let slot = match self.membership.slot_in(me.generation) {
            Some(slot) => slot,
            None => self.attach_in_fork(me.generation, self.patience)?,
        };
        let word = lock::holder_word(slot, me.tid);
        let control = self.control();
        let fields = &control.lock.0;
        self.check_not_held_elsewhere(fields, slot, me.tid)?;
        // Only a timed wait needs the clock; an uncontended acquire should not pay for it.
        let started = matches!(options.wait, Wait::Timeout(_)).then(Instant::now);
        let policy = WaitPolicy {
            spins: options.spins,
            max_sleep: options.sleep_time,
        };
        let holders = HoldersOf(self);
        let acquired = match options.wait {
            Wait::NonBlocking => lock::try_acquire(fields, word, &holders),
            Wait::Forever => lock::acquire(fields, word, policy, None, &holders),
            Wait::Timeout(timeout) => lock::acquire(
                fields,
                word,
                policy,
                started.map(|started| {
                    started
                        .checked_add(timeout)
                        .unwrap_or_else(|| crate::sync::deadline_in(timeout))
                }),
                &holders,
            ),
        };
        match acquired {
            Ok(how) => {
                let held = Held {
                    engine: self,
                    key: self.reentrant.enter(me, word),
                    _not_send: std::marker::PhantomData,
                };
                if let Acquired::FromDead { dead_slot } = how {
                    self.tidy_after_dead_holder(dead_slot);
                }
                crate::fault::point("locked");
                Ok(held)
            }
            Err(busy) => {
                let holder_pid = busy.holder_slot.map_or(0, |slot| control.slot_pid(slot).0);
                Err(match options.wait {
                    Wait::NonBlocking => Error::WouldBlock {
                        name: self.place.name().to_owned(),
                        holder_pid,
                        holder_host: None,
                    },
                    _ => Error::LockTimeout {
                        name: self.place.name().to_owned(),
                        holder_pid,
                        holder_host: None,
                        waited: started.map(|started| started.elapsed()).unwrap_or_default(),
                    },
                })
            }
        }
    }

    /// Waiting for a lock that this very thread holds through another handle of the same
    /// dict would never end: that is an error instead.
    fn check_not_held_elsewhere(
        &self,
        fields: &crate::control::LockFields,
        slot: usize,
        tid: u32,
    ) -> Result<()> {
        let holder = lock::holder(fields);
        if holder == 0 || lock::tid_of(holder) != tid {
            return Ok(());
        }
        let ours = lock::slot_of(holder).is_some_and(|held| {
            held != slot
                && self.control().processes[held].owner.load(Ordering::Acquire)
                    == crate::os::process_nonce()
        });
        if ours {
            return Err(Error::LockedByOtherHandle {
                name: self.place.name().to_owned(),
            });
        }
        Ok(())
    }

    /// A holder died: whatever it left half done is garbage. Its unpublished records are
    /// ignored by construction; remove the dump segments it may have left behind (an
    /// unpublished next dump, or a superseded one it had not unlinked yet), and bring the epoch
    /// word up to date if it died between publishing an epoch and storing it there.
    fn tidy_after_dead_holder(&self, dead_slot: Option<usize>) {
        let control = self.control();
        control.published().mend_epoch();
        if let Some(slot) = dead_slot {
            control
                .lock
                .last_dead_pid
                .store(control.slot_pid(slot).0, Ordering::Relaxed);
        }
        let epoch = control.state().epoch;
        let _ = segment::unlink(&self.dump_object(epoch.wrapping_add(1)));
        if epoch > 1 {
            let _ = segment::unlink(&self.dump_object(epoch - 1));
        }
        // The dead writer may have published and died before waking the sleepers.
        control.published().wake_sleepers();
    }

    /// Takes over the writers' lock if its word names `slot` (just claimed by this handle, so
    /// the holder that had it died), tidies after it and lets the lock go.
    pub(crate) fn recover_lock_of(&self, slot: usize) {
        let control = self.control();
        let current = control.lock.word.load(Ordering::Acquire);
        if lock::slot_of(current & !lock::WAITERS) != Some(slot) {
            return;
        }
        let me = crate::os::current_thread();
        let word = lock::holder_word(slot, me.tid);
        if lock::take_over(&control.lock.0, current, word) {
            self.tidy_after_dead_holder(Some(slot));
            lock::release(&control.lock.0, word);
        }
    }
}

/// The judge of an engine's lock holders: its anchor.
struct HoldersOf<'a, S: Schema>(&'a Engine<S>);

impl<S: Schema> lock::Holders for HoldersOf<'_, S> {
    fn alive(&self, slot: usize) -> bool {
        self.0.slot_alive(slot)
    }

    fn if_dead(&self, slot: usize, take: &mut dyn FnMut() -> bool) -> bool {
        self.0.if_slot_dead(slot, take)
    }
}

impl<S: Schema> Unlock for Engine<S> {
    #[inline]
    fn unlock(&self, key: u64) {
        if let Some(word) = self.reentrant.leave(key) {
            lock::release(&self.control().lock.0, word);
        }
    }
}

/// The writers' lock as the engine holds it for one of its own operations: what a
/// [`LockGuard`] is, without the dynamic call (see [`Engine::hold`]).
#[must_use = "the lock is released as soon as the hold is dropped"]
pub(crate) struct Held<'a, S: Schema> {
    engine: &'a Engine<S>,
    key: u64,
    /// Not `Send`, like [`LockGuard`]: the hold belongs to the thread that took it.
    _not_send: std::marker::PhantomData<*const ()>,
}

impl<'a, S: Schema> Held<'a, S> {
    /// The same hold as a public guard.
    fn into_guard(self) -> LockGuard<'a> {
        let this = std::mem::ManuallyDrop::new(self);
        LockGuard::new(this.engine, this.key)
    }
}

impl<S: Schema> Drop for Held<'_, S> {
    #[inline]
    fn drop(&mut self) {
        self.engine.unlock(self.key);
    }
}
