//! The crate's one error type. Every variant says what went wrong and carries what the caller
//! needs to act on it: the name involved, the holder of a lock, both sides of a mismatch.

use std::io;
use std::time::Duration;

/// Everything that can go wrong in ultradict.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The dict name breaks the naming rules (see [`UltraDict::builder`](crate::UltraDict::builder)).
    #[error("invalid dict name {name:?}: {reason}")]
    InvalidName {
        /// The name as given.
        name: String,
        /// Which rule it breaks.
        reason: &'static str,
    },

    /// `Create::New` was asked for, but a dict of this name exists.
    #[error("a dict named {name:?} already exists")]
    AlreadyExists {
        /// The dict's name.
        name: String,
    },

    /// `Create::Open` was asked for, but no dict of this name exists.
    #[error("no dict named {name:?} exists")]
    NotFound {
        /// The dict's name.
        name: String,
    },

    /// The dict stayed busy for the whole `open_timeout`: another process kept creating,
    /// joining or removing it (a process stopped in the middle, e.g. by SIGSTOP, does that).
    #[error(
        "dict {name:?} stayed busy for {waited:?}: another process is creating, attaching to \
         or removing it and did not finish (is it stopped?)"
    )]
    NotReady {
        /// The dict's name.
        name: String,
        /// How long this process waited.
        waited: Duration,
    },

    /// The dict this handle belongs to was removed (unlinked, or closed by its creator under
    /// `Lifetime::Creator`, or its root was removed). The handle still reads what it has and
    /// may append to the stream, but creates nothing more in /dev/shm.
    #[error(
        "dict {name:?} was removed while this handle was open: it creates nothing more in \
         /dev/shm (open the name again to get the current dict)"
    )]
    Removed {
        /// The dict's name.
        name: String,
    },

    /// A shared-memory object of that name exists but is not an ultradict segment.
    #[error("shared-memory object {segment:?} is not an ultradict segment: {reason}")]
    Foreign {
        /// The object's name in /dev/shm.
        segment: String,
        /// What gave it away.
        reason: String,
    },

    /// The segment was written by another version of ultradict's format.
    #[error("segment {segment:?} has format version {found}, this build reads version {expected}")]
    VersionMismatch {
        /// The object's name in /dev/shm.
        segment: String,
        /// The version in the segment.
        found: u32,
        /// The version this build writes and reads.
        expected: u32,
    },

    /// The dict holds other types (or another struct) than this handle was opened with.
    #[error("dict {name:?} holds {found}, but this process opened it as {expected}")]
    SchemaMismatch {
        /// The dict's name.
        name: String,
        /// The schema this process asked for.
        expected: String,
        /// The schema the dict was created with.
        found: String,
    },

    /// An explicitly requested parameter differs from the one the creator chose.
    #[error("dict {name:?} was created with {parameter} = {actual}, but {requested} was requested")]
    ParameterMismatch {
        /// The dict's name.
        name: String,
        /// Which parameter.
        parameter: &'static str,
        /// What this process asked for.
        requested: String,
        /// What the creator chose (and what is in force).
        actual: String,
    },

    /// A builder option is out of range.
    #[error("invalid option {option}: {reason}")]
    InvalidOption {
        /// The option's name.
        option: &'static str,
        /// What is wrong with the value.
        reason: String,
    },

    /// /dev/shm has no room for a segment, or for more of a dump's stream; nothing was
    /// changed.
    #[error("no space in /dev/shm for {bytes} bytes of segment {segment:?}")]
    OutOfSpace {
        /// The object that could not be created or grown.
        segment: String,
        /// The bytes it needed.
        bytes: u64,
    },

    /// The state does not fit in the fixed `full_dump_size`; nothing was changed.
    #[error(
        "the full dump of dict {name:?} needs more than its fixed capacity of {capacity} bytes; \
         nothing was changed (raise full_dump_size, or leave it unset to let dumps grow)"
    )]
    DumpTooSmall {
        /// The dict's name.
        name: String,
        /// The fixed dump capacity.
        capacity: u64,
    },

    /// Bytes in shared memory failed validation.
    #[error("corrupt data in {segment:?}: {detail}")]
    Corrupt {
        /// The object holding the bad bytes.
        segment: String,
        /// What was wrong.
        detail: String,
    },

    /// A value could not be serialized for a reason other than lack of space.
    #[error("could not serialize an update of dict {name:?}: {detail}")]
    Serialize {
        /// The dict's name.
        name: String,
        /// What rkyv reported.
        detail: String,
    },

    /// The lock is held by another thread or process and a non-blocking attempt was made.
    #[error(
        "the lock of dict {name:?} is held by process {holder_pid}{}",
        on_host(holder_host)
    )]
    WouldBlock {
        /// The dict's name.
        name: String,
        /// The holder's process id.
        holder_pid: u32,
        /// The holder's machine, for a dict on a server (none for shared memory).
        holder_host: Option<String>,
    },

    /// The lock was not acquired within the timeout.
    #[error(
        "timed out after {waited:?} waiting for the lock of dict {name:?}, held by process \
         {holder_pid}{}",
        on_host(holder_host)
    )]
    LockTimeout {
        /// The dict's name.
        name: String,
        /// The holder's process id when the wait ended.
        holder_pid: u32,
        /// The holder's machine, for a dict on a server (none for shared memory).
        holder_host: Option<String>,
        /// How long this thread waited.
        waited: Duration,
    },

    /// This thread holds the lock through another handle of the same dict; waiting would deadlock.
    #[error(
        "this thread already holds the lock of dict {name:?} through another handle; use that \
         handle inside the critical section"
    )]
    LockedByOtherHandle {
        /// The dict's name.
        name: String,
    },

    /// The dict's process table is full.
    #[error("dict {name:?} is attached {limit} times already, the most it can track")]
    TooManyHandles {
        /// The dict's name.
        name: String,
        /// The size of the process table.
        limit: usize,
    },

    /// The caller may not open or remove the object: another user's (a dict's objects have
    /// mode 0600 unless its creator chose a mode; in a sticky directory such as /dev/shm only
    /// an object's owner may remove it), or its mode shuts this user out.
    #[error(
        "permission denied for {segment:?}: its owner or mode does not let this user open or \
         remove it"
    )]
    PermissionDenied {
        /// The object's name in /dev/shm.
        segment: String,
    },

    /// The server a dict lives on could not be reached, or failed, while doing something.
    /// Nothing was changed unless the server applied it before the reply was lost; the handle
    /// connects again on its next call.
    #[error("Redis server {address} failed while {doing}: {detail}")]
    Backend {
        /// The server's address (or a Cluster's seed nodes).
        address: String,
        /// What was being done.
        doing: String,
        /// What the client library reported.
        detail: String,
    },

    /// This thread held the lock of a dict on a server, but its lease ran out (the process
    /// stalled past it) and the lock was lost: the write was refused, nothing was written.
    #[error(
        "the lock of dict {name:?} was lost (its lease ran out while held); the write was \
         refused and nothing was written"
    )]
    LockLost {
        /// The dict's name.
        name: String,
    },

    /// Another operating-system error.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The system's error.
        #[source]
        source: io::Error,
    },
}

/// " on host H" for a lock holder on another machine.
fn on_host(host: &Option<String>) -> String {
    host.as_ref()
        .map(|host| format!(" on host {host}"))
        .unwrap_or_default()
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn corrupt(segment: &str, detail: impl Into<String>) -> Self {
        Error::Corrupt {
            segment: segment.to_owned(),
            detail: detail.into(),
        }
    }

    /// A value read from a validated dump failed to deserialize (`rkyv`'s reason).
    pub(crate) fn undeserializable(reason: &rkyv::rancor::Error) -> Self {
        Error::corrupt("dump", format!("value failed to deserialize: {reason}"))
    }
}
