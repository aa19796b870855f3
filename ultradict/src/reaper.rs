//! Work off the caller's path, on one helper thread per process: freeing superseded dumps,
//! and reserving the next stretch of a stream while a writer fills the one before it.
//!
//! A superseded dump's object is already unlinked, so the process that unmaps it last frees
//! its pages: milliseconds for a large dict (about 4 ms for the 19 MB archive of a 1M-entry
//! dict, and as much again for a stream its records filled), which a writer's dump or a
//! reader's switch to the next dump would otherwise wait for. Large dumps are handed to the
//! thread, which drops them; small ones are dropped in place, where that costs less than the
//! hand-over. A stream's next megabyte costs a writer about 0.6 ms to reserve and map (about
//! 28 ns for each of the records it holds): [`run_ahead`] hands that to the thread too.
//!
//! At most one parcel waits for the thread at a time: one more dump is dropped in place, so
//! that memory (and /dev/shm space) a superseded dump holds is never kept waiting behind a
//! queue, and one more job is not run (its caller does the work itself when it needs it).
//! The thread starts with the first parcel, and again in a forked child (threads do not
//! survive `fork`): unless the child was forked while another thread was handing a parcel
//! over, in which case the child does everything in place. A dump the parent's thread had not
//! yet freed when the child was forked stays mapped in the child until the child exits. If the
//! thread cannot be started, everything is done in place: the hand-over never waits.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Sender};

use parking_lot::Mutex;

/// Dumps at least this large (mapped bytes) are freed by the helper thread.
pub(crate) const LARGE: usize = 4 << 20;

/// What the thread runs: a job, or the drop of what it holds.
type Parcel = Box<dyn FnOnce() + Send>;

/// The helper thread: its channel, whether a dump waits for it, and the fork generation it
/// was started in.
struct Reaper {
    sender: Sender<Parcel>,
    busy: Arc<AtomicBool>,
    generation: u64,
}

static REAPER: Mutex<Option<Reaper>> = Mutex::new(None);

/// Drops `value`, which holds `bytes` of mapped memory: in the helper thread if that is
/// large and the thread is free, else here.
pub(crate) fn retire<T: Send + 'static>(value: T, bytes: usize) {
    if bytes < LARGE {
        return drop(value);
    }
    if let Err(parcel) = hand_over(Box::new(move || drop(value))) {
        // The thread is busy or gone: free it here.
        parcel();
    }
}

/// Runs `job` on the helper thread if it is free; returns whether it was handed over (if
/// not, it was dropped without running).
pub(crate) fn run_ahead(job: impl FnOnce() + Send + 'static) -> bool {
    hand_over(Box::new(job)).is_ok()
}

/// Hands `parcel` to the helper thread, started if need be; gives it back if the thread is
/// busy with the previous one or cannot run it.
fn hand_over(parcel: Parcel) -> Result<(), Parcel> {
    // A lock another thread holds (or held when this process was forked from its parent)
    // is never waited for.
    let Some(mut slot) = REAPER.try_lock() else {
        return Err(parcel);
    };
    let generation = crate::os::fork_generation();
    if slot
        .as_ref()
        .is_some_and(|reaper| reaper.generation != generation)
    {
        // A thread of the parent, which does not run here: forget its channel (dropping it
        // would touch state the parent's threads may have left half-changed).
        std::mem::forget(slot.take());
    }
    if slot.is_none() {
        *slot = start(generation);
    }
    let Some(reaper) = slot.as_ref() else {
        return Err(parcel);
    };
    if reaper.busy.swap(true, Ordering::AcqRel) {
        // The thread still works on the previous one.
        return Err(parcel);
    }
    reaper.sender.send(parcel).map_err(|returned| {
        // The thread is gone (it ends only when every sender is).
        reaper.busy.store(false, Ordering::Release);
        returned.0
    })
}

/// Starts the helper thread; `None` if the system would not.
fn start(generation: u64) -> Option<Reaper> {
    crate::os::install_fork_handler();
    let (sender, parcels) = mpsc::channel::<Parcel>();
    let busy = Arc::new(AtomicBool::new(false));
    let done = Arc::clone(&busy);
    std::thread::Builder::new()
        .name("ultradict-reaper".into())
        .spawn(move || {
            for parcel in parcels {
                parcel();
                done.store(false, Ordering::Release);
            }
        })
        .ok()?;
    Some(Reaper {
        sender,
        busy,
        generation,
    })
}
