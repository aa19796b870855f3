//! What `status()` reports: a snapshot of a dict's shared state, printable like UltraDict's
//! `print_status()`; and the one reading of a control block behind it and `inspect()`.

use std::fmt;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use crate::control::{Control, PROCESS_SLOTS, SLEEPERS, StateWord};
use crate::engine::Engine;
use crate::inspect::Attached;
use crate::liveness::Anchor;
use crate::naming::Place;
use crate::options::Lifetime;
use crate::schema::Schema;

/// The holder of a dict's writers' lock.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct LockHolder {
    /// The holding process, as its own PID namespace numbers it.
    pub pid: u32,
    /// Whether that pid means this process's PID namespace.
    pub same_pid_namespace: bool,
    /// When the holder was first seen holding the lock (by a waiter, or by a handle's
    /// `status()`; `inspect` only reads it): for a lock held long, close to when it was taken.
    /// Taking the lock reads no clock, which keeps an uncontended acquire at a few nanoseconds.
    pub since: Option<SystemTime>,
    /// The holder's machine, for a dict on a server (none for shared memory).
    pub host: Option<String>,
}

impl fmt::Display for LockHolder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pid {}", self.pid)?;
        if let Some(host) = &self.host {
            write!(f, " on {host}")?;
        }
        if !self.same_pid_namespace {
            f.write_str(" (of another PID namespace)")?;
        }
        Ok(())
    }
}

/// A snapshot of a dict's shared state. `Display` prints it as a small table.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Status {
    /// The dict's name.
    pub name: String,
    /// What the dict stores, e.g. `UltraDict<alloc::string::String, u64>`.
    pub schema: String,
    /// The directory of the dict's objects (/dev/shm unless its creator chose another).
    pub directory: String,
    /// The control segment (control block and stream): its name in [`directory`](Self::directory).
    pub control_segment: String,
    /// The current full dump's segment, if the dict has had a dump: its name in the directory.
    pub dump_segment: Option<String>,
    /// Bytes of stream in the current epoch: the dict's `buffer_size` in epoch 0, then as
    /// much as the current dump's archive if that is more.
    pub buffer_size: usize,
    /// Bytes of stream used in this epoch.
    pub buffer_used: usize,
    /// Fixed dump capacity, if one was set.
    pub full_dump_size: Option<u64>,
    /// Current epoch: the number of full dumps the state went through.
    pub epoch: u32,
    /// The committed stream offset.
    pub committed_offset: usize,
    /// Records appended since creation.
    pub records: u64,
    /// Full dumps written since creation.
    pub dumps: u64,
    /// Size of the current dump's archive in bytes.
    pub dump_bytes: u64,
    /// When the dict's segments are removed.
    pub lifetime: Lifetime,
    /// Process ids of the live attached handles (one entry per handle), each as its own PID
    /// namespace numbers it.
    pub attached_pids: Vec<u32>,
    /// The live attached handles as `HOST pid PID`, for a dict on a server (empty for
    /// shared memory, where they are all on this machine).
    pub attached: Vec<String>,
    /// Threads of live handles sleeping in `wait_for_change` (a sleeper killed in its sleep
    /// stops counting with its handle).
    pub sleepers: u32,
    /// Who holds the writers' lock, if anybody.
    pub lock_holder: Option<LockHolder>,
    /// How often a dead holder's lock was recovered.
    pub lock_recoveries: u64,
    /// The process id of the last dead lock holder recovered from.
    pub last_dead_holder: Option<u32>,
    /// Lock-free catch-ups (any process) that gave up and caught up under the lock.
    pub locked_catch_ups: u64,
    /// Catch-ups done by this handle.
    pub catch_ups: u64,
    /// Whether this handle's dict was removed (it then creates nothing more in /dev/shm).
    pub removed: bool,
    /// Why the dict's server could not be asked (the rest is then this handle's own view).
    pub unreachable: Option<String>,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "dict              {}", self.name)?;
        writeln!(f, "schema            {}", self.schema)?;
        let dir = &self.directory;
        writeln!(f, "control segment   {dir}/{}", self.control_segment)?;
        match &self.dump_segment {
            Some(dump) => writeln!(
                f,
                "dump segment      {dir}/{dump} ({} bytes)",
                self.dump_bytes
            )?,
            None => writeln!(f, "dump segment      none yet")?,
        }
        let percent = self.buffer_used as f64 * 100.0 / self.buffer_size.max(1) as f64;
        writeln!(
            f,
            "stream            {} of {} bytes used ({percent:.1} %)",
            self.buffer_used, self.buffer_size
        )?;
        match self.full_dump_size {
            Some(size) => writeln!(f, "dump capacity     {size} bytes (fixed)")?,
            None => writeln!(f, "dump capacity     grows as needed")?,
        }
        writeln!(
            f,
            "epoch             {} (committed offset {})",
            self.epoch, self.committed_offset
        )?;
        writeln!(f, "records, dumps    {}, {}", self.records, self.dumps)?;
        writeln!(f, "lifetime          {:?}", self.lifetime)?;
        if self.attached.is_empty() {
            writeln!(
                f,
                "attached          {} {:?}",
                self.attached_pids.len(),
                self.attached_pids
            )?;
        } else {
            writeln!(
                f,
                "attached          {} [{}]",
                self.attached.len(),
                self.attached.join(", ")
            )?;
        }
        writeln!(f, "sleepers          {}", self.sleepers)?;
        match &self.lock_holder {
            Some(holder) => {
                write!(f, "lock              held by {holder}")?;
                if let Some(held) = holder.since.and_then(|since| since.elapsed().ok()) {
                    write!(f, " for {held:?}")?;
                }
                writeln!(f)?;
            }
            None => writeln!(f, "lock              free")?,
        }
        if self.removed {
            writeln!(f, "removed           yes: this handle creates nothing more")?;
        }
        if let Some(why) = &self.unreachable {
            writeln!(
                f,
                "unreachable       {why} (the rest is this handle's own view)"
            )?;
        }
        write!(f, "lock recoveries   {}", self.lock_recoveries)?;
        if let Some(pid) = self.last_dead_holder {
            write!(f, " (last dead holder: pid {pid})")?;
        }
        Ok(())
    }
}

