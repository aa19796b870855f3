//! Linux: shared-memory objects in /dev/shm, futexes, open-file-description locks, and the
//! identity of threads and processes.
//!
//! Objects are opened by path under /dev/shm (what glibc's `shm_open` does), never following
//! a symbolic link and refusing anything but a regular file, so that an odd object under a
//! dict's name is an error rather than a hang or a surprise.

use std::cell::Cell;
use std::fs;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::sync::Once;
use std::sync::atomic::{AtomicI32, AtomicPtr, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use rustix::fs::{CWD, FallocateFlags, FileType, Mode, OFlags, RenameFlags};
use rustix::thread::futex;

/// Where the kernel shows POSIX shared-memory objects.
pub(crate) const SHM_DIR: &str = "/dev/shm";

/// The longest file name the kernel accepts in /dev/shm.
pub(crate) const MAX_OBJECT_NAME: usize = 255;

/// The error of opening something under a dict's name that is not a regular file (a symbolic
/// link, a directory, a FIFO, ...). Carried inside an [`io::Error`] of kind `Other`.
#[derive(Debug, thiserror::Error)]
#[error("a symbolic link or another object that is not a regular file")]
pub(crate) struct NotRegular;

/// Whether `err` says the object is not a regular file.
pub(crate) fn is_not_regular(err: &io::Error) -> bool {
    err.get_ref().is_some_and(|inner| inner.is::<NotRegular>())
}

/// Allocates `len` bytes of `fd` from `offset`. fallocate(2) may fail with EINTR when a signal
/// arrives (tmpfs checks for one while it allocates): it is tried again, the part done stays
/// done. A test that sent signals during large dumps never saw EINTR on this kernel, so this
/// retry is untested.
///
/// Reserving makes touching the bytes safe: a full /dev/shm fails here with `ENOSPC` instead of
/// a SIGBUS on first touch.
pub(crate) fn reserve_range(fd: BorrowedFd<'_>, offset: u64, len: u64) -> io::Result<()> {
    loop {
        match rustix::fs::fallocate(fd, FallocateFlags::empty(), offset, len) {
            Err(rustix::io::Errno::INTR) => continue,
            other => return Ok(other?),
        }
    }
}

/// Creates the object at path `object` exclusively with permissions `mode` (the umask does
/// not narrow them), `len` bytes long: its first bytes written from `head` (its parts in
/// order: one copy into the object, and no zeroing of pages about to be overwritten), the rest
/// up to `reserved` reserved, and what lies beyond that a hole that must be reserved (see
/// [`reserve_range`]) before it is touched. A full /dev/shm fails here with `ENOSPC` instead
/// of a SIGBUS on first touch.
pub(crate) fn create_object(
    object: &str,
    head: &[&[u8]],
    reserved: u64,
    len: u64,
    mode: u32,
) -> io::Result<OwnedFd> {
    let fd = rustix::fs::open(
        object,
        OFlags::CREATE | OFlags::EXCL | OFlags::RDWR | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::from_raw_mode(0o600),
    )?;
    let filled = (|| -> io::Result<()> {
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode & 0o777))?;
        let mut at = 0u64;
        for part in head {
            let mut rest = *part;
            while !rest.is_empty() {
                let written = match rustix::io::pwrite(&fd, rest, at) {
                    Err(rustix::io::Errno::INTR) => continue,
                    other => other?,
                };
                if written == 0 {
                    return Err(io::Error::from(io::ErrorKind::WriteZero));
                }
                rest = &rest[written..];
                at += written as u64;
            }
        }
        let reserved = reserved.min(len);
        if reserved > at {
            reserve_range(fd.as_fd(), at, reserved - at)?;
        }
        if len > reserved.max(at) {
            rustix::fs::ftruncate(&fd, len)?;
        }
        Ok(())
    })();
    if let Err(err) = filled {
        let _ = rustix::fs::unlink(object);
        return Err(err);
    }
    Ok(fd)
}

