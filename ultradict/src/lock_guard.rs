//! The public guard of the cross-process lock.

use std::fmt;

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