/// What a control block says, read once: the one reading behind [`Status`] (a handle's view)
/// and `DictInfo` (the command-line tool's, without the types). Liveness comes from `anchor`.
pub(crate) struct Reading {
    pub(crate) state: StateWord,
    pub(crate) lifetime: Lifetime,
    pub(crate) records: u64,
    pub(crate) dumps: u64,
    pub(crate) dump_bytes: u64,
    pub(crate) locked_catch_ups: u64,
    pub(crate) lock_holder: Option<LockHolder>,
    /// Whether the holder's handle lives; `None` while the lock is free.
    pub(crate) lock_holder_alive: Option<bool>,
    pub(crate) lock_recoveries: u64,
    pub(crate) last_dead_holder: Option<u32>,
    /// Every occupied slot of the process table, dead or alive.
    pub(crate) attached: Vec<Attached>,
    pub(crate) removing: bool,
    /// Publications so far (wrapping, 31 bits).
    pub(crate) changes: u32,
}

impl Reading {
    /// Reads `control`, judging liveness through `anchor`. Writes nothing: `inspect` maps the
    /// control block read-only (stamping "held since" here was a write into that mapping, and
    /// `ultradict list` died of SIGSEGV whenever it found a lock nobody had yet seen held).
    pub(crate) fn of(control: &Control, anchor: &Anchor) -> Reading {
        let lock = &control.lock.0;
        let holder_slot = crate::lock::slot_of(crate::lock::holder(lock));
        let lock_holder = holder_slot.map(|slot| {
            let since = lock.held_since_ns.load(Ordering::Relaxed);
            let (pid, same_pid_namespace) = control.slot_pid(slot);
            LockHolder {
                pid,
                same_pid_namespace,
                since: (since != 0).then(|| SystemTime::UNIX_EPOCH + Duration::from_nanos(since)),
                host: None,
            }
        });
        let attached = (0..PROCESS_SLOTS)
            .filter(|&slot| control.processes[slot].owner.load(Ordering::Acquire) != 0)
            .map(|slot| {
                let (pid, same_pid_namespace) = control.slot_pid(slot);
                Attached {
                    pid,
                    same_pid_namespace,
                    alive: anchor.slot_alive(slot),
                    sleepers: control.processes[slot].sleepers.load(Ordering::Relaxed),
                    host: None,
                }
            })
            .collect();
        let last_dead = lock.last_dead_pid.load(Ordering::Relaxed);
        Reading {
            state: control.state(),
            lifetime: Lifetime::from_raw(control.lifetime).unwrap_or_default(),
            records: control.counters.records.load(Ordering::Relaxed),
            dumps: control.counters.dumps.load(Ordering::Relaxed),
            dump_bytes: control.counters.dump_len.load(Ordering::Relaxed),
            locked_catch_ups: control.counters.locked_catch_ups.load(Ordering::Relaxed),
            lock_holder,
            lock_holder_alive: holder_slot.map(|slot| anchor.slot_alive(slot)),
            lock_recoveries: lock.recoveries.load(Ordering::Relaxed),
            last_dead_holder: (last_dead != 0).then_some(last_dead),
            attached,
            removing: control.is_removed(),
            changes: control.changes.sequence.load(Ordering::Relaxed) & !SLEEPERS,
        }
    }