/// Asks the kernel to map the pages of `len` bytes at `ptr` for writing now, in one call,
/// rather than one fault at a time on first touch. Only a hint: failure (an older kernel)
/// changes nothing.
pub(crate) fn prefault_for_writing(ptr: *mut u8, len: usize) {
    // SAFETY: MADV_POPULATE_WRITE neither changes contents nor unmaps; it fails harmlessly on
    // a range that is not mapped writable.
    let _ = unsafe { rustix::mm::madvise(ptr.cast(), len, rustix::mm::Advice::LinuxPopulateWrite) };
}

/// Drops this process's page-table entries for `len` bytes of a shared mapping at `ptr`, a
/// megabyte per call, so that the mapping's `munmap` has little left to do.
///
/// Unmapping takes the process's address-space lock for writing while it clears the page
/// table: about 2.5 ms for a 1M-entry dump's mapping, during which every `mmap` of the
/// process waits (a reader's switch to the next dump, mapping it, measured 2.5 ms instead of
/// 10 us). Each call here holds that lock only for reading, for a megabyte's entries, and
/// lets others map in between. Failure changes nothing: the `munmap` then does the work.
pub(crate) fn release_mapped_pages(ptr: *mut u8, len: usize) {
    const CHUNK: usize = 1 << 20;
    let mut at = 0;
    while at < len {
        let part = CHUNK.min(len - at);
        // SAFETY: the range lies within the caller's shared mapping, which nobody reads or
        // writes any more (the caller unmaps it next). MADV_DONTNEED on a shared mapping only
        // drops page-table entries: the object's pages stay, and a later access would fault
        // them back in unchanged.
        let _ = unsafe {
            rustix::mm::madvise(
                ptr.wrapping_add(at).cast(),
                part,
                rustix::mm::Advice::LinuxDontNeed,
            )
        };
        at += part;
    }
}

/// Asks the kernel to back the whole 2 MiB pages within `len` bytes of anonymous memory at
/// `ptr` with huge pages when they are first touched (transparent huge pages, where the
/// system leaves them to `madvise`): a large buffer written once then costs a fault per
/// 2 MiB instead of per 4 KiB. Only a hint.
pub(crate) fn advise_huge_pages(ptr: *mut u8, len: usize) {
    const HUGE: usize = 2 << 20;
    let start = ptr.addr().next_multiple_of(HUGE);
    let end = (ptr.addr() + len) / HUGE * HUGE;
    if end > start {
        // SAFETY: MADV_HUGEPAGE changes neither contents nor mappings, only how later faults
        // in the range are served; the range lies within the caller's allocation.
        let _ = unsafe {
            rustix::mm::madvise(
                ptr.with_addr(start).cast(),
                end - start,
                rustix::mm::Advice::LinuxHugepage,
            )
        };
    }
}

/// Opens an existing object for reading and, when `writable`, writing. Never follows a
/// symbolic link and never blocks; anything but a regular file is [`NotRegular`].
pub(crate) fn open_object(object: &str, writable: bool) -> io::Result<OwnedFd> {
    let access = if writable {
        OFlags::RDWR
    } else {
        OFlags::RDONLY
    };
    let fd = rustix::fs::open(
        object,
        access | OFlags::CLOEXEC | OFlags::NOFOLLOW | OFlags::NONBLOCK,
        Mode::empty(),
    )
    .map_err(|err| match err {
        rustix::io::Errno::LOOP | rustix::io::Errno::ISDIR => io::Error::other(NotRegular),
        err => err.into(),
    })?;
    if FileType::from_raw_mode(rustix::fs::fstat(&fd)?.st_mode) != FileType::RegularFile {
        return Err(io::Error::other(NotRegular));
    }
    Ok(fd)
}

/// A new open file description of the object `fd` describes, with the same access mode
/// (unlike `dup`, which shares the description). Locks taken through it belong to it alone:
/// neither a mapping made from `fd` nor a forked child's copy of that mapping holds it.
/// Opens `/proc/self/fd/N`, which names the object itself even if it was renamed or unlinked
/// meanwhile.
pub(crate) fn reopen(fd: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    let access = rustix::fs::fcntl_getfl(fd)? & OFlags::RWMODE;
    let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
    Ok(rustix::fs::open(
        path.as_str(),
        access | OFlags::CLOEXEC | OFlags::NONBLOCK,
        Mode::empty(),
    )?)
}

