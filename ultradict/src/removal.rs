//! Removing dicts: a dict with its nested dicts and every other object under its name, and
//! what dead creators left behind.
//!
//! A removal marks the dict removed first (no handle attaches to it any more, and handles still
//! attached create no new object), then removes its nested dicts (each through its own
//! removal), then every other object under its name, and its control segment last: while that
//! has the name, no new dict of the name can appear whose objects the removal could catch. A
//! remover killed half way leaves the control segment marked; the next opener (or `cleanup`)
//! finishes the work.

use std::time::{Duration, Instant};

use crate::control::Control;
use crate::error::{Error, Result};
use crate::liveness::Anchor;
use crate::naming::{Part, Place};
use crate::segment::{self, Segment};

/// How long a removal not started by a handle waits for a busy gate before going ahead.
const PATIENCE: Duration = Duration::from_secs(2);

/// Removes the dict `anchor` holds, at `place`, with its tree; the caller holds its gate (or
/// gave up waiting for it). Does nothing if the name no longer names that dict: it was
/// removed already, and what has the name now is another dict.
pub(crate) fn remove_held(place: &Place, anchor: &Anchor, control: &Control) -> Result<()> {
    let object = place.control();
    if !anchor.is_named(&object) {
        return Ok(());
    }
    control.mark_removed();
    remove_under(place)?;
    if anchor.is_named(&object) {
        segment::unlink(&object)?;
    }
    Ok(())
}

/// Takes the gate of the dict `anchor` holds (waiting at most `patience`, then going ahead:
/// a removal must not wait forever on a stopped process) and removes the dict.
pub(crate) fn remove(
    place: &Place,
    anchor: &Anchor,
    control: &Control,
    patience: Duration,
) -> Result<()> {
    let gate = anchor.gate(Instant::now() + patience)?;
    let removed = remove_held(place, anchor, control);
    drop(gate);
    removed
}

/// Removes whatever is at `place`: a dict with its tree, or a foreign or broken object there
/// and anything else under the name.
pub(crate) fn remove_by_name(place: &Place) -> Result<()> {
    let object = place.control();
    match Segment::open_with_fd(&object, true) {
        Ok((segment, fd)) => {
            if let Ok(control) = Control::checked(&segment) {
                let anchor = Anchor::new(fd)?;
                return remove(place, &anchor, control, PATIENCE);
            }
        }
        Err(err) if segment::is_not_found(&err) => {}
        // A symbolic link or another odd object under the name: removed below.
        Err(Error::Foreign { .. }) => {}
        Err(err) => return Err(err),
    }
    remove_under(place)?;
    segment::unlink(&object)
}

/// Removes every object under the dict at `place` but its control segment: nested dicts
/// first, each through its own removal, then the rest (dumps, the register, pending
/// creations, strays).
fn remove_under(place: &Place) -> Result<()> {
    for object in place.objects()? {
        if let Part::Child(child) = place.classify(&object) {
            remove_by_name(&place.sibling(&child))?;
        }
    }
    crate::fault::point("removing");
    for object in place.objects()? {
        if place.classify(&object) != Part::Control {
            segment::unlink(&object)?;
        }
    }
    Ok(())
}

/// Takes back every object of instance `instance` of the dict at `place` that never got the
/// dict's name (its creator, the caller, failed or lost a race): its pending control segment
/// and dumps.
pub(crate) fn discard_instance(place: &Place, instance: u64) {
    discard_objects_of(place, instance as u32, |part| {
        matches!(part, Part::Pending { .. } | Part::Dump { .. })
    });
}

/// Unlinks the objects of instance `instance` at `place` whose kind `which` accepts.
fn discard_objects_of(place: &Place, instance: u32, which: impl Fn(&Part) -> bool) {
    let Ok(objects) = place.objects() else {
        return;
    };
    for object in objects {
        let part = place.classify(&object);
        if let Part::Pending { instance: found } | Part::Dump { instance: found } = part
            && found == instance
            && which(&part)
        {
            let _ = segment::unlink(&object);
        }
    }
}

/// Removes the pending creations at `place` whose creators died (nobody holds a lock on
/// them), with their dumps. A creator that is alive but had not locked its object yet loses
/// it and starts again.
///
/// The pending object goes first, and the dumps only if this call unlinked it: a creator
/// judged dead may have been alive after all and renamed its object into the dict's name
/// meanwhile (or another sweeper took it), and then the dumps of that instance are a live
/// dict's.
pub(crate) fn sweep_dead_creations(place: &Place) -> Result<()> {
    for object in place.objects()? {
        let Part::Pending { instance } = place.classify(&object) else {
            continue;
        };
        let Ok(fd) = segment::open_fd(&object, false) else {
            continue;
        };
        if Anchor::new(fd)?.anyone_else_inside() {
            continue;
        }
        crate::fault::point("sweep-judged");
        if crate::os::unlink_object(&object).is_ok() {
            discard_objects_of(place, instance, |part| matches!(part, Part::Dump { .. }));
        }
    }
    Ok(())
}

/// Whether a creation of the dict at `place` is under way (a pending object whose creator
/// lives).
pub(crate) fn creation_under_way(place: &Place) -> Result<bool> {
    for object in place.objects()? {
        if let Part::Pending { .. } = place.classify(&object)
            && let Ok(fd) = segment::open_fd(&object, false)
            && Anchor::new(fd)?.anyone_else_inside()
        {
            return Ok(true);
        }
    }
    Ok(false)
}