    /// The live handles.
    pub(crate) fn live(&self) -> impl Iterator<Item = &Attached> + Clone {
        self.attached.iter().filter(|a| a.alive)
    }
}

impl<S: Schema> Engine<S> {
    /// The dict's shared state as this handle sees it.
    pub(crate) fn report(&self) -> Status {
        let control = self.control();
        let anchor = self.membership.anchor.read();
        // A handle maps the control block writable: it stamps when the holder was first seen,
        // so that the report (and later ones, `inspect`'s too) can say since when it is held.
        crate::lock::note_holder_seen(&control.lock.0);
        let reading = Reading::of(control, &anchor);
        let state = reading.state;
        Status {
            name: self.place.name().to_owned(),
            schema: control.schema_text(),
            directory: self.place.dir().to_string(),
            control_segment: Place::file_name(&self.place.control()).to_owned(),
            dump_segment: (state.epoch > 0)
                .then(|| Place::file_name(&self.dump_object(state.epoch)).to_owned()),
            buffer_size: match control.counters.stream_len.load(Ordering::Relaxed) {
                0 => self.stream_capacity,
                len => usize::try_from(len).unwrap_or(usize::MAX),
            },
            buffer_used: state.committed as usize,
            full_dump_size: (control.full_dump_size != 0).then_some(control.full_dump_size),
            epoch: state.epoch,
            committed_offset: state.committed as usize,
            records: reading.records,
            dumps: reading.dumps,
            dump_bytes: reading.dump_bytes,
            lifetime: reading.lifetime,
            attached_pids: reading.live().map(|a| a.pid).collect(),
            attached: Vec::new(),
            sleepers: reading.live().map(|a| a.sleepers).sum(),
            lock_holder: reading.lock_holder,
            lock_recoveries: reading.lock_recoveries,
            last_dead_holder: reading.last_dead_holder,
            locked_catch_ups: reading.locked_catch_ups,
            catch_ups: self.catch_ups.load(Ordering::Relaxed),
            removed: reading.removing || !anchor.is_named(&self.place.control()),
            unreachable: None,
        }
    }
}
