//! How a dict is opened: create or attach, sizes, lifetime. Shared by every builder.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, Result};

/// Whether `open()` creates the dict, attaches to it, or either.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Create {
    /// Create it; fail with [`Error::AlreadyExists`] if the name is taken.
    New,
    /// Attach to it; fail with [`Error::NotFound`] if it does not exist.
    Open,
    /// Attach if it exists, create it otherwise.
    #[default]
    OpenOrCreate,
}

/// When a dict's segments are removed from /dev/shm.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Lifetime {
    /// When the last attached handle closes (and by [`cleanup`](crate::UltraDict::unlink_by_name)
    /// when every attached process died).
    #[default]
    LastClose,
    /// When the creating handle closes, whoever else is still attached (UltraDict's
    /// `auto_unlink=True`). Handles still open keep working on their own mappings.
    Creator,
    /// Never automatically: the dict outlives every process until it is unlinked explicitly.
    Persistent,
}

impl Lifetime {
    pub(crate) fn to_raw(self) -> u32 {
        match self {
            Lifetime::LastClose => 0,
            Lifetime::Creator => 1,
            Lifetime::Persistent => 2,
        }
    }

    pub(crate) fn from_raw(raw: u32) -> Option<Self> {
        match raw {
            0 => Some(Lifetime::LastClose),
            1 => Some(Lifetime::Creator),
            2 => Some(Lifetime::Persistent),
            _ => None,
        }
    }
}

/// Permission bits of a dict's objects unless its creator chose others: its user only.
pub const DEFAULT_MODE: u32 = 0o600;

/// The stream size used when none is given: 1 MiB, about 20,000 small updates between two
/// full dumps, for 1 MiB of shared memory per dict.
pub const DEFAULT_BUFFER_SIZE: usize = 1 << 20;

/// The smallest stream accepted.
pub const MIN_BUFFER_SIZE: usize = 256;

/// The largest stream accepted (offsets are 32-bit).
pub const MAX_BUFFER_SIZE: usize = (u32::MAX as usize) & !15;

/// Options common to every kind of dict handle.
#[derive(Clone, Debug)]
pub(crate) struct Options {
    pub(crate) name: Option<String>,
    pub(crate) create: Create,
    /// `None`: the creator's choice, or the default when creating.
    pub(crate) buffer_size: Option<usize>,
    pub(crate) full_dump_size: Option<usize>,
    pub(crate) lifetime: Option<Lifetime>,
    pub(crate) open_timeout: Duration,
    /// A nested child of another dict: its name is derived (and may hold `~`).
    pub(crate) child: bool,
    /// A tool looking at the dict (`ultradict get`, `dump`): its handle does not count as a
    /// user for the dict's lifetime, so a last close by a user removes the dict even while it
    /// looks (it used to find the tool alive, and the tool, which never removes, then left
    /// the dict behind).
    pub(crate) observer: bool,
    /// The directory of the dict's objects; `None`: /dev/shm.
    pub(crate) dir: Option<PathBuf>,
    /// Permission bits of the dict's objects; `None`: the creator's choice, or 0o600.
    pub(crate) mode: Option<u32>,
    /// The Redis server the dict lives on; `None`: shared memory.
    #[cfg(feature = "redis")]
    pub(crate) remote: Option<crate::remote::Target>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            name: None,
            create: Create::default(),
            buffer_size: None,
            full_dump_size: None,
            lifetime: None,
            open_timeout: Duration::from_secs(2),
            child: false,
            observer: false,
            dir: None,
            mode: None,
            #[cfg(feature = "redis")]
            remote: None,
        }
    }
}

impl Options {
    /// The options of the nested child named `name` of a dict opened with `self`: same
    /// directory, permissions and timeouts, default sizes, persistent.
    pub(crate) fn nested(&self, name: String) -> Options {
        Options {
            name: Some(name),
            create: Create::OpenOrCreate,
            buffer_size: None,
            full_dump_size: None,
            lifetime: Some(Lifetime::Persistent),
            open_timeout: self.open_timeout,
            child: true,
            observer: self.observer,
            dir: self.dir.clone(),
            mode: self.mode,
            #[cfg(feature = "redis")]
            remote: self.remote.clone(),
        }
    }

