//! The public face of the cross-process lock: how to wait for it, and the guard that holds it.

use std::fmt;
use std::time::Duration;

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
    /// critical sections are a few hundred nanoseconds; 0 sleeps at once.
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

/// What a guard releases: a handle's re-entrant hold on its dict's writers' lock.
pub(crate) trait Unlock: Sync {
    fn unlock(&self);
}

/// Holds a dict's cross-process lock for the thread that took it; dropping it releases the
/// lock (or one level of it, when taken re-entrantly).
///
/// The guard cannot move to another thread: the lock belongs to the thread.
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct LockGuard<'a> {
    holder: &'a dyn Unlock,
    _not_send: std::marker::PhantomData<*const ()>,
}

impl<'a> LockGuard<'a> {
    pub(crate) fn new(holder: &'a dyn Unlock) -> Self {
        LockGuard {
            holder,
            _not_send: std::marker::PhantomData,
        }
    }
}

impl Drop for LockGuard<'_> {
    fn drop(&mut self) {
        self.holder.unlock();
    }
}

impl fmt::Debug for LockGuard<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LockGuard")
    }
}
