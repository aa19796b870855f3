//! A named POSIX shared-memory object, mapped into this process.
//!
//! The mapping is a [`memmap2::MmapRaw`]: other processes write the same pages, so this module
//! never hands out `&[u8]` or `&mut [u8]` over memory that others may change. Callers read and
//! write through raw pointers, atomics, or slices over regions the protocol makes immutable
//! (published dumps) or exclusive (the stream tail while holding the writers' lock).

use std::io;

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use memmap2::{MmapOptions, MmapRaw};

use crate::error::{Error, Result};
use crate::os;

/// A mapped shared-memory object. Unmapped on drop; the name stays until [`unlink`].
#[derive(Debug)]
pub(crate) struct Segment {
    object: String,
    map: MmapRaw,
    /// The object's size; the mapping of an empty object is a placeholder of another size.
    len: usize,
}

impl Segment {
    /// Creates `object` exclusively with permissions `mode`, `len` bytes reserved, mapped
    /// read-write, and hands back the descriptor too.
    ///
    /// Fails with `AlreadyExists` as an [`io::ErrorKind::AlreadyExists`] wrapped in
    /// [`Error::Io`]: callers turn that into the error their context needs.
    pub(crate) fn create_with_fd(object: &str, len: u64, mode: u32) -> Result<(Self, OwnedFd)> {
        Self::create_with(object, &[], len, len, mode)
    }

    /// Like [`create_with_fd`](Self::create_with_fd), with the first bytes written from
    /// `head`'s parts (see `os::create_object`), the rest up to `reserved` reserved, and the
    /// rest up to `len` a hole to reserve (see [`reserve`](Self::reserve)) before touching it.
    pub(crate) fn create_with(
        object: &str,
        head: &[&[u8]],
        reserved: u64,
        len: u64,
        mode: u32,
    ) -> Result<(Self, OwnedFd)> {
        let fd = os::create_object(object, head, reserved, len, mode)
            .map_err(|e| map_open_error(object, reserved.min(len), e))?;
        let segment = Self::map(object, &fd, len, true).inspect_err(|_| {
            let _ = os::unlink_object(object);
        })?;
        Ok((segment, fd))
    }

    /// Reserves `len` bytes from `start` of this segment's object (`fd` describes it), so that
    /// this process may write them, and maps them for writing now (see
    /// `os::prefault_for_writing`). A full /dev/shm is [`Error::OutOfSpace`].
    pub(crate) fn reserve(&self, fd: BorrowedFd<'_>, start: usize, len: usize) -> Result<()> {
        assert!(start.checked_add(len).is_some_and(|end| end <= self.len));
        os::reserve_range(fd, start as u64, len as u64).map_err(|err| {
            match err.raw_os_error() {
                Some(libc::ENOSPC) | Some(libc::EFBIG) => Error::OutOfSpace {
                    segment: self.object.clone(),
                    bytes: len as u64,
                },
                _ => Error::io(format!("reserving {len} bytes of {}", self.object), err),
            }
        })?;
        // SAFETY: in bounds of the mapping (asserted), which lives as long as `self`.
        os::prefault_for_writing(unsafe { self.as_mut_ptr().add(start) }, len);
        Ok(())
    }

    /// Opens and maps an existing object, and hands back the descriptor too.
    pub(crate) fn open_with_fd(object: &str, writable: bool) -> Result<(Self, OwnedFd)> {
        let fd = open_fd(object, writable)?;
        let len =
            os::object_len(fd.as_fd()).map_err(|e| Error::io(format!("fstat {object}"), e))?;
        let segment = Self::map(object, &fd, len, writable)?;
        Ok((segment, fd))
    }

    /// Gives the segment the name it was renamed to (for messages).
    pub(crate) fn renamed(&mut self, object: &str) {
        self.object = object.to_owned();
    }

    fn map(object: &str, fd: &std::os::fd::OwnedFd, len: u64, writable: bool) -> Result<Self> {
        let len = usize::try_from(len).map_err(|_| Error::corrupt(object, "larger than memory"))?;
        if len == 0 {
            // An object its creator has not sized yet; nothing to map.
            return Ok(Self {
                object: object.to_owned(),
                map: empty_map()?,
                len: 0,
            });
        }
        let mut options = MmapOptions::new();
        options.len(len);
        let map = if writable {
            options.map_raw(fd)
        } else {
            options.map_raw_read_only(fd)
        };
        let map = map.map_err(|e| Error::io(format!("mapping {object}"), e))?;
        Ok(Self {
            object: object.to_owned(),
            map,
            len,
        })
    }

