//! Removing dicts from /dev/shm: a dict with its nested dicts and every other object under its
//! name, and what dead creators left behind.
//!
//! A removal marks the dict removed first (no handle attaches to it any more, and handles
//! still attached create no new object), then removes its nested dicts (each through its own
//! removal), then every other object under its name, and its control segment last: while that
//! has the name, no new dict of the name can appear whose objects the removal could catch. A
//! remover killed half way leaves the control segment marked; the next opener (or `cleanup`)
//! finishes the work.

use std::time::{Duration, Instant};

use crate::control::Control;
use crate::error::{Error, Result};
use crate::liveness::Anchor;
use crate::naming::{self, Part};
use crate::segment::{self, Segment};

/// How long a removal not started by a handle waits for a busy gate before going ahead.
const PATIENCE: Duration = Duration::from_secs(2);

/// Removes the dict `anchor` holds, named `name`, with its tree; the caller holds its gate (or
/// gave up waiting for it). Does nothing if the name no longer names that dict: it was
/// removed already, and what has the name now is another dict.
pub(crate) fn remove_held(name: &str, anchor: &Anchor, control: &Control) -> Result<()> {
    let object = naming::control(name);
    if !anchor.is_named(&object) {
        return Ok(());
    }
    control.mark_removed();
    remove_under(name)?;
    if anchor.is_named(&object) {
        segment::unlink(&object)?;
    }
    Ok(())
}

/// Takes the gate of the dict `anchor` holds (waiting at most `patience`, then going ahead:
/// a removal must not wait forever on a stopped process) and removes the dict.
pub(crate) fn remove(
    name: &str,
    anchor: &Anchor,
    control: &Control,
    patience: Duration,
) -> Result<()> {
    let gate = anchor.gate(Instant::now() + patience)?;
    let removed = remove_held(name, anchor, control);
    drop(gate);
    removed
}

/// Removes whatever is under the dict name `name`: a dict with its tree, or a foreign or
/// broken object there and anything else under the name.
pub(crate) fn remove_by_name(name: &str) -> Result<()> {
    let object = naming::control(name);
    match Segment::open_with_fd(&object, true) {
        Ok((segment, fd)) => {
            if let Ok(control) = Control::checked(&segment) {
                let anchor = Anchor::new(fd)?;
                return remove(name, &anchor, control, PATIENCE);
            }
        }
        Err(err) if segment::is_not_found(&err) => {}
        // A symbolic link or another odd object under the name: removed below.
        Err(Error::Foreign { .. }) => {}
        Err(err) => return Err(err),
    }
    remove_under(name)?;
    segment::unlink(&object)
}

/// Removes every object under dict `name` but its control segment: nested dicts first, each
/// through its own removal, then the rest (dumps, the register, pending creations, strays).
fn remove_under(name: &str) -> Result<()> {
    for object in naming::objects_of(name)? {
        if let Part::Child(child) = naming::classify(name, &object) {
            remove_by_name(&child)?;
        }
    }
    crate::fault::point("removing");
    for object in naming::objects_of(name)? {
        if naming::classify(name, &object) != Part::Control {
            segment::unlink(&object)?;
        }
    }
    Ok(())
}

/// Takes back every object of instance `instance` of dict `name` that never got the dict's
/// name (its creator failed or lost a race): its pending control segment and its dumps.
pub(crate) fn discard_instance(name: &str, instance: u64) {
    let Ok(objects) = naming::objects_of(name) else {
        return;
    };
    for object in objects {
        match naming::classify(name, &object) {
            Part::Pending { instance: found } | Part::Dump { instance: found }
                if found == instance as u32 =>
            {
                let _ = segment::unlink(&object);
            }
            _ => {}
        }
    }
}

/// Removes the pending creations under `name` whose creators died (nobody holds a lock on
/// them), with their dumps. A creator that is alive but had not locked its object yet loses
/// it and starts again.
pub(crate) fn sweep_dead_creations(name: &str) -> Result<()> {
    for object in naming::objects_of(name)? {
        let Part::Pending { instance } = naming::classify(name, &object) else {
            continue;
        };
        let Ok(fd) = segment::open_fd(&object, false) else {
            continue;
        };
        if Anchor::new(fd)?.anyone_else_inside() {
            continue;
        }
        discard_instance(name, u64::from(instance));
    }
    Ok(())
}

/// Whether a creation of dict `name` is under way (a pending object whose creator lives).
pub(crate) fn creation_under_way(name: &str) -> Result<bool> {
    for object in naming::objects_of(name)? {
        if let Part::Pending { .. } = naming::classify(name, &object)
            && let Ok(fd) = segment::open_fd(&object, false)
            && Anchor::new(fd)?.anyone_else_inside()
        {
            return Ok(true);
        }
    }
    Ok(false)
}
