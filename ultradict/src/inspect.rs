//! Looking at dicts without knowing their types: what the `ultradict` command-line tool
//! shows, and the cleanup of dicts whose processes all died.
//!
//! Everything here reads control blocks through read-only mappings and checks the magic and
//! format version first, so a foreign object in /dev/shm is reported, never misread.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use crate::control::{self, Control, FORMAT_VERSION, HEADER_SIZE, MAGIC, READY};
use crate::error::{Error, Result};
use crate::naming::{self, PREFIX, SEPARATOR};
use crate::options::Lifetime;
use crate::segment::{self, Segment};
use crate::status::LockHolder;

/// A process attached to a dict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attached {
    /// Its process id.
    pub pid: u32,
    /// Whether it still runs (the same process: pid and start time match).
    pub alive: bool,
}

/// A dict as its control block describes it, read without knowing its key and value types.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct DictInfo {
    /// The dict's name.
    pub name: String,
    /// What it stores, e.g. `UltraDict<alloc::string::String, u64>`.
    pub schema: String,
    /// Every object of the dict in /dev/shm (nested dicts included) with its size in bytes.
    pub segments: Vec<(String, u64)>,
    /// Bytes of stream.
    pub buffer_size: u64,
    /// Bytes of stream used in this epoch.
    pub buffer_used: u64,
    /// Fixed dump capacity, if one was set.
    pub full_dump_size: Option<u64>,
    /// Current epoch.
    pub epoch: u32,
    /// Records appended since creation.
    pub records: u64,
    /// Full dumps written since creation.
    pub dumps: u64,
    /// Size of the current dump's archive.
    pub dump_bytes: u64,
    /// When the dict is removed.
    pub lifetime: Lifetime,
    /// The processes in its process table (one entry per handle).
    pub attached: Vec<Attached>,
    /// Handles counted as attached (includes dead ones not yet reaped).
    pub attached_count: u32,
    /// Who holds the lock.
    pub lock_holder: Option<LockHolder>,
    /// Whether the lock holder is alive (`None` when the lock is free).
    pub lock_holder_alive: Option<bool>,
    /// How often a dead holder's lock was recovered.
    pub lock_recoveries: u64,
    /// Publications so far (wraps): watch it to see activity.
    pub changes: u32,
    /// Nested dicts under this one.
    pub children: Vec<String>,
}

impl DictInfo {
    /// Total bytes of shared memory the dict's objects take.
    pub fn bytes(&self) -> u64 {
        self.segments.iter().map(|(_, len)| len).sum()
    }

    /// Processes still attached and alive.
    pub fn live_pids(&self) -> Vec<u32> {
        self.attached
            .iter()
            .filter(|a| a.alive)
            .map(|a| a.pid)
            .collect()
    }

    /// Whether nobody will ever remove it: every attached process died (and no process is
    /// attaching right now), or a dict that should go with its last handle has none left.
    /// A `Persistent` dict is never orphaned: it is meant to outlive its processes.
    pub fn orphaned(&self) -> bool {
        if self.lifetime == Lifetime::Persistent {
            return false;
        }
        if self.attached.is_empty() {
            return self.attached_count == 0;
        }
        self.attached_count as usize == self.attached.len()
            && self.attached.iter().all(|a| !a.alive)
    }
}

