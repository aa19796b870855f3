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
    remove_under(place, false)?;
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
/// and anything else under the name. With no control segment under the name, what is left
/// under it goes, but not what a dict created there meanwhile owns (see [`remove_under`]).
pub(crate) fn remove_by_name(place: &Place) -> Result<()> {
    let object = place.control();
    match Segment::open_with_fd(&object, true) {
        Ok((segment, fd)) => {
            if let Ok(control) = Control::checked(&segment) {
                let anchor = Anchor::new(fd)?;
                return remove(place, &anchor, control, PATIENCE);
            }
        }
        // Nothing to unlink under the name itself: a creator may rename its object into it
        // at any moment, and that dict is not ours to remove unmarked.
        Err(err) if segment::is_not_found(&err) => return remove_under(place, true),
        // A symbolic link or another odd object under the name: removed below.
        Err(Error::Foreign { .. }) => {}
        Err(err) => return Err(err),
    }
    remove_under(place, true)?;
    segment::unlink(&object)
}

/// Removes every object under the dict at `place` but its control segment: nested dicts
/// first, each through its own removal, then the rest (dumps, the register, pending
/// creations, strays). `careful` when the name has no dict of ours (nobody marked one
/// removed): then a dump goes only if its instance can no longer get the name
/// ([`instance_is_gone`]), since a creator racing the removal renames its object into the
/// name with its dumps already written.
fn remove_under(place: &Place, careful: bool) -> Result<()> {
    for object in place.objects()? {
        if let Part::Child(child) = place.classify(&object) {
            unless_not_ours(remove_by_name(&place.sibling(&child)))?;
        }
    }
    crate::fault::point("removing");
    for object in place.objects()? {
        match place.classify(&object) {
            Part::Control => {}
            Part::Dump { instance } if careful && !instance_is_gone(place, instance)? => {}
            _ => unless_not_ours(segment::unlink(&object))?,
        }
    }
    Ok(())
}

/// The outcome of removing one object under a dict's name, where an object that cannot be the
/// dict's is no failure: a directory, or another user's object that this user may not remove
/// (in a sticky directory such as /dev/shm, only its owner may). Any user can put such a stray
/// under any name; it must not stop a removal (the dict would stay half removed, and every
/// later open of the name fail).
pub(crate) fn unless_not_ours(removed: Result<()>) -> Result<()> {
    match removed {
        Err(Error::PermissionDenied { .. } | Error::Foreign { .. }) => Ok(()),
        other => other,
    }
}

/// Whether instance `instance` of the dict at `place` neither has the dict's name nor can
/// still get it: its pending object is gone (renamed into the name or discarded; a creator
/// makes it before any dump, so it cannot come back), and the control segment under the name,
/// if any, is another instance's. Checked in that order, so that a rename between the two
/// checks shows in the second. An unreadable control segment counts as the instance's.
pub(crate) fn instance_is_gone(place: &Place, instance: u32) -> Result<bool> {
    if segment::exists(&place.pending(u64::from(instance)))? {
        return Ok(false);
    }
    match Segment::open_with_fd(&place.control(), false) {
        Ok((segment, _)) => {
            Ok(Control::checked(&segment).is_ok_and(|control| control.instance as u32 != instance))
        }
        Err(err) if segment::is_not_found(&err) => Ok(true),
        Err(_) => Ok(false),
    }
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
