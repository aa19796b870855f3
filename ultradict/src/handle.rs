//! The handle layer: what every handle does, whatever it stores, written once over the storage
//! engine. A map ([`UltraDict`](crate::UltraDict)), a derived state's handle and a nested dict
//! each wrap a [`Dict`] and add their own reads and writes.
//!
//! It owns the lifetime policy (whether a handle that leaves removes the dict), teardown
//! (children keep their parent attached), and the methods every handle has: the lock, dumps
//! and reloads, status, waiting and watching, removal. The engine below knows none of this: it
//! moves records and dumps, and tells a leaving handle whether it was the last.

use std::any::Any;
use std::sync::Arc;
use std::time::Duration;

use crate::backend::Backend;
use crate::error::Result;
use crate::lock_guard::{LockGuard, LockOptions};
use crate::options::{Lifetime, Options};
use crate::schema::Schema;
use crate::status::Status;
use crate::storage::{Departure, Storage};
use crate::watch::Watcher;

/// One handle on a shared dict of schema `S`. Used by `UltraDict` and by generated code; not
/// a stable API.
#[doc(hidden)]
pub struct Dict<S: Schema> {
    /// Shared with the handles of dicts nested in this one, which keep it attached.
    attached: Arc<Attached<S>>,
    /// The dict this one is nested in, kept attached while this handle lives.
    _parent: Option<Arc<dyn Any + Send + Sync>>,
}

/// An engine attached to its dict; leaving it applies the lifetime policy.
struct Attached<S: Schema> {
    engine: Backend<S>,
}

impl<S: Schema> Attached<S> {
    fn leave(&self) -> Result<()> {
        let lifetime = self.engine.lifetime();
        self.engine
            .detach(|departure| !keeping() && removes_dict(lifetime, departure))
    }
}

impl<S: Schema> Drop for Attached<S> {
    fn drop(&mut self) {
        let _ = self.leave();
    }
}

/// The lifetime policy: whether a handle leaving its dict removes it.
fn removes_dict(lifetime: Lifetime, departure: &Departure) -> bool {
    match lifetime {
        Lifetime::LastClose => departure.last,
        Lifetime::Creator => departure.creator,
        Lifetime::Persistent => false,
    }
}

impl<S: Schema> Dict<S> {
    /// Creates or attaches to a dict as `options` say; a dict created here starts from
    /// `initial`.
    pub(crate) fn open(options: &Options, initial: Option<&S::Update>) -> Result<Self> {
        let attached = Arc::new(Attached {
            engine: Backend::open(options, initial)?,
        });
        if let Backend::Shm(engine) = &attached.engine {
            // In its final place now.
            engine.watch_forks();
        }
        Ok(Dict {
            attached,
            _parent: None,
        })
    }

    /// The engine below.
    pub(crate) fn engine(&self) -> &Backend<S> {
        &self.attached.engine
    }

    /// Opens the nested dict `options` name under this one, registers it as `what`, and keeps
    /// this dict attached while the nested handle lives. A nested dict created here starts
    /// from `initial`.
    ///
    /// # Errors
    /// [`Error::Removed`](crate::Error::Removed) if this dict was removed (before or while the
    /// child was opened), and the errors of opening.
    pub(crate) fn open_nested<C: Schema>(
        &self,
        options: &Options,
        initial: Option<&C::Update>,
        what: &str,
    ) -> Result<Dict<C>> {
        self.engine().check_not_removed()?;
        let mut child = Dict::<C>::open(options, initial)?;
        self.engine().register_child(child.name(), what)?;
        // A remover marks this dict before it lists the objects under its name: either it
        // listed the child, or this sees the mark and takes back the child if it created it.
        if let Err(removed) = self.engine().check_not_removed() {
            if child.engine().created_here() {
                let _ = child.engine().unlink();
            }
            return Err(removed);
        }
        child._parent = Some(self.attached.clone());
        Ok(child)
    }

    /// Records `child` in this dict's register as `what`; fails with
    /// [`Error::Removed`](crate::Error::Removed) if this dict was removed meanwhile. Used for
    /// nested struct fields (`Nested::open_in`).
    pub(crate) fn register_child(&self, child: &str, what: &str) -> Result<()> {
        let engine = self.engine();
        engine.check_not_removed()?;
        engine.register_child(child, what)?;
        engine.check_not_removed()
    }

    /// The dict's name, as other processes open it.
    pub fn name(&self) -> &str {
        self.engine().name()
    }