/// Whether `dir` has the sticky bit (as /dev/shm has): then only an object's owner may remove
/// it.
pub(crate) fn is_sticky(dir: &str) -> io::Result<bool> {
    use std::os::unix::fs::PermissionsExt;
    Ok(fs::metadata(dir)?.permissions().mode() & 0o1000 != 0)
}

/// The size of an open object in bytes.
pub(crate) fn object_len(fd: BorrowedFd<'_>) -> io::Result<u64> {
    let stat = rustix::fs::fstat(fd)?;
    u64::try_from(stat.st_size).map_err(|_| io::Error::other("negative object size"))
}

/// What identifies an object whatever its name: device and inode, plus its group (for
/// dicts shared by a group).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ObjectId {
    pub(crate) dev: u64,
    pub(crate) ino: u64,
}

/// The identity of the object behind `fd`, and its group.
pub(crate) fn object_id(fd: BorrowedFd<'_>) -> io::Result<(ObjectId, u32)> {
    let stat = rustix::fs::fstat(fd)?;
    Ok((
        ObjectId {
            dev: stat.st_dev,
            ino: stat.st_ino,
        },
        stat.st_gid,
    ))
}

/// The identity of the object now at path `object`, without opening it.
pub(crate) fn named_object_id(object: &str) -> io::Result<ObjectId> {
    let meta = fs::symlink_metadata(object)?;
    Ok(ObjectId {
        dev: meta.dev(),
        ino: meta.ino(),
    })
}

/// Gives object `from` the name `to`, failing with `AlreadyExists` if `to` is taken: the one
/// step that makes a fully built dict visible.
pub(crate) fn rename_object_noreplace(from: &str, to: &str) -> io::Result<()> {
    Ok(rustix::fs::renameat_with(
        CWD,
        from,
        CWD,
        to,
        RenameFlags::NOREPLACE,
    )?)
}

/// Removes the name of an object; mappings that exist stay valid.
pub(crate) fn unlink_object(object: &str) -> io::Result<()> {
    Ok(rustix::fs::unlink(object)?)
}

/// The names of every object in directory `dir` whose name starts with `prefix`.
pub(crate) fn list_objects(dir: &str, prefix: &str) -> io::Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if let Some(name) = entry.file_name().to_str()
            && name.starts_with(prefix)
        {
            names.push(name.to_owned());
        }
    }
    names.sort();
    Ok(names)
}

// ------------------------------------------------------------------ byte locks

/// An exclusive open-file-description lock on byte `byte` of `fd`'s object, without waiting.
/// `Ok(false)` when another open file description holds it.
///
/// Such a lock belongs to the open file description, not to a process or thread: the kernel
/// drops it when the last descriptor of that description closes, which includes the death of
/// the process in any way, and every process that opens the object sees it, whatever PID
/// namespace it lives in. Bytes beyond the end of the object can be locked too.
pub(crate) fn try_lock_byte(fd: BorrowedFd<'_>, byte: u64) -> io::Result<bool> {
    match byte_lock(fd, libc::F_OFD_SETLK, libc::F_WRLCK, byte, 1) {
        Ok(_) => Ok(true),
        Err(err) if matches!(err.raw_os_error(), Some(libc::EAGAIN | libc::EACCES)) => Ok(false),
        Err(err) => Err(err),
    }
}

/// Releases this description's lock on byte `byte`.
pub(crate) fn unlock_byte(fd: BorrowedFd<'_>, byte: u64) -> io::Result<()> {
    byte_lock(fd, libc::F_OFD_SETLK, libc::F_UNLCK, byte, 1).map(|_| ())
}

/// Whether an open file description other than `fd`'s holds a lock on any of the `len` bytes
/// from `start`. Works on a read-only descriptor.
pub(crate) fn bytes_locked_by_others(fd: BorrowedFd<'_>, start: u64, len: u64) -> io::Result<bool> {
    let found = byte_lock(fd, libc::F_OFD_GETLK, libc::F_WRLCK, start, len)?;
    Ok(i32::from(found.l_type) != libc::F_UNLCK)
}