    /// The object's name in /dev/shm.
    pub(crate) fn object(&self) -> &str {
        &self.object
    }

    /// Mapped length in bytes.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Start of the mapping (page aligned).
    pub(crate) fn as_ptr(&self) -> *const u8 {
        self.map.as_ptr()
    }

    /// Start of the mapping, for writes. Only valid on segments opened writable.
    pub(crate) fn as_mut_ptr(&self) -> *mut u8 {
        self.map.as_mut_ptr()
    }

    /// Makes this process's mapping of the first `len` bytes (a multiple of the page size, or
    /// the whole segment) read-only, for bytes that nobody may write any more (a published
    /// dump's archive).
    pub(crate) fn protect_read_only(&self, len: usize) -> Result<()> {
        let page = os::page_size();
        assert!(len <= self.len && (len == self.len || len.is_multiple_of(page)));
        // The whole segment: its last page, mapped whole, goes too.
        let len = len.next_multiple_of(page);
        // SAFETY: the mapping starts page-aligned and spans whole pages, `len` of them at most
        // (asserted, rounded up to the page the segment's end is on), lives as long as `self`,
        // and the caller says nothing writes those bytes any more.
        unsafe { os::protect_read_only(self.as_mut_ptr(), len) }
            .map_err(|e| Error::io(format!("protecting {}", self.object), e))
    }

    /// A slice over bytes that no process writes any more (a published dump).
    ///
    /// # Safety
    /// The caller guarantees that no process writes `range` while the slice lives.
    pub(crate) unsafe fn immutable_bytes(&self, start: usize, len: usize) -> &[u8] {
        assert!(start.checked_add(len).is_some_and(|end| end <= self.len()));
        // SAFETY: in bounds (asserted), mapped for the life of `self`, and unchanging by the
        // caller's guarantee.
        unsafe { std::slice::from_raw_parts(self.as_ptr().add(start), len) }
    }
}

fn empty_map() -> Result<MmapRaw> {
    MmapOptions::new()
        .len(1)
        .map_anon()
        .map(MmapRaw::from)
        .map_err(|e| Error::io("mapping an empty placeholder", e))
}

/// Removes `object`'s name. A missing object is not an error: it is what the caller wanted.
pub(crate) fn unlink(object: &str) -> Result<()> {
    match os::unlink_object(object) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EACCES | libc::EPERM)) => {
            Err(Error::PermissionDenied {
                segment: object.to_owned(),
            })
        }
        Err(e) if e.raw_os_error() == Some(libc::EISDIR) => Err(Error::Foreign {
            segment: object.to_owned(),
            reason: "a directory".to_owned(),
        }),
        Err(e) => Err(Error::io(format!("unlinking {object}"), e)),
    }
}

/// Opens `object` without mapping it (see `os::open_object`).
pub(crate) fn open_fd(object: &str, writable: bool) -> Result<OwnedFd> {
    os::open_object(object, writable).map_err(|e| map_open_error(object, 0, e))
}

fn map_open_error(object: &str, len: u64, err: io::Error) -> Error {
    if os::is_not_regular(&err) {
        return Error::Foreign {
            segment: object.to_owned(),
            reason: err.to_string(),
        };
    }
    match err.raw_os_error() {
        Some(libc::ENOSPC) | Some(libc::EFBIG) => Error::OutOfSpace {
            segment: object.to_owned(),
            bytes: len,
        },
        Some(libc::EACCES) | Some(libc::EPERM) => Error::PermissionDenied {
            segment: object.to_owned(),
        },
        _ => Error::io(format!("opening {object}"), err),
    }
}

/// Whether something exists under the name `object` (not following a symbolic link).
pub(crate) fn exists(object: &str) -> Result<bool> {
    match os::named_object_id(object) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(Error::io(format!("looking up {object}"), e)),
    }
}

/// Whether `err` is a missing object.
pub(crate) fn is_not_found(err: &Error) -> bool {
    matches!(err, Error::Io { source, .. } if source.kind() == io::ErrorKind::NotFound)
}

/// Whether `err` is an object that already exists.
pub(crate) fn is_already_exists(err: &Error) -> bool {
    matches!(err, Error::Io { source, .. } if source.kind() == io::ErrorKind::AlreadyExists)
}