    /// Takes the cross-process lock as `options` say.
    ///
    /// # Errors
    /// See the handle's `lock_with`.
    pub fn lock_with(&self, options: LockOptions) -> Result<LockGuard<'_>> {
        self.engine().lock(&options)
    }

    /// Blocks until some process commits an update this handle has not seen, or `timeout`.
    ///
    /// # Errors
    /// None today; the `Result` leaves room for backends whose waits can fail.
    pub fn wait_for_change(&self, timeout: Duration) -> Result<bool> {
        let engine = self.engine();
        Ok(engine.wait_for_change(engine.position(), timeout))
    }

    /// Waits (awaiting, not blocking a thread) until some process commits an update this
    /// handle has not seen, or `timeout` passes; returns whether there is news. Needs a tokio
    /// runtime with its time driver (`enable_time`, or `enable_all`).
    ///
    /// # Errors
    /// None today; the `Result` leaves room for backends whose waits can fail.
    #[cfg(feature = "tokio")]
    pub async fn wait_for_change_async(&self, timeout: Duration) -> Result<bool> {
        let engine = self.engine();
        // Subscribed before looking, so that a publication in between is not missed.
        let mut published = engine.subscribe();
        let seen = engine.position();
        if engine.published() != seen {
            return Ok(true);
        }
        let changed = async {
            loop {
                if published.changed().await.is_err() {
                    // The helper that fed this subscription is gone (it could not start): a
                    // later subscription may have started another; if none runs, wait out
                    // the timeout.
                    published = engine.subscribe();
                    if published.has_changed().is_err() {
                        std::future::pending::<()>().await;
                    }
                }
                if *published.borrow_and_update() != seen {
                    return;
                }
            }
        };
        Ok(tokio::time::timeout(timeout, changed).await.is_ok())
    }

    /// A watcher of the keys (or fields) this dict's records touch.
    pub fn watch(&self) -> Watcher<'_, S::Touched> {
        Watcher::new(self.engine())
    }

    /// Writes a full dump now.
    ///
    /// # Errors
    /// See the handle's `dump`.
    pub fn dump(&self) -> Result<()> {
        self.engine().write_via_dump(None)
    }

    /// Brings this handle's view to the state the backend holds now, so that the reads after
    /// it are linearizable (see the handle's `sync`).
    ///
    /// # Errors
    /// See the handle's `sync`.
    pub fn sync(&self) -> Result<()> {
        self.engine().sync()
    }

    /// Catches up; with `force`, rebuilds the view from the dump and stream.
    ///
    /// # Errors
    /// See the handle's `load`.
    pub fn load(&self, force: bool) -> Result<()> {
        self.engine().reload(force)
    }

    /// Applies what other processes committed since this handle last looked.
    ///
    /// # Errors
    /// See the handle's `apply_update`.
    pub fn apply_update(&self) -> Result<()> {
        self.engine().catch_up()
    }

    /// The dict's shared state.
    pub fn status(&self) -> Status {
        self.engine().status()
    }

    /// Removes the dict (if the name still names it) with its nested dicts.
    ///
    /// # Errors
    /// See the handle's `unlink`.
    pub fn unlink(&self) -> Result<()> {
        self.engine().unlink()
    }

    /// Leaves the dict now, applying its lifetime, unless handles of nested dicts keep it
    /// attached (it is then left when the last of them closes).
    ///
    /// # Errors
    /// If removing the dict's objects failed.
    pub fn close(self) -> Result<()> {
        match Arc::into_inner(self.attached) {
            Some(attached) => attached.leave(),
            None => Ok(()),
        }
    }
}

#[cfg(feature = "tool")]
thread_local! {
    /// Set while [`drop_keeping`] drops handles on this thread.
    static KEEPING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Drops `handles` (any handle types, with their nested handles) without applying their
/// lifetime: a looking-on handle (the `tool` module's) must never be the last close that
/// removes a dict.
#[cfg(feature = "tool")]
pub(crate) fn drop_keeping<T>(handles: T) {
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            KEEPING.set(false);
        }
    }
    KEEPING.set(true);
    let _reset = Reset;
    drop(handles);
}

/// Whether handles dropped now keep their dicts (see [`drop_keeping`]).
fn keeping() -> bool {
    #[cfg(feature = "tool")]
    return KEEPING.get();
    #[cfg(not(feature = "tool"))]
    false
}

/// The async methods every handle type has with the `tokio` feature (none without it): see
/// [`__handle_methods`].
#[cfg(feature = "tokio")]
#[doc(hidden)]
#[macro_export]
macro_rules! __handle_async_methods {
    ($dict:ident) => {
        /// Waits (awaiting, not blocking a thread) until some process commits an update this
        /// handle has not seen, or `timeout` passes; returns whether there is news. One helper
        /// thread per handle bridges the shared futex to the runtime; needs a tokio runtime
        /// with its time driver. Cancelling the future (dropping it) is safe.
        ///
        /// # Errors
        /// None today; the `Result` leaves room for backends whose waits can fail.
        pub async fn wait_for_change_async(
            &self,
            timeout: ::core::time::Duration,
        ) -> $crate::Result<bool> {
            self.$dict.wait_for_change_async(timeout).await
        }
    };
}

/// Without the `tokio` feature, handles have no async methods.
#[cfg(not(feature = "tokio"))]
#[doc(hidden)]
#[macro_export]
macro_rules! __handle_async_methods {
    ($dict:ident) => {};
}

