//! The backend a handle's dict lives on, chosen when it is opened: shared memory on this
//! machine, or (with the `redis` feature) a Redis server that processes on many machines
//! reach. The handle layer holds a [`Backend`] and calls it through the storage seam
//! (`storage.rs`); this file only dispatches, plus the few things that differ by backend and
//! are not storage: where a nested dict lives and how it is registered.

use std::time::Duration;

use crate::engine::Engine;
use crate::error::Result;
use crate::lock_guard::{LockGuard, LockOptions};
use crate::options::{Lifetime, Options};
use crate::schema::Schema;
use crate::status::Status;
use crate::storage::{Departure, Position, Since, Storage, View};

/// One handle's engine, on the backend its options chose.
#[allow(
    clippy::large_enum_variant,
    reason = "the shared-memory engine stays inline: its reads take no extra indirection"
)]
pub(crate) enum Backend<S: Schema> {
    Shm(Engine<S>),
    #[cfg(feature = "redis")]
    Redis(Box<crate::remote::RedisEngine<S>>),
}

/// Runs the same expression on whichever engine `self` holds.
macro_rules! each {
    ($self:expr, $engine:ident => $body:expr) => {
        match $self {
            Backend::Shm($engine) => $body,
            #[cfg(feature = "redis")]
            Backend::Redis($engine) => $body,
        }
    };
}

impl<S: Schema> Backend<S> {
    /// Runs `f` holding the writers' lock (re-entrantly). On shared memory this is the
    /// engine's own inlined hold, not the public guard with its dynamic release: `update`
    /// takes the lock around a read and a write.
    #[inline]
    pub(crate) fn locked<R>(&self, f: impl FnOnce() -> Result<R>) -> Result<R> {
        match self {
            Backend::Shm(engine) => {
                let _held = engine.hold(&LockOptions::default())?;
                f()
            }
            #[cfg(feature = "redis")]
            Backend::Redis(engine) => {
                let _guard = engine.lock(&LockOptions::default())?;
                f()
            }
        }
    }

    /// An atomic read-modify-write: `read` looks at the view caught up under the writers'
    /// lock, `make` turns what it found into the update to commit and what to return, and
    /// nothing else is committed in between. `make` may use the dict (the lock is re-entrant).
    /// On shared memory, one hold of the lock and of the view (`Engine::modify`).
    #[inline]
    pub(crate) fn modify<T, R>(
        &self,
        read: impl FnOnce(&View<S>) -> Result<T>,
        make: impl FnOnce(T) -> (S::Update, R),
    ) -> Result<R> {
        match self {
            Backend::Shm(engine) => engine.modify(read, make),
            #[cfg(feature = "redis")]
            Backend::Redis(engine) => {
                let _guard = engine.lock(&LockOptions::default())?;
                let (update, result) = make(engine.read(read)?);
                engine.write(update, |_, _| Ok((true, ())))?;
                Ok(result)
            }
        }
    }

    /// The options a nested dict of this one, named `name`, is opened with: on the same
    /// backend, in the same place, with `options`' timeouts.
    pub(crate) fn nested_options(&self, options: &Options, name: String) -> Options {
        match self {
            Backend::Shm(engine) => engine.nested_options(options, name),
            #[cfg(feature = "redis")]
            Backend::Redis(engine) => Options {
                remote: Some(engine.target().clone()),
                ..options.nested(name)
            },
        }
    }

    /// Records `child`, described by `what`, as a nested dict of this one.
    pub(crate) fn register_child(&self, child: &str, what: &str) -> Result<()> {
        match self {
            Backend::Shm(engine) => {
                crate::register::register_child(engine.place(), engine.mode, child, what)?;
                // A remover marks the dict, then lists the objects under its name: if it marked
                // it by now, it may have listed them before this made the register. The
                // caller, seeing the mark, fails; the register goes with the dict here.
                if engine.control().is_removed() {
                    crate::removal::remove_by_name(&engine.place().register())?;
                }
                Ok(())
            }
            #[cfg(feature = "redis")]
            Backend::Redis(engine) => engine.register_child(child, what),
        }
    }
}

impl<S: Schema> Storage for Backend<S> {
    type Schema = S;

    fn open(options: &Options, initial: Option<&S::Update>) -> Result<Self> {
        #[cfg(feature = "redis")]
        if options.remote.is_some() {
            return crate::remote::RedisEngine::open(options, initial)
                .map(|engine| Backend::Redis(Box::new(engine)));
        }
        Engine::open(options, initial).map(Backend::Shm)
    }

    fn name(&self) -> &str {
        each!(self, engine => engine.name())
    }

    fn lifetime(&self) -> Lifetime {
        each!(self, engine => engine.lifetime())
    }

    fn read<R>(&self, f: impl FnOnce(&View<S>) -> Result<R>) -> Result<R> {
        each!(self, engine => engine.read(f))
    }

    fn catch_up(&self) -> Result<()> {
        each!(self, engine => engine.catch_up())
    }

    fn sync(&self) -> Result<()> {
        each!(self, engine => engine.sync())
    }

    fn reload(&self, force: bool) -> Result<()> {
        each!(self, engine => engine.reload(force))
    }

    fn write<R>(
        &self,
        update: S::Update,
        decide: impl FnMut(&View<S>, &S::Update) -> Result<(bool, R)>,
    ) -> Result<R> {
        each!(self, engine => engine.write(update, decide))
    }

    fn write_displacing(
        &self,
        update: S::Update,
        decide: impl FnMut(&View<S>, &S::Update) -> Result<bool>,
    ) -> Result<Option<S::Displaced>> {
        each!(self, engine => engine.write_displacing(update, decide))
    }

    fn write_via_dump(&self, update: Option<&S::Update>) -> Result<()> {
        each!(self, engine => engine.write_via_dump(update))
    }

    fn updates_since(&self, position: Position) -> Result<Since<S::Update>> {
        each!(self, engine => engine.updates_since(position))
    }

    fn published(&self) -> Position {
        each!(self, engine => engine.published())
    }

    fn position(&self) -> Position {
        each!(self, engine => engine.position())
    }

    fn wait_for_change(&self, seen: Position, timeout: Duration) -> bool {
        each!(self, engine => engine.wait_for_change(seen, timeout))
    }

    fn lock(&self, options: &LockOptions) -> Result<LockGuard<'_>> {
        each!(self, engine => engine.lock(options))
    }

    fn status(&self) -> Status {
        each!(self, engine => engine.status())
    }

    fn check_not_removed(&self) -> Result<()> {
        each!(self, engine => engine.check_not_removed())
    }

    fn created_here(&self) -> bool {
        each!(self, engine => engine.created_here())
    }

    fn detach(&self, remove: impl FnOnce(&Departure) -> bool) -> Result<()> {
        each!(self, engine => engine.detach(remove))
    }

    fn unlink(&self) -> Result<()> {
        each!(self, engine => engine.unlink())
    }

    #[cfg(feature = "tokio")]
    fn subscribe(&self) -> tokio::sync::watch::Receiver<Position> {
        each!(self, engine => engine.subscribe())
    }
}
