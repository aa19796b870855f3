//! Frees superseded dumps off the caller's path.
//!
//! A superseded dump's object is already unlinked, so the process that unmaps it last frees
//! its pages: about 10 ms for a 1M-entry dict (its archive and full stream, 38 MB), which a
//! writer's dump or a reader's switch to the next dump would otherwise wait for. Large dumps
//! are handed to one helper thread per process, which drops them; small ones are dropped in
//! place, where that costs less than the hand-over.
//!
//! The thread starts with the first large dump to free, and again in a forked child (threads
//! do not survive `fork`; what the parent's thread had not yet freed stays mapped in the
//! child until it exits). If the thread cannot be started, or the hand-over is busy in
//! another thread, the dump is dropped in place: never a wait, never a leak.

use std::sync::mpsc::{self, Sender};

use parking_lot::Mutex;

/// Dumps at least this large (mapped bytes) are freed by the helper thread.
pub(crate) const LARGE: usize = 4 << 20;

type Parcel = Box<dyn Send>;

/// The helper thread's channel, and the fork generation it was started in.
static REAPER: Mutex<Option<(u64, Sender<Parcel>)>> = Mutex::new(None);

/// Drops `value`, which holds `bytes` of mapped memory: in the helper thread if that is
/// large, else here.
pub(crate) fn retire<T: Send + 'static>(value: T, bytes: usize) {
    if bytes < LARGE {
        return drop(value);
    }
    // A lock another thread holds (or held when this process was forked from its parent)
    // is never waited for.
    let Some(mut slot) = REAPER.try_lock() else {
        return drop(value);
    };
    let generation = crate::os::fork_generation();
    let current = slot.as_ref().filter(|(started, _)| *started == generation);
    let sender = match current {
        Some((_, sender)) => sender.clone(),
        None => {
            // A channel from before a fork has no thread behind it here: forget it (dropping
            // it would touch state the parent's threads may have left half-changed).
            if let Some(stale) = slot.take() {
                std::mem::forget(stale);
            }
            match start() {
                Some(sender) => slot.insert((generation, sender)).1.clone(),
                None => return drop(value),
            }
        }
    };
    drop(slot);
    if let Err(returned) = sender.send(Box::new(value)) {
        // The thread is gone (it only ends when every sender is): free it here.
        drop(returned.0);
    }
}

/// Starts the helper thread; `None` if the system would not.
fn start() -> Option<Sender<Parcel>> {
    crate::os::install_fork_handler();
    let (sender, parcels) = mpsc::channel::<Parcel>();
    std::thread::Builder::new()
        .name("ultradict-reaper".into())
        .spawn(move || {
            for parcel in parcels {
                drop(parcel);
            }
        })
        .ok()?;
    Some(sender)
}