/// Reads the control block of dict `name` (a root or nested dict name).
///
/// # Errors
/// [`Error::NotFound`], [`Error::Foreign`] (not an ultradict segment),
/// [`Error::VersionMismatch`], [`Error::NotReady`] (never finished creating),
/// [`Error::PermissionDenied`].
pub fn inspect(name: &str) -> Result<DictInfo> {
    if name.contains(SEPARATOR) {
        naming::validate_child(name)?;
    } else {
        naming::validate(name)?;
    }
    let object = naming::control(name);
    let segment = match Segment::open(&object, false) {
        Err(err) if segment::is_not_found(&err) => {
            return Err(Error::NotFound {
                name: name.to_owned(),
            });
        }
        other => other?,
    };
    if segment.len() < HEADER_SIZE {
        return Err(Error::Foreign {
            segment: object,
            reason: format!("{} bytes, smaller than a control block", segment.len()),
        });
    }
    // SAFETY: a mapping of at least HEADER_SIZE bytes that lives until the end of this
    // function; every field of Control is valid for any bit pattern.
    let control = unsafe { Control::from_segment(&segment) };
    if control.magic != MAGIC {
        return Err(Error::Foreign {
            segment: object,
            reason: "no ultradict magic".into(),
        });
    }
    if control.format_version != FORMAT_VERSION {
        return Err(Error::VersionMismatch {
            segment: object,
            found: control.format_version,
            expected: FORMAT_VERSION,
        });
    }
    if control.ready.load(Ordering::Acquire) != READY {
        return Err(Error::NotReady {
            name: name.to_owned(),
            waited: Duration::ZERO,
        });
    }
    let state = control.state();
    let lock = &control.lock.0;
    let holder_tid = crate::lock::holder_tid(lock);
    let since = lock.held_since_ns.load(Ordering::Relaxed);
    let lock_holder = (holder_tid != 0).then(|| LockHolder {
        pid: crate::lock::holder_pid(lock),
        since: (since != 0).then(|| SystemTime::UNIX_EPOCH + Duration::from_nanos(since)),
    });
    let lock_holder_alive = crate::lock::holder_alive(lock, lock.word.load(Ordering::Acquire));
    let attached = control
        .processes
        .iter()
        .map(|slot| slot.load(Ordering::Acquire))
        .filter(|&entry| entry != 0)
        .map(|entry| Attached {
            pid: (entry >> 32) as u32,
            alive: control::entry_alive(entry),
        })
        .collect();
    let mut segments = Vec::new();
    for object in naming::segments_of(name)? {
        let len = std::fs::metadata(format!("{}/{object}", crate::os::SHM_DIR))
            .map(|m| m.len())
            .unwrap_or(0);
        segments.push((object, len));
    }
    let control_object = naming::control(name);
    let children = segments
        .iter()
        .map(|(object, _)| object.as_str())
        .filter(|object| *object != control_object && !is_own_dump(name, object))
        .filter_map(|object| object.strip_prefix(PREFIX))
        .filter(|child| !child.contains("~dump.") && !child.ends_with("~.register"))
        .map(str::to_owned)
        .collect();
    Ok(DictInfo {
        name: name.to_owned(),
        schema: control.schema_text(),
        segments,
        buffer_size: control.buffer_size,
        buffer_used: u64::from(state.committed),
        full_dump_size: (control.full_dump_size != 0).then_some(control.full_dump_size),
        epoch: state.epoch,
        records: control.counters.records.load(Ordering::Relaxed),
        dumps: control.counters.dumps.load(Ordering::Relaxed),
        dump_bytes: control.counters.dump_len.load(Ordering::Relaxed),
        lifetime: Lifetime::from_raw(control.lifetime).unwrap_or_default(),
        attached,
        attached_count: control.attached.load(Ordering::Acquire),
        lock_holder,
        lock_holder_alive,
        lock_recoveries: lock.recoveries.load(Ordering::Relaxed),
        changes: control.changes.sequence.load(Ordering::Relaxed),
        children,
    })
}

fn is_own_dump(name: &str, object: &str) -> bool {
    object
        .strip_prefix(&naming::control(name))
        .and_then(|rest| rest.strip_prefix(SEPARATOR))
        .is_some_and(|rest| rest.starts_with("dump."))
}

/// One root dict found in /dev/shm: what it says, or why it could not be read.
#[derive(Debug)]
pub struct Listed {
    /// The dict's name (the part of the object names after `ultradict.` and before `~`).
    pub name: String,
    /// Its description, or the error reading it (a foreign object, a half-created dict, a
    /// dict whose control segment is gone but whose dumps remain).
    pub info: Result<DictInfo>,
}