/// The methods every handle type has, as one-line delegations to its [`Dict`] field: the
/// lock, waiting and watching, dumps and reloads, status and removal. Used by `UltraDict` and
/// by the handles `#[derive(SharedDict)]` generates, so they are written once.
#[doc(hidden)]
#[macro_export]
macro_rules! __handle_methods {
    ($dict:ident, $touched:ty) => {
        /// The dict's name, as other processes open it.
        pub fn name(&self) -> &str {
            self.$dict.name()
        }

        /// Takes the cross-process lock. Until the guard drops, every operation of this
        /// thread on this handle belongs to one critical section: other processes and threads
        /// wait. Re-entrant for the thread that holds it.
        ///
        /// # Errors
        /// [`Error::LockedByOtherHandle`]($crate::Error::LockedByOtherHandle) if this thread
        /// holds the lock through another handle of the same dict.
        pub fn lock(&self) -> $crate::Result<$crate::LockGuard<'_>> {
            self.$dict.lock_with($crate::LockOptions::new())
        }

        /// Takes the lock if it is free (or held by a dead process), without waiting.
        ///
        /// # Errors
        /// [`Error::WouldBlock`]($crate::Error::WouldBlock) with the holder's pid.
        pub fn try_lock(&self) -> $crate::Result<$crate::LockGuard<'_>> {
            self.$dict
                .lock_with($crate::LockOptions::new().non_blocking())
        }

        /// Takes the lock, waiting at most `timeout`.
        ///
        /// # Errors
        /// [`Error::LockTimeout`]($crate::Error::LockTimeout) with the holder's pid and the
        /// time waited.
        pub fn lock_timeout(
            &self,
            timeout: ::core::time::Duration,
        ) -> $crate::Result<$crate::LockGuard<'_>> {
            self.$dict
                .lock_with($crate::LockOptions::new().timeout(timeout))
        }

        /// Takes the lock as `options` say: waiting forever, not at all, or up to a timeout,
        /// with a chosen spin and sleep policy.
        ///
        /// # Errors
        /// [`Error::WouldBlock`]($crate::Error::WouldBlock) or
        /// [`Error::LockTimeout`]($crate::Error::LockTimeout) with the holder's pid, or
        /// [`Error::LockedByOtherHandle`]($crate::Error::LockedByOtherHandle).
        pub fn lock_with(
            &self,
            options: $crate::LockOptions,
        ) -> $crate::Result<$crate::LockGuard<'_>> {
            self.$dict.lock_with(options)
        }

        /// Blocks until some process (this one included) commits an update this handle has
        /// not seen yet, or `timeout` passes; returns whether there is news. Sleeps on a
        /// shared futex: no spinning.
        ///
        /// # Errors
        /// None today; the `Result` leaves room for backends whose waits can fail.
        pub fn wait_for_change(&self, timeout: ::core::time::Duration) -> $crate::Result<bool> {
            self.$dict.wait_for_change(timeout)
        }

        /// A [`Watcher`]($crate::Watcher) that reports what changes from now on: keys of a
        /// map, stored names of a derived state's plain fields.
        pub fn watch(&self) -> $crate::Watcher<'_, $touched> {
            self.$dict.watch()
        }

        /// Writes a full dump now; the stream starts empty again.
        ///
        /// # Errors
        /// [`Error::OutOfSpace`]($crate::Error::OutOfSpace),
        /// [`Error::DumpTooSmall`]($crate::Error::DumpTooSmall) or
        /// [`Error::Removed`]($crate::Error::Removed); nothing changed then.
        pub fn dump(&self) -> $crate::Result<()> {
            self.$dict.dump()
        }

        /// Catches up with other processes' updates; with `force`, rebuilds this handle's
        /// view from the current dump and stream.
        ///
        /// # Errors
        /// [`Error::Corrupt`]($crate::Error::Corrupt) if shared memory fails validation.
        pub fn load(&self, force: bool) -> $crate::Result<()> {
            self.$dict.load(force)
        }

        /// Brings this handle to the state its backend holds now: the reads that follow see
        /// every write acknowledged to any process before this call. On shared memory every
        /// read already does; on a server, reads serve what the handle's subscription has
        /// delivered (a round trip's delay behind), and this asks the server once.
        ///
        /// # Errors
        /// [`Error::Backend`]($crate::Error::Backend) if the server cannot be reached;
        /// [`Error::Corrupt`]($crate::Error::Corrupt) if what it holds fails validation.
        pub fn sync(&self) -> $crate::Result<()> {
            self.$dict.sync()
        }

        /// Applies the updates other processes committed since this handle last looked.
        /// Reads do this by themselves; call it to move a handle forward without reading.
        ///
        /// # Errors
        /// As [`load`](Self::load).
        pub fn apply_update(&self) -> $crate::Result<()> {
            self.$dict.apply_update()
        }

        /// The dict's shared state: segments, stream use, epoch, dumps, processes, lock
        /// holder.
        pub fn status(&self) -> $crate::Status {
            self.$dict.status()
        }

        /// Removes this dict and its nested dicts from /dev/shm now. Handles that are open
        /// keep reading what they have; the next open of the name creates a new dict.
        ///
        /// # Errors
        /// [`Error::Io`]($crate::Error::Io) if an object could not be removed.
        pub fn unlink(&self) -> $crate::Result<()> {
            self.$dict.unlink()
        }

        $crate::__handle_async_methods!($dict);
    };
}
