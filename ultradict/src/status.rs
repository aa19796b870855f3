//! What `status()` reports: a snapshot of a dict's shared state, printable like UltraDict's
//! `print_status()`.

use std::fmt;
use std::time::SystemTime;

use crate::options::Lifetime;

/// The holder of a dict's writers' lock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockHolder {
    /// The holding process.
    pub pid: u32,
    /// When the holder was first seen holding the lock (by a waiter, or by this status call):
    /// for a lock held long, close to when it was taken. Taking the lock reads no clock, which
    /// keeps an uncontended acquire at a few nanoseconds.
    pub since: Option<SystemTime>,
}

/// A snapshot of a dict's shared state. `Display` prints it as a small table.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Status {
    /// The dict's name.
    pub name: String,
    /// What the dict stores, e.g. `UltraDict<alloc::string::String, u64>`.
    pub schema: String,
    /// The control segment (control block and stream) in /dev/shm.
    pub control_segment: String,
    /// The current full dump's segment, if the dict has had a dump.
    pub dump_segment: Option<String>,
    /// Bytes of stream.
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
    /// Process ids of the attached handles (one entry per handle).
    pub attached_pids: Vec<u32>,
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
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "dict              {}", self.name)?;
        writeln!(f, "schema            {}", self.schema)?;
        writeln!(f, "control segment   /dev/shm/{}", self.control_segment)?;
        match &self.dump_segment {
            Some(dump) => writeln!(
                f,
                "dump segment      /dev/shm/{dump} ({} bytes)",
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
        writeln!(
            f,
            "attached          {} {:?}",
            self.attached_pids.len(),
            self.attached_pids
        )?;
        match &self.lock_holder {
            Some(LockHolder {
                pid,
                since: Some(since),
            }) => {
                let held = since.elapsed().unwrap_or_default();
                writeln!(f, "lock              held by pid {pid} for {held:?}")?;
            }
            Some(LockHolder { pid, since: None }) => {
                writeln!(f, "lock              held by pid {pid}")?
            }
            None => writeln!(f, "lock              free")?,
        }
        write!(f, "lock recoveries   {}", self.lock_recoveries)?;
        if let Some(pid) = self.last_dead_holder {
            write!(f, " (last dead holder: pid {pid})")?;
        }
        Ok(())
    }
}