/// The first byte of a lock that another open file description holds on `len` bytes of `fd`
/// from `start`, clipped to that range; `None` if there is none.
pub(crate) fn lock_held_by_others(
    fd: BorrowedFd<'_>,
    start: u64,
    len: u64,
) -> io::Result<Option<u64>> {
    let found = byte_lock(fd, libc::F_OFD_GETLK, libc::F_WRLCK, start, len)?;
    if i32::from(found.l_type) == libc::F_UNLCK {
        return Ok(None);
    }
    Ok(Some(
        u64::try_from(found.l_start).map_or(start, |at| at.max(start)),
    ))
}

fn byte_lock(
    fd: BorrowedFd<'_>,
    command: libc::c_int,
    kind: libc::c_int,
    start: u64,
    len: u64,
) -> io::Result<libc::flock> {
    // SAFETY: `flock` is a plain C struct of integers; all zeroes is a valid value.
    let mut lock: libc::flock = unsafe { std::mem::zeroed() };
    lock.l_type = kind as libc::c_short;
    lock.l_whence = libc::SEEK_SET as libc::c_short;
    lock.l_start = i64::try_from(start).map_err(io::Error::other)?;
    lock.l_len = i64::try_from(len).map_err(io::Error::other)?;
    // SAFETY: `fd` is a valid descriptor for the call's duration, and `lock` a valid, writable
    // `flock` that the kernel reads (and, for F_OFD_GETLK, fills in).
    let result = unsafe { libc::fcntl(fd.as_raw_fd(), command, &mut lock as *mut libc::flock) };
    if result == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(lock)
}

// ------------------------------------------------------------------ futexes

/// Sleeps while `word` holds `expected`, at most `timeout`; returns whether the sleep ran out
/// (rather than being woken or finding another value). Spurious wake-ups are possible;
/// callers re-check their condition. The futex is shared (not `FUTEX_PRIVATE`) so that
/// processes mapping the same page wake each other.
#[cfg_attr(
    loom,
    allow(dead_code, reason = "the model checks use a modelled futex")
)]
pub(crate) fn futex_wait(
    word: &std::sync::atomic::AtomicU32,
    expected: u32,
    timeout: Duration,
) -> bool {
    let timeout = rustix::time::Timespec {
        tv_sec: i64::try_from(timeout.as_secs()).unwrap_or(i64::MAX),
        tv_nsec: i64::from(timeout.subsec_nanos()),
    };
    // EAGAIN (value changed) and EINTR mean "look again", like a wake-up.
    matches!(
        futex::wait(word, futex::Flags::empty(), expected, Some(&timeout)),
        Err(rustix::io::Errno::TIMEDOUT)
    )
}

/// Wakes up to `count` waiters sleeping on `word`, in any process.
#[cfg_attr(
    loom,
    allow(dead_code, reason = "the model checks use a modelled futex")
)]
pub(crate) fn futex_wake(word: &std::sync::atomic::AtomicU32, count: u32) {
    let _ = futex::wake(word, futex::Flags::empty(), count);
}

// ------------------------------------------------------------------ fork

/// Bumped in every child right after `fork`, so per-thread caches of identity refresh and
/// handles know that their attachment belongs to the parent.
static FORK_GENERATION: AtomicU64 = AtomicU64::new(0);
static ATFORK: Once = Once::new();

/// Descriptors that a forked child must not keep: a handle's anchor on its dict, whose locks
/// say "this process is alive". A child that kept one would keep its parent looking alive.
/// Fixed size and lock-free, because the child's fork handler may only do async-signal-safe
/// work; -1 marks a free entry.
static CLOSE_IN_CHILD: [AtomicI32; 1024] = [const { AtomicI32::new(-1) }; 1024];

/// Words that a forked child sets to [`STALE`] (a handle's hint of where its view is): the
/// child's first read through such a handle then takes the slow way, which gives the copy a
/// slot of its own. Fixed size and lock-free, as [`CLOSE_IN_CHILD`]; null marks a free entry.
static STALE_IN_CHILD: [AtomicPtr<AtomicU64>; 1024] =
    [const { AtomicPtr::new(std::ptr::null_mut()) }; 1024];