    /// The directory of the dict's objects, checked: an existing directory with a UTF-8 path.
    pub(crate) fn effective_dir(&self) -> Result<Arc<str>> {
        let Some(dir) = &self.dir else {
            return Ok(Arc::from(crate::os::SHM_DIR));
        };
        let invalid = |reason: String| Error::InvalidOption {
            option: "directory",
            reason,
        };
        let text = dir
            .to_str()
            .ok_or_else(|| invalid(format!("{} is not UTF-8", dir.display())))?;
        if !dir.is_dir() {
            return Err(invalid(format!("{text} is not a directory")));
        }
        Ok(Arc::from(text.trim_end_matches('/')))
    }

    /// The permission bits a dict created in `dir` gets, checked: read and write for the
    /// owner, nothing but read and write bits, and no bits for others than the owner in a
    /// sticky directory such as /dev/shm, where only an object's owner may remove it.
    pub(crate) fn effective_mode(&self, dir: &str) -> Result<u32> {
        let Some(mode) = self.mode else {
            return Ok(DEFAULT_MODE);
        };
        let invalid = |reason: String| Error::InvalidOption {
            option: "mode",
            reason,
        };
        if mode & 0o600 != 0o600 || mode & !0o666 != 0 {
            return Err(invalid(format!(
                "{mode:#o}: the owner needs read and write, and only read and write bits are allowed"
            )));
        }
        let sticky = crate::os::is_sticky(dir).map_err(|e| Error::io(format!("stat {dir}"), e))?;
        if mode != DEFAULT_MODE && sticky {
            return Err(invalid(format!(
                "{mode:#o} in {dir}: it has the sticky bit, so other users could never remove \
                 the objects they share; give the dict a directory of its own that the group may \
                 write (e.g. `install -d -m 2770 -g GROUP /dev/shm/APP`) with .directory(..)"
            )));
        }
        Ok(mode)
    }

    pub(crate) fn effective_buffer_size(&self) -> Result<usize> {
        let size = self.buffer_size.unwrap_or(DEFAULT_BUFFER_SIZE);
        if !(MIN_BUFFER_SIZE..=MAX_BUFFER_SIZE).contains(&size) {
            return Err(Error::InvalidOption {
                option: "buffer_size",
                reason: format!("{size} is outside {MIN_BUFFER_SIZE}..={MAX_BUFFER_SIZE}"),
            });
        }
        Ok(size.next_multiple_of(16).min(MAX_BUFFER_SIZE))
    }

    pub(crate) fn effective_full_dump_size(&self) -> Result<u64> {
        match self.full_dump_size {
            None => Ok(0),
            Some(0) => Err(Error::InvalidOption {
                option: "full_dump_size",
                reason: "0 bytes cannot hold a dump; leave it unset to let dumps grow".into(),
            }),
            Some(size) => Ok(size as u64),
        }
    }
}