/// Every root dict in /dev/shm (nested dicts are listed in their root's
/// [`DictInfo::children`]), sorted by name.
///
/// # Errors
/// [`Error::Io`] if /dev/shm cannot be read.
pub fn list() -> Result<Vec<Listed>> {
    let objects = crate::os::list_objects(PREFIX).map_err(|e| Error::io("listing /dev/shm", e))?;
    let mut roots: BTreeMap<String, ()> = BTreeMap::new();
    for object in objects {
        let rest = &object[PREFIX.len()..];
        let root = rest.split(SEPARATOR).next().unwrap_or(rest);
        if naming::validate(root).is_ok() {
            roots.insert(root.to_owned(), ());
        }
    }
    Ok(roots
        .into_keys()
        .map(|name| {
            let info = inspect(&name);
            Listed { name, info }
        })
        .collect())
}

enum Removal {
    /// The whole dict, if `true`.
    Tree(bool),
    /// Only objects left behind by a dict whose control segment is gone.
    Leftovers,
}

/// Whether the dict `name`, never published, was created by a process that died. Its
/// creator writes its own process-table entry before publishing; while that is not written
/// the dict may still be coming to life, and is left alone.
fn creator_died(name: &str) -> bool {
    let Ok(segment) = Segment::open(&naming::control(name), false) else {
        return false;
    };
    if segment.len() < HEADER_SIZE {
        return false;
    }
    // SAFETY: a mapping of at least HEADER_SIZE bytes; every field of Control is valid for any
    // bit pattern, and only atomics are read.
    let control = unsafe { Control::from_segment(&segment) };
    let creator = control.processes[0].load(Ordering::Acquire);
    creator != 0 && !control::entry_alive(creator)
}

/// Removes what a dict whose control segment is gone left behind (dumps, nested dicts), but
/// never a control segment of that name: one created meanwhile is a new, live dict. Returns
/// whether there was anything to remove.
fn remove_leftovers(name: &str) -> Result<bool> {
    let control = naming::control(name);
    let leftovers: Vec<String> = naming::segments_of(name)?
        .into_iter()
        .filter(|object| *object != control)
        .collect();
    if leftovers.is_empty() || Segment::open(&control, false).is_ok() {
        return Ok(false);
    }
    for object in leftovers {
        segment::unlink(&object)?;
    }
    Ok(true)
}

/// Removes every dict whose processes all died (see [`DictInfo::orphaned`]), with its nested
/// dicts, and leftovers whose control segment is gone; with `dry_run`, only says which.
/// Returns the names of the dicts removed (or that would be).
///
/// A dict that is being created right now (not yet ready) is left alone, as are foreign
/// objects and dicts of another format version.
///
/// # Errors
/// [`Error::Io`] if /dev/shm cannot be read or an object cannot be removed.
pub fn cleanup(dry_run: bool) -> Result<Vec<String>> {
    let mut removed = Vec::new();
    for listed in list()? {
        let remove = match &listed.info {
            Ok(info) => Removal::Tree(info.orphaned()),
            // Dumps or nested dicts left without their control segment.
            Err(Error::NotFound { .. }) => Removal::Leftovers,
            // Its creator died before publishing it: nobody can open the name any more.
            Err(Error::NotReady { .. }) => Removal::Tree(creator_died(&listed.name)),
            Err(_) => Removal::Tree(false),
        };
        match remove {
            Removal::Tree(false) => continue,
            Removal::Tree(true) if !dry_run => crate::register::unlink_tree(&listed.name)?,
            Removal::Leftovers if !dry_run && !remove_leftovers(&listed.name)? => continue,
            _ => {}
        }
        removed.push(listed.name);
    }
    Ok(removed)
}