/// What a forked child stores in the words of [`STALE_IN_CHILD`].
pub(crate) const STALE: u64 = u64::MAX;

/// Openings of descriptors that children must not keep, in flight (between the open and the
/// registration in [`CLOSE_IN_CHILD`]), plus [`FORKING`] while a fork is under way. A fork
/// waits for the openings to finish, and openings wait for the fork: a child never gets a
/// descriptor that it would not close.
static OPENINGS: AtomicU32 = AtomicU32::new(0);
const FORKING: u32 = 1 << 31;

thread_local! {
    /// This thread's share of [`OPENINGS`]: a fork from a signal handler that interrupted
    /// this thread's own opening must not wait for it (it never finishes while the handler
    /// runs). Counted in before the thread's share of `OPENINGS` and out after it, so that it
    /// is never below that share: at worst, for a few instructions, a fork in a handler does
    /// not wait for another thread's opening (whose child then keeps that descriptor), rather
    /// than waiting for one that cannot end.
    static OPENING_HERE: Cell<u32> = const { Cell::new(0) };
}

extern "C" fn before_fork() {
    // Bar new openings (after any other fork's bar went), then wait for those in flight: a
    // few system calls each.
    loop {
        let now = OPENINGS.load(Ordering::Relaxed);
        if now & FORKING == 0
            && OPENINGS
                .compare_exchange_weak(now, now | FORKING, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
        {
            break;
        }
        std::thread::yield_now();
    }
    // Openings in flight on this very thread belong to code this fork interrupted (it runs
    // in a signal handler): they are not waited for.
    let here = OPENING_HERE.with(Cell::get);
    while OPENINGS.load(Ordering::Acquire) & !FORKING > here {
        std::thread::yield_now();
    }
}

extern "C" fn after_fork_in_parent() {
    OPENINGS.fetch_and(!FORKING, Ordering::Release);
}

extern "C" fn after_fork_in_child() {
    FORK_GENERATION.fetch_add(1, Ordering::Relaxed);
    for entry in &STALE_IN_CHILD {
        let word = entry.load(Ordering::Relaxed);
        // SAFETY: a registered word lives until it is unregistered (`unmark_in_children`,
        // before it is freed); the fork copied the table and the words at one instant, and an
        // atomic store is async-signal-safe.
        if let Some(word) = unsafe { word.as_ref() } {
            word.store(STALE, Ordering::Relaxed);
        }
    }
    for entry in &CLOSE_IN_CHILD {
        let fd = entry.swap(-1, Ordering::Relaxed);
        if fd >= 0 {
            // SAFETY: `fd` was registered as a descriptor of the parent that the child must
            // not keep; close is async-signal-safe, and the child's copies of handles know
            // (through the fork generation) never to use or close it again.
            unsafe { libc::close(fd) };
        }
    }
    // The child's only thread forked: the openings in flight in it are that thread's own, those
    // the fork interrupted (it ran in a signal handler), which count themselves out when they
    // finish there. (Storing 0 made such a count wrap, and every later open in the child spin.)
    OPENINGS.store(OPENING_HERE.with(Cell::get), Ordering::Relaxed);
}

/// Installs the handlers that count forks (see [`fork_generation`]) and close in children
/// what they must not keep, once per process.
pub(crate) fn install_fork_handler() {
    ATFORK.call_once(|| {
        // SAFETY: the handlers only do atomic operations, yields and close(2); the child's,
        // which runs in a freshly forked child, only what is async-signal-safe.
        unsafe {
            libc::pthread_atfork(
                Some(before_fork),
                Some(after_fork_in_parent),
                Some(after_fork_in_child),
            );
        }
    });
}

/// Opens a descriptor (`open`) that every child forked from now on closes (see
/// [`close_in_children`]), with no fork in between the two that would copy it unregistered.
/// Returns the descriptor and its registration.
pub(crate) fn open_for_this_process(
    open: impl FnOnce() -> io::Result<OwnedFd>,
) -> io::Result<(OwnedFd, Option<usize>)> {
    install_fork_handler();
    OPENING_HERE.with(|here| here.set(here.get() + 1));
    loop {
        let now = OPENINGS.load(Ordering::Relaxed);
        if now & FORKING == 0
            && OPENINGS
                .compare_exchange_weak(now, now + 1, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
        {
            break;
        }
        std::thread::yield_now();
    }
    // Counted out however this ends, a panic included: a count left behind would keep every
    // later fork of the process waiting.
    struct Opening;
    impl Drop for Opening {
        fn drop(&mut self) {
            OPENINGS.fetch_sub(1, Ordering::Release);
            OPENING_HERE.with(|here| here.set(here.get() - 1));
        }
    }
    let _opening = Opening;
    let fd = open()?;
    crate::fault::point("anchor-opened");
    let registration = close_in_children(fd.as_raw_fd());
    Ok((fd, registration))
}

/// Has `fd` closed in every child forked from now on. Returns the registration to pass to
/// [`keep_in_children`], or `None` if the table is full (the child then keeps the descriptor,
/// which only makes this process look alive for as long as such a child lives). A descriptor
/// opened while another thread may fork goes through [`open_for_this_process`] instead.
pub(crate) fn close_in_children(fd: RawFd) -> Option<usize> {
    install_fork_handler();
    CLOSE_IN_CHILD.iter().position(|entry| {
        entry
            .compare_exchange(-1, fd, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    })
}

/// Undoes [`close_in_children`]; call it before closing the descriptor, so that a child
/// forked in between never closes a reused descriptor number.
pub(crate) fn keep_in_children(registration: usize, fd: RawFd) {
    let _ =
        CLOSE_IN_CHILD[registration].compare_exchange(fd, -1, Ordering::Relaxed, Ordering::Relaxed);
}

/// Has every child forked from now on store [`STALE`] in `word` (see [`STALE_IN_CHILD`]).
/// Returns the registration to pass to [`unmark_in_children`], or `None` if the table is full
/// (a child's copy of that handle then takes its slot at its first lock rather than its first
/// read). `word` must stay where it is until then.
pub(crate) fn mark_stale_in_children(word: &AtomicU64) -> Option<usize> {
    install_fork_handler();
    let word = std::ptr::from_ref(word).cast_mut();
    STALE_IN_CHILD.iter().position(|entry| {
        entry
            .compare_exchange(
                std::ptr::null_mut(),
                word,
                Ordering::Relaxed,
                Ordering::Relaxed,
            )
            .is_ok()
    })
}

/// Undoes [`mark_stale_in_children`]; call it before the word is freed.
pub(crate) fn unmark_in_children(registration: usize) {
    STALE_IN_CHILD[registration].store(std::ptr::null_mut(), Ordering::Relaxed);
}

/// The number of forks between the first process and this one (0 in a process that was not
/// forked from one using ultradict). Counted from the first call of [`current_thread`] or
/// [`close_in_children`], which install the fork handler: whatever was cached or registered
/// before a fork is known stale after it.
#[inline]
pub(crate) fn fork_generation() -> u64 {
    FORK_GENERATION.load(Ordering::Relaxed)
}

// ------------------------------------------------------------------ identity

/// Identity of a thread, cached per thread: ids change only across `fork`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ThreadId {
    /// The [`fork_generation`] the ids were read in.
    pub(crate) generation: u64,
    /// The kernel's thread id, as this thread's PID namespace numbers it.
    pub(crate) tid: u32,
    /// The process id, likewise.
    pub(crate) pid: u32,
}

thread_local! {
    static THIS_THREAD: std::cell::Cell<ThreadId> =
        const { std::cell::Cell::new(ThreadId { generation: u64::MAX, tid: 0, pid: 0 }) };
}

/// The calling thread's ids, cached per thread and refreshed after `fork`.
#[inline]
pub(crate) fn current_thread() -> ThreadId {
    let generation = fork_generation();
    THIS_THREAD.with(|cached| {
        let identity = cached.get();
        if identity.generation == generation {
            return identity;
        }
        // Before anything is cached, so that a fork after this marks the cache stale.
        install_fork_handler();
        let generation = fork_generation();
        let identity = ThreadId {
            generation,
            tid: rustix::thread::gettid()
                .as_raw_nonzero()
                .get()
                .unsigned_abs(),
            pid: rustix::process::getpid()
                .as_raw_nonzero()
                .get()
                .unsigned_abs(),
        };
        cached.set(identity);
        identity
    })
}

/// The calling process's id in its own PID namespace.
pub(crate) fn current_pid() -> u32 {
    current_thread().pid
}

/// A random, nonzero number that names the calling process among all processes that share
/// /dev/shm, whatever their PID namespaces (pids repeat across namespaces; this does not).
/// Drawn again in a forked child.
///
/// One nonce per process and fork generation, whichever thread asks first: two threads that
/// drew one each would hand out two, and slots stamped with the one that lost would look like
/// another process's.
pub(crate) fn process_nonce() -> u64 {
    /// Marks the generation word while a thread draws that generation's nonce.
    const DRAWING: u64 = 1 << 63;
    static NONCE: AtomicU64 = AtomicU64::new(0);
    static NONCE_GENERATION: AtomicU64 = AtomicU64::new(u64::MAX);
    install_fork_handler();
    let generation = fork_generation();
    debug_assert_eq!(generation & DRAWING, 0);
    loop {
        let seen = NONCE_GENERATION.load(Ordering::Acquire);
        if seen == generation {
            return NONCE.load(Ordering::Relaxed);
        }
        if seen == generation | DRAWING {
            // Another thread of this process is drawing it.
            std::hint::spin_loop();
            continue;
        }
        // Another generation's (drawn, or being drawn by a parent's thread when it forked):
        // claim the draw.
        if NONCE_GENERATION
            .compare_exchange(
                seen,
                generation | DRAWING,
                Ordering::Acquire,
                Ordering::Relaxed,
            )
            .is_ok()
        {
            let nonce = random_u64() | 1;
            NONCE.store(nonce, Ordering::Relaxed);
            NONCE_GENERATION.store(generation, Ordering::Release);
            return nonce;
        }
    }
}

/// The low 32 bits of the inode of the calling process's PID namespace (0 if /proc does not
/// say): tells whether a pid another process recorded means anything here.
pub(crate) fn pid_namespace() -> u32 {
    static NAMESPACE: AtomicU64 = AtomicU64::new(u64::MAX);
    match NAMESPACE.load(Ordering::Relaxed) {
        u64::MAX => {
            let ns = fs::metadata("/proc/self/ns/pid").map_or(0, |meta| meta.ino() as u32);
            NAMESPACE.store(u64::from(ns), Ordering::Relaxed);
            ns
        }
        ns => ns as u32,
    }
}

/// 64 random bits from the kernel.
pub(crate) fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    let mut filled = 0;
    while filled < bytes.len() {
        match rustix::rand::getrandom(&mut bytes[filled..], rustix::rand::GetRandomFlags::empty()) {
            Ok(n) => filled += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(_) => {
                // No getrandom (very old kernel or a seccomp filter): time and pid still make
                // collisions unlikely for the names and nonces this is used for.
                return unix_time_ns() ^ (u64::from(current_pid()) << 40) ^ fork_generation();
            }
        }
    }
    u64::from_ne_bytes(bytes)
}

/// Nanoseconds since the Unix epoch, for "held since" reports. The coarse clock (a few
/// milliseconds of resolution) costs a fraction of the precise one.
pub(crate) fn unix_time_ns() -> u64 {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::RealtimeCoarse);
    u64::try_from(now.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(now.tv_nsec).unwrap_or(0)
}

/// The size of a memory page.
pub(crate) fn page_size() -> usize {
    rustix::param::page_size()
}

/// Makes the first `len` bytes (a multiple of the page size) of the mapping at `ptr`
/// read-only.
///
/// # Safety
/// `ptr` is the page-aligned start of a mapping of at least `len` bytes that this process
/// owns, and nothing writes those bytes through it any more.
pub(crate) unsafe fn protect_read_only(ptr: *mut u8, len: usize) -> io::Result<()> {
    // SAFETY: by the caller's contract the range is mapped and no longer written.
    unsafe { rustix::mm::mprotect(ptr.cast(), len, rustix::mm::MprotectFlags::READ) }?;
    Ok(())
}