/// The setters every builder shares (for a map or a derived state), on a `self.options`
/// field of type [`Options`].
macro_rules! option_setters {
    () => {
        /// The dict's name; every process that opens this name shares the dict (and, for a
        /// derived state, its nested dicts, named after it).
        pub fn name(mut self, name: impl Into<String>) -> Self {
            self.options.name = Some(name.into());
            self
        }

        /// Create, attach, or either (the default).
        pub fn create(mut self, create: $crate::Create) -> Self {
            self.options.create = create;
            self
        }

        /// Bytes of update stream (default [`DEFAULT_BUFFER_SIZE`](crate::DEFAULT_BUFFER_SIZE);
        /// for a derived state, of its root dict). When the stream is full the next write makes
        /// a full dump. Once a dump outgrows this size, the epoch it starts streams into a
        /// stream twice as large as the dump instead (in the dump's segment), so that a write's share
        /// of the dumps does not grow with the dict. On Redis it stays fixed. The creator's
        /// choice wins; asking an existing dict for another size is an error.
        pub fn buffer_size(mut self, bytes: usize) -> Self {
            self.options.buffer_size = Some(bytes);
            self
        }

        /// Fixes the size of every full dump segment. A dump that would not fit fails cleanly:
        /// the write returns [`Error::DumpTooSmall`](crate::Error::DumpTooSmall) and nothing
        /// changes. Unset, dumps are as large as they need to be.
        pub fn full_dump_size(mut self, bytes: usize) -> Self {
            self.options.full_dump_size = Some(bytes);
            self
        }

        /// When the dict's segments (and nested dicts) are removed (default
        /// [`Lifetime::LastClose`](crate::Lifetime::LastClose)).
        pub fn lifetime(mut self, lifetime: $crate::Lifetime) -> Self {
            self.options.lifetime = Some(lifetime);
            self
        }

        /// How long to wait for a dict that other processes keep busy (default 2 s).
        pub fn open_timeout(mut self, timeout: ::std::time::Duration) -> Self {
            self.options.open_timeout = timeout;
            self
        }

        /// The directory the dict's objects live in (default /dev/shm): any directory on a
        /// memory file system (tmpfs). Every process opens the dict with the same directory;
        /// nested dicts live beside their root.
        pub fn directory(mut self, dir: impl Into<::std::path::PathBuf>) -> Self {
            self.options.dir = Some(dir.into());
            self
        }

        /// Permission bits of every object of the dict, nested dicts and later dumps included
        /// (default [`DEFAULT_MODE`](crate::DEFAULT_MODE), 0o600); the umask does not narrow
        /// them. To share a dict with a group, e.g. `0o660`, give it a directory of its own
        /// that the group may write and that is setgid to the group
        /// ([`directory`](Self::directory)): in /dev/shm, which has the sticky bit, only an
        /// object's owner may remove it, so other modes are refused there. The creator's choice
        /// wins; asking an existing dict for another mode is an error.
        pub fn mode(mut self, mode: u32) -> Self {
            self.options.mode = Some(mode);
            self
        }

        /// Puts the dict on the Redis (or Valkey) server at `url`, e.g.
        /// `redis://10.0.0.5:6379/0`, instead of in shared memory: every process on any
        /// machine that opens the same name on the same server shares it. Nothing else
        /// changes: the same types, records, dumps, lock, watch and lifetimes. See the
        /// README's "Redis" section for what each operation costs there.
        #[cfg(feature = "redis")]
        #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
        pub fn redis(mut self, url: impl Into<String>) -> Self {
            self.options.remote = Some($crate::remote::Target::single(url.into()));
            self
        }

        /// Puts the dict on the Redis Cluster that `nodes` (URLs of some of its masters)
        /// belong to. A dict and its nested dicts share one hash slot.
        #[cfg(feature = "redis")]
        #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
        pub fn redis_cluster<U: Into<String>>(
            mut self,
            nodes: impl IntoIterator<Item = U>,
        ) -> Self {
            self.options.remote = Some($crate::remote::Target::cluster(
                nodes.into_iter().map(Into::into).collect(),
            ));
            self
        }

        /// How long a dict on a server waits to connect and for each reply (default 2 s);
        /// past it, the call fails with [`Error::Backend`](crate::Error::Backend). Set after
        /// [`redis`](Self::redis) or [`redis_cluster`](Self::redis_cluster).
        #[cfg(feature = "redis")]
        #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
        pub fn redis_timeout(mut self, timeout: ::std::time::Duration) -> Self {
            if let Some(target) = &mut self.options.remote {
                target.timeout = timeout;
            }
            self
        }

        /// The lease of a handle's attachment and of the lock on a server (default 3 s, at
        /// least 300 ms), renewed every third of it while the process runs. A process that
        /// stops (crashed, or stalled past the lease) stops counting as attached, and loses
        /// the lock: its writes under that lock are then refused with
        /// [`Error::LockLost`](crate::Error::LockLost). Set after [`redis`](Self::redis).
        #[cfg(feature = "redis")]
        #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
        pub fn redis_lease(mut self, lease: ::std::time::Duration) -> Self {
            if let Some(target) = &mut self.options.remote {
                target.lease = lease;
            }
            self
        }
    };
}
pub(crate) use option_setters;
