//! Change notification: wait for any process to commit, and watchers that say what changed.
//!
//! Every publication bumps a futex word in the control block; waiters sleep on it (no
//! spinning) and writers make the wake-up call only when someone sleeps. A [`Watcher`] keeps
//! its own position in the stream and reads the records committed since, so it can name the
//! keys (or fields) that changed; when a full dump replaced the stream in between, the
//! individual records are gone and it says [`Change::Everything`].

use std::time::{Duration, Instant};

use crate::error::Result;
use crate::schema::Schema;
use crate::storage::{Position, Since, Storage};

/// What changed since a [`Watcher`] last looked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change<T> {
    /// These keys (or field names) were written or removed, in commit order, each once.
    Keys(Vec<T>),
    /// A full dump or a clear replaced the state in between: anything may have changed.
    Everything,
}

/// How a schema's records name what they touched. Implemented by ultradict's map records and
/// by the records `#[derive(SharedDict)]` generates.
#[doc(hidden)]
pub trait Touches<T> {
    /// Adds what `self` touched to `out`; `false` if it touched everything.
    fn touched(&self, out: &mut Vec<T>) -> bool;
}

/// The engine seen through a watcher: it knows nothing of the schema but what changed.
pub(crate) trait WatchSource<T>: Sync {
    fn published(&self) -> Position;
    fn changes_since(&self, position: Position) -> Result<(Option<Change<T>>, Position)>;
    fn wait_since(&self, position: Position, timeout: Duration) -> bool;
    #[cfg(feature = "tokio")]
    fn subscribe(&self) -> tokio::sync::watch::Receiver<Position>;
}

impl<E: Storage> WatchSource<<E::Schema as Schema>::Touched> for E {
    fn published(&self) -> Position {
        Storage::published(self)
    }

    fn changes_since(
        &self,
        position: Position,
    ) -> Result<(Option<Change<<E::Schema as Schema>::Touched>>, Position)> {
        Ok(match self.updates_since(position)? {
            Since::Nothing => (None, position),
            Since::Reset(now) => (Some(Change::Everything), now),
            Since::Updates(updates, now) => {
                let mut touched = Vec::new();
                for update in &updates {
                    if !update.touched(&mut touched) {
                        return Ok((Some(Change::Everything), now));
                    }
                }
                let mut unique: Vec<<E::Schema as Schema>::Touched> =
                    Vec::with_capacity(touched.len());
                for key in touched {
                    if !unique.contains(&key) {
                        unique.push(key);
                    }
                }
                (Some(Change::Keys(unique)), now)
            }
        })
    }

    fn wait_since(&self, position: Position, timeout: Duration) -> bool {
        self.wait_for_change(position, timeout)
    }

    #[cfg(feature = "tokio")]
    fn subscribe(&self) -> tokio::sync::watch::Receiver<Position> {
        Storage::subscribe(self)
    }
}

/// Follows a dict's commits and says what changed since it last looked.
///
/// ```
/// # fn main() -> ultradict::Result<()> {
/// use std::time::Duration;
/// use ultradict::{Change, UltraDict};
///
/// let d: UltraDict<String, u32> = UltraDict::builder().open()?;
/// let mut watcher = d.watch();
/// d.insert("a".into(), 1)?; // in any process
/// d.insert("b".into(), 2)?;
/// assert_eq!(
///     watcher.wait(Duration::from_secs(1))?,
///     Some(Change::Keys(vec!["a".to_string(), "b".to_string()]))
/// );
/// assert_eq!(watcher.poll()?, None);
/// # Ok(()) }
/// ```
pub struct Watcher<'a, T> {
    source: &'a dyn WatchSource<T>,
    position: Position,
}

impl<T> std::fmt::Debug for Watcher<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watcher")
            .field("position", &self.position)
            .finish_non_exhaustive()
    }
}

impl<'a, T> Watcher<'a, T> {
    /// A watcher that starts at the currently published state.
    pub(crate) fn new(source: &'a dyn WatchSource<T>) -> Self {
        Watcher {
            source,
            position: source.published(),
        }
    }

    /// What changed since the last look, without waiting; `None` if nothing did.
    ///
    /// # Errors
    /// [`Error::Corrupt`](crate::Error::Corrupt) if a record fails validation.
    pub fn poll(&mut self) -> Result<Option<Change<T>>> {
        let (change, position) = self.source.changes_since(self.position)?;
        self.position = position;
        Ok(change)
    }

    /// Awaits the next change (any process's commit this watcher has not reported yet) and
    /// says what changed. One helper thread per handle bridges the shared futex to the
    /// runtime; cancelling the future (dropping it) is safe and loses nothing: the next call
    /// reports what happened meanwhile.
    ///
    /// # Errors
    /// [`Error::Corrupt`](crate::Error::Corrupt) if a record fails validation.
    #[cfg(feature = "tokio")]
    pub async fn changed(&mut self) -> Result<Change<T>> {
        let mut published = self.source.subscribe();
        loop {
            if let Some(change) = self.poll()? {
                return Ok(change);
            }
            if published.changed().await.is_err() {
                // The helper that fed this subscription is gone (it could not start): a later
                // subscription may have started another. If none runs, nothing more will come.
                published = self.source.subscribe();
                if published.has_changed().is_err() {
                    std::future::pending::<()>().await;
                }
            }
        }
    }

    /// Waits (sleeping, not spinning) until some process commits, at most `timeout`, and
    /// says what changed; `None` on timeout.
    ///
    /// # Errors
    /// As [`poll`](Self::poll).
    pub fn wait(&mut self, timeout: Duration) -> Result<Option<Change<T>>> {
        let deadline = crate::sync::deadline_in(timeout);
        loop {
            if let Some(change) = self.poll()? {
                return Ok(Some(change));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || !self.source.wait_since(self.position, left) {
                return self.poll();
            }
        }
    }
}
