//! Who is alive, as the kernel says: a handle's anchor on its dict, and every judgement of
//! whether a handle (and so its process) still lives.
//!
//! Each handle keeps an *anchor*: an open file description of its dict's control segment,
//! opened for it alone, on which it holds an exclusive open-file-description lock on byte
//! `1 + slot` of its process-table slot. The kernel drops that lock when the anchor closes,
//! including when the process dies in any way, and every process that opens the object sees
//! the lock, whatever PID namespace it lives in and whatever pids were reused since. So
//! "slot `s` is alive" means exactly "some anchor holds byte `1 + s`": [`Anchor::slot_alive`]
//! is the only place that judges it. Pids are recorded for reports and never trusted.
//!
//! Byte 0 is the *gate*: held while the set of attached handles changes (attach, detach,
//! removal), so that "may I join?" and "am I the last one?" are never decided at once.
//!
//! A lock waiter that takes a dead holder's lock over first *pins* the dead one's slot: it
//! locks the slot's byte itself, which succeeds only if no anchor holds it (the holder is
//! dead), and keeps any new handle from claiming the slot (a claimer moves on to the next
//! one) until the takeover is done (see `lock`). The threads of one handle share its anchor,
//! and a description never conflicts with itself: they also take one of the anchor's own
//! mutexes around the gate and around a pin, so that one thread's lock on a byte is never
//! taken, or let go, by another's.
//!
//! A forked child must not keep its parent's anchors (it would keep the parent looking
//! alive): they are closed in the child right after `fork` (see `os::close_in_children`), and
//! a handle copied into a child takes a new anchor and slot of its own when it needs one.
//!
//! An anchor's description is its own, never the one the segment was mapped from: a mapping
//! holds a reference to the description it was made from, and a forked child inherits the
//! mapping. Had the locks been taken through that description, a child outliving its parent
//! would keep the parent's locks, so the dead parent would look alive (its dict never removed
//! by the last close, its lock never recovered) for as long as the child lived.

