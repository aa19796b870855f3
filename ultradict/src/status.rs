//! What `status()` reports: a snapshot of a dict's shared state, printable like UltraDict's
//! `print_status()`.

use std::fmt;
use std::time::SystemTime;

use crate::options::Lifetime;

/// The holder of a dict's writers' lock.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct LockHolder {
    /// The holding process, as its own PID namespace numbers it.
    pub pid: u32,
    /// Whether that pid means this process's PID namespace.
    pub same_pid_namespace: bool,
    /// When the holder was first seen holding the lock (by a waiter, or by this status call):
    /// for a lock held long, close to when it was taken. Taking the lock reads no clock, which
    /// keeps an uncontended acquire at a few nanoseconds.
    pub since: Option<SystemTime>,
}

impl fmt::Display for LockHolder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pid {}", self.pid)?;
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
    /// Process ids of the live attached handles (one entry per handle), each as its own PID
    /// namespace numbers it.
    pub attached_pids: Vec<u32>,
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
        write!(f, "lock recoveries   {}", self.lock_recoveries)?;
        if let Some(pid) = self.last_dead_holder {
            write!(f, " (last dead holder: pid {pid})")?;
        }
        Ok(())
    }
}
