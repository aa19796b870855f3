//! Awaiting changes from async code (the `tokio` feature). A futex cannot be awaited, so one
//! helper thread per handle, started by its first async wait, sleeps on the dict's change
//! sequence and passes every publication on to a tokio watch channel that async waiters await.
//!
//! What it costs: one thread per handle that was awaited (a stack, and a wake-up for every
//! publication while it lives), and, since it sleeps on the futex, every commit of any process
//! makes the wake-up system call. The thread keeps only the control segment's mapping (not the
//! handle) and stops within [`POLL`] once the handle is gone.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::watch;

use crate::control::Control;
use crate::segment::Segment;
use crate::storage::Position;

/// Longest sleep of the helper between two looks at its stop flag.
const POLL: Duration = Duration::from_millis(100);

/// A handle's helper thread and the channel it feeds.
pub(crate) struct Bridge {
    published: Arc<watch::Sender<Position>>,
    stop: Arc<AtomicBool>,
    /// The process the thread runs in (a forked child has the struct but not the thread),
    /// or `None` if it could not be started.
    generation: Option<u64>,
}

impl Bridge {
    /// Starts the helper for the dict whose control segment is `segment`.
    pub(crate) fn start(segment: Arc<Segment>) -> Self {
        // SAFETY: `segment` is a mapped control segment, checked when the handle opened it,
        // and the helper keeps it mapped for as long as it reads it.
        let first = unsafe { Control::from_segment(&segment) }.state();
        let published = Arc::new(watch::Sender::new(first.position()));
        let stop = Arc::new(AtomicBool::new(false));
        let (sender, stopped) = (Arc::clone(&published), Arc::clone(&stop));
        let spawned = std::thread::Builder::new()
            .name("ultradict-bridge".into())
            .spawn(move || {
                // SAFETY: as above; `segment` lives in this closure.
                let control = unsafe { Control::from_segment(&segment) };
                // Waits are relative to what was last passed on, never to a fresh look: a
                // publication between a send and the next look would otherwise be missed.
                let mut sent = first;
                while !stopped.load(Ordering::Acquire) {
                    let now = control.state();
                    if now != sent {
                        sender.send_replace(now.position());
                        sent = now;
                        continue;
                    }
                    control.published().wait_for_change(sent, POLL);
                }
            });
        let generation = match spawned {
            Ok(_) => Some(crate::os::fork_generation()),
            Err(_) => {
                // No thread: the waits of this call see nothing new until their timeout; the
                // next async wait tries again (see `runs_here`).
                stop.store(true, Ordering::Release);
                None
            }
        };
        Bridge {
            published,
            stop,
            generation,
        }
    }

    /// Whether the helper thread runs in this process: false in a forked child (threads do
    /// not survive `fork`) and when it could not be started. The handle then starts another.
    pub(crate) fn runs_here(&self) -> bool {
        self.generation == Some(crate::os::fork_generation())
    }

    /// A receiver of every published position from now on.
    pub(crate) fn subscribe(&self) -> watch::Receiver<Position> {
        self.published.subscribe()
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}