use std::os::fd::{AsFd, BorrowedFd, IntoRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::control::{Control, PROCESS_SLOTS};
use crate::error::{Error, Result};
use crate::os::{self, ObjectId};

/// The gate's byte.
const GATE_BYTE: u64 = 0;

/// The byte whose lock says that slot `slot` is held.
fn slot_byte(slot: usize) -> u64 {
    1 + slot as u64
}

/// One open file description of a control segment, owned by the fork generation that opened
/// it (a forked child's copy is closed by the child's fork handler and never used again).
#[derive(Debug)]
pub(crate) struct Anchor {
    fd: RawFd,
    generation: u64,
    registration: Option<usize>,
    id: ObjectId,
    /// Held with the gate: the gate is one per description, and so per handle (see the
    /// module docs).
    gate_users: parking_lot::Mutex<()>,
    /// Held with a pin of a dead slot, likewise.
    pinners: parking_lot::Mutex<()>,
    /// The slot this anchor holds, `NO_SLOT` if none. A probe of one's own slot through one's
    /// own description would see no conflict: it is answered from here instead.
    own_slot: AtomicUsize,
}

const NO_SLOT: usize = usize::MAX;

impl Anchor {
    /// An anchor on the control segment `fd` describes: a description of its own (see the
    /// module docs), whatever `fd` is shared with; `fd` itself is closed.
    pub(crate) fn new(fd: OwnedFd) -> Result<Self> {
        let (id, _gid) =
            os::object_id(fd.as_fd()).map_err(|e| Error::io("reading a segment's identity", e))?;
        // Registered (which installs the fork handler) before the generation is read: a fork
        // from then on closes the descriptor in the child and tells it so. A fork between the
        // opening and the registration waits for both.
        let (own, registration) = os::open_for_this_process(|| os::reopen(fd.as_fd()))
            .map_err(|e| Error::io("opening an anchor on a segment (needs /proc)", e))?;
        drop(fd);
        let fd = own.into_raw_fd();
        Ok(Anchor {
            fd,
            generation: os::fork_generation(),
            registration,
            id,
            gate_users: parking_lot::Mutex::new(()),
            pinners: parking_lot::Mutex::new(()),
            own_slot: AtomicUsize::new(NO_SLOT),
        })
    }

    /// Whether this anchor's descriptor belongs to the calling process (not to the parent
    /// of a forked child).
    pub(crate) fn is_current(&self) -> bool {
        self.generation == os::fork_generation()
    }

    fn fd(&self) -> Option<BorrowedFd<'_>> {
        // SAFETY: in the generation that opened it, `fd` stays open until `drop` closes it;
        // in a forked child it was closed (and its number may be reused), so it is not lent.
        self.is_current()
            .then(|| unsafe { BorrowedFd::borrow_raw(self.fd) })
    }

    fn stale() -> Error {
        Error::io(
            "using a handle's anchor",
            std::io::Error::other("the anchor belongs to the parent of this forked process"),
        )
    }

    /// Whether both anchors hold the same object.
    pub(crate) fn same_object(&self, other: &Anchor) -> bool {
        self.id == other.id
    }

    /// Whether the object named `object` in /dev/shm is the one this anchor holds.
    pub(crate) fn is_named(&self, object: &str) -> bool {
        os::named_object_id(object).is_ok_and(|id| id == self.id)
    }

    /// Takes the gate, waiting (in short sleeps) until `deadline`. `None` if it stayed held.
    pub(crate) fn gate(&self, deadline: Instant) -> Result<Option<Gate<'_>>> {
        let fd = self.fd().ok_or_else(Self::stale)?;
        let Some(user) = self.gate_users.try_lock_until(deadline) else {
            return Ok(None);
        };
        let mut pause = Duration::from_micros(50);
        loop {
            if os::try_lock_byte(fd, GATE_BYTE).map_err(|e| Error::io("locking the gate", e))? {
                return Ok(Some(Gate {
                    anchor: self,
                    _user: user,
                }));
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            std::thread::sleep(pause.min(deadline - now));
            pause = (pause * 2).min(Duration::from_millis(5));
        }
    }

    /// Takes a free slot of the process table for this anchor and records the calling process
    /// in it. A slot whose holder died is free: its lock went with it.
    pub(crate) fn claim_slot(
        &self,
        control: &Control,
        name: &str,
        observer: bool,
    ) -> Result<usize> {
        let fd = self.fd().ok_or_else(Self::stale)?;
        for slot in 0..PROCESS_SLOTS {
            if os::try_lock_byte(fd, slot_byte(slot))
                .map_err(|e| Error::io("claiming a process slot", e))?
            {
                control.occupy(slot, observer);
                self.own_slot.store(slot, Ordering::Relaxed);
                return Ok(slot);
            }
        }
        Err(Error::TooManyHandles {
            name: name.to_owned(),
            limit: PROCESS_SLOTS,
        })
    }

    /// Gives slot `slot` back.
    pub(crate) fn release_slot(&self, control: &Control, slot: usize) {
        control.vacate(slot);
        self.own_slot.store(NO_SLOT, Ordering::Relaxed);
        if let Some(fd) = self.fd() {
            let _ = os::unlock_byte(fd, slot_byte(slot));
        }
    }

    /// Whether the handle in slot `slot` is alive. The one liveness judgement of the crate:
    /// the lock holder, the process table and the orphan check all come here. A probe that
    /// fails counts as alive: nobody is ever judged dead on a doubt.
    pub(crate) fn slot_alive(&self, slot: usize) -> bool {
        if slot == self.own_slot.load(Ordering::Relaxed) {
            return true;
        }
        match self.fd() {
            Some(fd) => os::bytes_locked_by_others(fd, slot_byte(slot), 1).unwrap_or(true),
            None => true,
        }
    }

    /// Whether any handle other than this anchor's own holds a slot, not counting tools
    /// looking at the dict ([`Control::is_observer`]), which keep no dict for its lifetime.
    pub(crate) fn others_alive(&self, control: &Control) -> bool {
        let Some(fd) = self.fd() else {
            return true;
        };
        // Slot ranges still to look at. The kernel names one lock in a range that others hold;
        // a tool's splits the range around it. So a probe per tool, plus one.
        let mut ranges = vec![(0, PROCESS_SLOTS)];
        while let Some((from, to)) = ranges.pop() {
            if from >= to {
                continue;
            }
            let held = os::lock_held_by_others(fd, slot_byte(from), (to - from) as u64);
            let Ok(held) = held else {
                return true;
            };
            let Some(byte) = held else {
                continue;
            };
            let slot = usize::try_from(byte.saturating_sub(slot_byte(0))).unwrap_or(PROCESS_SLOTS);
            if slot >= PROCESS_SLOTS || !control.is_observer(slot) {
                return true;
            }
            ranges.extend([(from, slot), (slot + 1, to)]);
        }
        false
    }

    /// Pins slot `slot` if its handle is dead: locks the slot's byte, which no other anchor
    /// holds then, and which no handle can claim until the pin is dropped. `None` if the
    /// handle is alive (or on a doubt), and for this anchor's own slot.
    pub(crate) fn pin_dead_slot(&self, slot: usize) -> Option<SlotPin<'_>> {
        if slot == self.own_slot.load(Ordering::Relaxed) || slot >= PROCESS_SLOTS {
            return None;
        }
        let fd = self.fd()?;
        let pinner = self.pinners.lock();
        os::try_lock_byte(fd, slot_byte(slot))
            .is_ok_and(|pinned| pinned)
            .then_some(SlotPin {
                anchor: self,
                slot,
                _pinner: pinner,
            })
    }

    /// Whether any other anchor holds the gate or a slot: somebody is at work on the object
    /// or attached to it.
    pub(crate) fn anyone_else_inside(&self) -> bool {
        match self.fd() {
            Some(fd) => {
                os::bytes_locked_by_others(fd, GATE_BYTE, 1 + PROCESS_SLOTS as u64).unwrap_or(true)
            }
            None => true,
        }
    }
}

impl Drop for Anchor {
    fn drop(&mut self) {
        if !self.is_current() {
            // The fork handler closed this descriptor in this (child) process.
            return;
        }
        if let Some(registration) = self.registration {
            os::keep_in_children(registration, self.fd);
        }
        // SAFETY: this generation opened `fd` and nothing else closes it (the registration was
        // withdrawn above, so a fork from now on does not close it either).
        drop(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(self.fd) });
    }
}

/// A dead handle's slot, pinned (see [`Anchor::pin_dead_slot`]); let go on drop.
#[must_use]
pub(crate) struct SlotPin<'a> {
    anchor: &'a Anchor,
    slot: usize,
    /// Let go after the byte (fields drop after `drop` ran).
    _pinner: parking_lot::MutexGuard<'a, ()>,
}

impl Drop for SlotPin<'_> {
    fn drop(&mut self) {
        if let Some(fd) = self.anchor.fd() {
            let _ = os::unlock_byte(fd, slot_byte(self.slot));
        }
    }
}

/// The gate, held; released on drop.
#[must_use]
pub(crate) struct Gate<'a> {
    anchor: &'a Anchor,
    /// Let go after the byte (fields drop after `drop` ran).
    _user: parking_lot::MutexGuard<'a, ()>,
}

impl Drop for Gate<'_> {
    fn drop(&mut self) {
        if let Some(fd) = self.anchor.fd() {
            let _ = os::unlock_byte(fd, GATE_BYTE);
        }
    }
}
