//! The storage seam: what the handle layer asks of the engine that moves a dict's records and
//! dumps between processes, sized from what the handle layer calls. The shared-memory engine
//! (`engine.rs`, `open.rs`) implements it; a second backend implements the same trait, and the
//! handle layer above does not change.
//!
//! Also the values that cross the seam: a handle's [`View`] of the state (a dump, wherever its
//! bytes live, and the records applied since), a [`Position`] in the dict's history, what
//! happened [`Since`] a position, and what a leaving handle is told ([`Departure`]).

use std::time::Duration;

use crate::dump::Dump;
use crate::error::Result;
use crate::lock_guard::{LockGuard, LockOptions};
use crate::options::{Lifetime, Options};
use crate::schema::Schema;
use crate::status::Status;

/// A position in a dict's history: an epoch (each full dump starts one) and how far into that
/// epoch's records, packed the backend's way. The handle layer only compares positions and
/// hands them back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Position(pub(crate) u128);

/// What a process knows of the shared state: a position, the dump of its epoch (mapped or in
/// a heap buffer: [`Dump`] reads both), and the records applied on top of that dump.
pub(crate) struct View<S: Schema> {
    pub(crate) position: Position,
    pub(crate) dump: Option<Dump<S::Dump>>,
    pub(crate) overlay: S::Overlay,
}

impl<S: Schema> View<S> {
    /// The root of the current dump, if this epoch has one.
    pub(crate) fn dump(&self) -> Option<&S::Dump> {
        self.dump.as_ref().map(Dump::root)
    }

    /// The view of a dict with no dump and no records.
    pub(crate) fn empty() -> Self {
        View {
            position: Position(0),
            dump: None,
            overlay: S::overlay_for(None),
        }
    }
}

/// What happened since a position.
pub(crate) enum Since<U> {
    /// Nothing was published.
    Nothing,
    /// These updates, in order, lead to this position.
    Updates(Vec<U>, Position),
    /// A full dump started a new epoch: the updates in between are not known one by one.
    Reset(Position),
}

/// What a handle leaving its dict is told, for the lifetime policy to decide on removal.
pub(crate) struct Departure {
    /// No other handle is attached (in any process or PID namespace).
    pub(crate) last: bool,
    /// This handle created the dict (in this process: not a forked child's copy).
    pub(crate) creator: bool,
}

/// A backend's engine for one handle.
pub(crate) trait Storage: Send + Sync + Sized {
    /// What the dict stores.
    type Schema: Schema;

    /// Creates or attaches to the dict `options` name; a dict created here starts from
    /// `initial` (visible to others only once complete).
    fn open(options: &Options, initial: Option<&<Self::Schema as Schema>::Update>) -> Result<Self>;

    /// The dict's name.
    fn name(&self) -> &str;

    /// The dict's lifetime, as its creator chose it.
    fn lifetime(&self) -> Lifetime;

    /// Runs `f` on a view caught up with the published state, and returns what it returns.
    /// The read path: with no news it must cost next to nothing. `f` may fail, and its
    /// `Result` is passed on as it is: a derived getter that nested its `Result` in this one
    /// and unwrapped it with `?` paid about 10 ns a read for the 88-byte `Result` being packed
    /// and unpacked through the stack (`cargo bench --bench derive_ops`: 17.3 ns, now 6.9).
    fn read<R>(&self, f: impl FnOnce(&View<Self::Schema>) -> Result<R>) -> Result<R>;

    /// Brings this handle's view up to the published state as far as this handle knows it
    /// (on a remote backend, what its subscription has delivered: no round trip).
    fn catch_up(&self) -> Result<()>;

    /// Brings this handle's view up to the state the backend holds now: a read after this is
    /// linearizable. The shared-memory backend's catch-up already is.
    fn sync(&self) -> Result<()> {
        self.catch_up()
    }

    /// Catches up; with `force`, rebuilds the view from the current dump and records.
    fn reload(&self, force: bool) -> Result<()>;

    /// Commits `update` as one record, compare-and-append: `decide` sees the view caught up
    /// with every committed record and says whether to commit the update and what to return;
    /// nothing is committed in between. A backend whose append can lose a race (another
    /// writer got there first) catches up and calls `decide` again, so it must not have side
    /// effects. A record that does not fit starts a new epoch with a full dump.
    fn write<R>(
        &self,
        update: <Self::Schema as Schema>::Update,
        decide: impl FnMut(&View<Self::Schema>, &<Self::Schema as Schema>::Update) -> Result<(bool, R)>,
    ) -> Result<R>;

    /// [`write`](Self::write) for an update that displaces something (a map's insert or
    /// remove: the key's old value): commits `update` if `decide` says so, and returns what it
    /// displaced, or `None` if nothing was committed. The default looks the displaced value up
    /// before committing; the shared-memory engine moves it out of the overlay as it applies
    /// the record instead, which saves a lookup and a clone on the hot path.
    fn write_displacing(
        &self,
        update: <Self::Schema as Schema>::Update,
        mut decide: impl FnMut(&View<Self::Schema>, &<Self::Schema as Schema>::Update) -> Result<bool>,
    ) -> Result<Option<<Self::Schema as Schema>::Displaced>> {
        self.write(update, |view, update| {
            if !decide(view, update)? {
                return Ok((false, None));
            }
            let displaced = Self::Schema::displaced(view.dump(), &view.overlay, update)
                .map_err(|e| crate::Error::undeserializable(&e))?;
            Ok((true, Some(displaced)))
        })
    }

    /// Starts a new epoch with a full dump of the state plus `update`, all or nothing.
    fn write_via_dump(&self, update: Option<&<Self::Schema as Schema>::Update>) -> Result<()>;

    /// The updates committed since `position`, and where they lead.
    fn updates_since(&self, position: Position) -> Result<Since<<Self::Schema as Schema>::Update>>;

    /// The published position.
    fn published(&self) -> Position;

    /// The position this handle's view has reached.
    fn position(&self) -> Position;

    /// Sleeps until the published position differs from `seen`, at most `timeout`; returns
    /// whether it did.
    fn wait_for_change(&self, seen: Position, timeout: Duration) -> bool;

    /// Takes the dict's writers' lock for the calling thread (re-entrantly).
    fn lock(&self, options: &LockOptions) -> Result<LockGuard<'_>>;

    /// The dict's shared state.
    fn status(&self) -> Status;

    /// Fails with `Error::Removed` if a removal of the dict began.
    fn check_not_removed(&self) -> Result<()>;

    /// Whether this handle created the dict.
    fn created_here(&self) -> bool;

    /// Leaves the dict; removes it if `remove` says so.
    fn detach(&self, remove: impl FnOnce(&Departure) -> bool) -> Result<()>;

    /// Removes the dict (if its name still names it) and its nested dicts.
    fn unlink(&self) -> Result<()>;

    /// Every published position from now on, for async waiters.
    #[cfg(feature = "tokio")]
    fn subscribe(&self) -> tokio::sync::watch::Receiver<Position>;
}
