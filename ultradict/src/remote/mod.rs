//! The Redis backend: a dict whose records and dumps live on a Redis server (or Valkey, or a
//! Redis Cluster), shared by processes on any machine that reaches it. It implements the same
//! storage seam as shared memory (`storage.rs`), so every handle type works on it unchanged.
//!
//! - **Layout and scripts**: `layout.rs`. Every change is one server-side script on one
//!   Cluster slot: all or nothing.
//! - **Writes** are compare-and-append: a record is appended only if the stream's tip is the
//!   one the writer caught up to; otherwise the writer fetches what it missed and decides again
//!   (`Storage::write`'s `decide` runs once per attempt). A record that would overflow the
//!   epoch's `buffer_size` bytes becomes a full dump, again compare-and-swapped on the tip.
//! - **Reads** cost no round trip when nothing changed: a subscription thread (`feed.rs`)
//!   blocks on the stream and queues what arrives; a read applies the queue first. A handle
//!   always reads its own writes; `sync()` fetches the server's tip for a linearizable read.
//! - **The lock** is a lease with a token (`TOKEN HOST PID TID`) renewed by the subscription
//!   thread while held. Every append and dump checks it on the server: a holder whose lease ran
//!   out (another process took the lock) gets [`Error::LockLost`] and nothing is written.
//! - **Lifetime**: each handle is a client with a lease in the dict's `clients` set; a crashed
//!   client stops renewing and no longer counts as attached.

pub(crate) mod admin;
mod conn;
mod feed;
pub(crate) mod layout;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use redis::Value;

use conn::Link;
pub(crate) use conn::Target;
use feed::{Entry, Feed, Subscription, id_of};
use layout::Keys;

use crate::dump::{AlignedBuf, AlignedBytes, Dump, DumpId};
use crate::error::{Error, Result};
use crate::lock_guard::{LockGuard, LockOptions, Reentrant, Unlock, Wait};
use crate::naming::Place;
use crate::options::{Create, Lifetime, Options};
use crate::schema::{Fingerprint, Schema};
use crate::status::{LockHolder, Status};
use crate::storage::{Departure, Position, Since, Storage, View};

/// What the meta hash's `magic` field holds.
const MAGIC: &str = "ultradict";

/// The smallest lease accepted: renewals come every third of it.
const MIN_LEASE: Duration = Duration::from_millis(300);

/// The epoch of a position.
fn epoch_of(at: u64) -> u32 {
    (at >> 32) as u32
}

fn position_of<S: Schema>(view: &View<S>) -> u64 {
    view.position.0 as u64
}

/// This machine's name, for lock holders and attached clients.
fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .ok()
        .filter(|name| !name.is_empty() && !name.contains(' '))
        .unwrap_or_else(|| "localhost".to_owned())
}

/// A new client id: `HOST PID RANDOM`.
fn client_id() -> String {
    format!(
        "{} {} {:016x}",
        host(),
        std::process::id(),
        crate::os::random_u64()
    )
}

/// What a write script answered.
enum Outcome {
    Done,
    /// The tip moved on: catch up and decide again.
    Stale,
    /// The record does not fit in the epoch's stream: write a dump instead.
    Full,
    /// Another client holds the lock: its value, and how long its lease still runs.
    Locked(String, Duration),
    /// This writer's lock lease ran out and the lock is someone else's (or nobody's).
    Lost,
    Removed,
    /// This very write was applied already: its reply was lost and the client library sent it
    /// again.
    Dup,
}

/// A lock value's holder: `TOKEN HOST PID TID`.
struct Holder<'a> {
    host: &'a str,
    pid: u32,
    tid: u32,
}

impl<'a> Holder<'a> {
    fn parse(value: &'a str) -> Holder<'a> {
        let mut parts = value.split(' ').skip(1);
        let host = parts.next().unwrap_or("");
        let mut number = || parts.next().and_then(|n| n.parse().ok()).unwrap_or(0);
        let pid = number();
        let tid = number();
        Holder { host, pid, tid }
    }
}

/// One handle's engine on a remote dict.
pub(crate) struct RedisEngine<S: Schema> {
    name: String,
    keys: Keys,
    target: Target,
    /// The command connection (the subscription has its own).
    link: Mutex<Link>,
    feed: Arc<Feed>,
    view: RwLock<View<S>>,
    /// Names the dict in dump headers and errors.
    place: Place,
    fingerprint: Fingerprint,
    /// The dict's instance: a dict removed and created again under the same name is another.
    instance: String,
    instance_id: u64,
    lifetime: Lifetime,
    /// Bytes of records per epoch, as the creator chose.
    buffer_size: usize,
    /// This handle in the dict's `clients` set (a forked child's copy takes a new one).
    client: Mutex<String>,
    /// The fork generation of the handle that created the dict.
    creator: Option<u64>,
    /// The fork generation whose subscription thread runs (a forked child starts its own).
    subscribed: AtomicU64,
    reentrant: Reentrant,
    detached: AtomicBool,
    catch_ups: AtomicU64,
    /// Scratch space records are framed in.
    scratch: Mutex<AlignedBuf>,
}

impl<S: Schema> Drop for RedisEngine<S> {
    fn drop(&mut self) {
        self.feed.stop();
    }
}

/// An aligned copy of `bytes`, for validating archives in place.
fn aligned(bytes: &[u8]) -> AlignedBytes {
    let mut buf = AlignedBuf::with_capacity(bytes.len());
    buf.zeroed_mut(bytes.len()).copy_from_slice(bytes);
    AlignedBytes::new(buf, bytes.len())
}

/// The text of a reply's element, if it is one.
fn text(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(n) => Some(n.to_string()),
        Value::Okay => Some("OK".to_owned()),
        _ => None,
    }
}

fn number<T: std::str::FromStr>(value: Option<&Value>) -> Option<T> {
    text(value)?.parse().ok()
}

fn bytes(value: Option<&Value>) -> Option<&[u8]> {
    match value? {
        Value::BulkString(bytes) => Some(bytes),
        _ => None,
    }
}

impl<S: Schema> RedisEngine<S> {
    fn corrupt(&self, what: &str, detail: impl Into<String>) -> Error {
        Error::corrupt(&format!("{} ({what})", self.keys.tag_prefix), detail)
    }

    fn removed(&self) -> Error {
        Error::Removed {
            name: self.name.clone(),
        }
    }

    fn dump_id(&self) -> DumpId<'_> {
        DumpId {
            place: &self.place,
            instance: self.instance_id,
            fingerprint: self.fingerprint.hash,
        }
    }

    /// Runs `f` on the command connection.
    fn run<T>(
        &self,
        doing: &str,
        f: impl FnOnce(&mut conn::Conn) -> redis::RedisResult<T>,
    ) -> Result<T> {
        self.ensure_subscribed();
        self.link.lock().run(doing, f)
    }

    /// In a forked child, the parent's connection and subscription thread are not this
    /// process's: open new ones.
    ///
    /// Touches neither the view nor anything a caller may hold: it runs inside every round
    /// trip. A lock value copied from the parent is the parent's: the child forgets it (it
    /// must not renew the parent's lease), and the subscription starts after the known tip
    /// (what lies before it is queued, or fetched by the next catch-up).
    fn ensure_subscribed(&self) {
        let generation = crate::os::fork_generation();
        if self.subscribed.load(Ordering::Acquire) == generation
            || self.subscribed.swap(generation, Ordering::AcqRel) == generation
        {
            return;
        }
        *self.link.lock() = Link::new(self.target.clone(), self.target.timeout);
        *self.feed.lock_value.lock() = None;
        self.feed.forked();
        // The parent's client entry is the parent's: this process joins as a client of its
        // own, with its first renewal.
        *self.client.lock() = client_id();
        let mut subscription = self.subscription(self.feed.tip());
        subscription.join = true;
        let _ = subscription.start();
    }

    fn subscription(&self, after: u64) -> Subscription {
        Subscription {
            feed: Arc::clone(&self.feed),
            target: self.target.clone(),
            keys: self.keys.clone(),
            instance: self.instance.clone(),
            client: self.client.lock().clone(),
            join: false,
            after,
        }
    }

    /// Validates a stored dump of `epoch`.
    fn load_dump(&self, epoch: u32, stored: &[u8]) -> Result<Dump<S::Dump>> {
        let dump = Dump::from_heap(aligned(stored), &self.keys.dump, self.dump_id(), epoch)?;
        S::check_dump(dump.root(), dump.archive())
            .map_err(|detail| Error::corrupt(&self.keys.dump, detail))?;
        Ok(dump)
    }

    /// Validates and deserializes framed records of `epoch`, every one before any is used.
    fn decode(&self, epoch: u32, records: &[&[u8]]) -> Result<Vec<S::Update>> {
        let mut updates = Vec::with_capacity(records.len());
        for record in records {
            let copy = aligned(record);
            let mut one = Vec::with_capacity(1);
            match crate::stream::decode_into::<S::Update>(copy.bytes(), 0, epoch, &mut one) {
                Ok(()) if one.len() == 1 => updates.extend(one.pop()),
                Ok(()) => {
                    return Err(self.corrupt("stream", "an entry that is not exactly one record"));
                }
                Err(crate::stream::DecodeError::Overwritten) => {
                    return Err(self.corrupt("stream", "a record of another epoch"));
                }
                Err(crate::stream::DecodeError::Corrupt(detail)) => {
                    return Err(self.corrupt("stream", detail));
                }
            }
        }
        Ok(updates)
    }

    /// Applies entries after the view's position. A dump marker or a gap is resolved with one
    /// fetch from the server. Every record is validated before any is applied.
    fn apply_entries(&self, view: &mut View<S>, entries: Vec<Entry>) -> Result<()> {
        let start = position_of(view);
        let mut at = start;
        let mut records = Vec::new();
        let mut need_fetch = false;
        for entry in &entries {
            if entry.at() <= at {
                continue;
            }
            match entry {
                Entry::Record { at: next, bytes } if *next == at + 1 => {
                    records.push(bytes.as_slice());
                    at = *next;
                }
                Entry::Bad { detail, .. } => return Err(self.corrupt("stream", detail.clone())),
                _ => {
                    need_fetch = true;
                    break;
                }
            }
        }
        let updates = self.decode(epoch_of(start), &records)?;
        let View { dump, overlay, .. } = view;
        for update in updates {
            S::apply(dump.as_ref().map(Dump::root), overlay, update);
        }
        view.position = Position(u128::from(at));
        if need_fetch {
            self.fetch_into(view)?;
        }
        Ok(())
    }

    /// What the server holds after position `at` (the fetch script's reply).
    fn fetch(&self, at: u64) -> Result<Vec<Value>> {
        self.run("fetching updates", |conn| {
            layout::FETCH
                .key(&self.keys.meta)
                .key(&self.keys.stream)
                .key(&self.keys.dump)
                .arg(&self.instance)
                .arg(id_of(at))
                .arg(epoch_of(at))
                .invoke(conn)
        })
    }

    /// Brings the view to the server's tip with one round trip; returns whether anything was
    /// new. A dict removed meanwhile keeps its view.
    fn fetch_into(&self, view: &mut View<S>) -> Result<bool> {
        let reply = self.fetch(position_of(view))?;
        self.apply_fetched(view, &reply)
    }

    /// Applies what a fetch from the view's position answered; returns whether anything was
    /// new.
    fn apply_fetched(&self, view: &mut View<S>, reply: &[Value]) -> Result<bool> {
        let at = position_of(view);
        let kind = text(reply.first());
        let entries = match kind.as_deref() {
            Some("removed") => {
                self.feed.removed.store(true, Ordering::Release);
                return Ok(false);
            }
            Some("records") => reply.get(2),
            Some("dump") => {
                let epoch: u32 = number(reply.get(2))
                    .ok_or_else(|| self.corrupt("meta", "an epoch that is not a number"))?;
                let stored = bytes(reply.get(3))
                    .ok_or_else(|| self.corrupt("dump", "the current dump is missing"))?;
                let dump = self.load_dump(epoch, stored)?;
                let (updates, last) =
                    self.records_of(epoch, u64::from(epoch) << 32, reply.get(4))?;
                start_epoch(view, epoch, dump);
                self.apply_updates(view, updates, last);
                self.feed.advance(last);
                return Ok(true);
            }
            _ => return Err(self.corrupt("meta", "an unexpected reply to a fetch")),
        };
        let (updates, last) = self.records_of(epoch_of(at), at, entries)?;
        let news = last != at;
        self.apply_updates(view, updates, last);
        self.feed.advance(last);
        Ok(news)
    }

    /// The records of a fetched range (all of `epoch`, contiguous after `at`), decoded.
    fn records_of(
        &self,
        epoch: u32,
        at: u64,
        range: Option<&Value>,
    ) -> Result<(Vec<S::Update>, u64)> {
        let (entries, _) = range
            .and_then(|range| feed::entries(range, at))
            .ok_or_else(|| self.corrupt("stream", "a reply that is not a stream range"))?;
        let mut last = at;
        let mut records = Vec::with_capacity(entries.len());
        for entry in &entries {
            match entry {
                Entry::Record { at: next, bytes } if *next == last + 1 => {
                    records.push(bytes.as_slice());
                    last = *next;
                }
                Entry::Bad { detail, .. } => return Err(self.corrupt("stream", detail.clone())),
                _ => return Err(self.corrupt("stream", "a gap in the records of an epoch")),
            }
        }
        Ok((self.decode(epoch, &records)?, last))
    }

    fn apply_updates(&self, view: &mut View<S>, updates: Vec<S::Update>, at: u64) {
        let View { dump, overlay, .. } = view;
        for update in updates {
            S::apply(dump.as_ref().map(Dump::root), overlay, update);
        }
        view.position = Position(u128::from(at));
    }

    /// Catches up with what the subscription delivered; if that still leaves the view behind
    /// the known tip, fetches.
    fn catch_up_view(&self, view: &mut View<S>) -> Result<()> {
        if self.feed.removed.load(Ordering::Acquire) {
            // Whatever the stream holds now belongs to no dict of this handle.
            return Ok(());
        }
        let entries = self.feed.take_after(position_of(view));
        if !entries.is_empty() {
            self.apply_entries(view, entries)?;
        }
        if position_of(view) < self.feed.tip() {
            self.fetch_into(view)?;
        }
        Ok(())
    }

    /// Frames `update` as a record of `epoch`; `None` if it is larger than a whole stream.
    fn encode(&self, update: &S::Update, epoch: u32, limit: usize) -> Result<Option<Vec<u8>>> {
        let mut scratch = self.scratch.lock();
        let mut room = 256.min(limit);
        loop {
            // Zeroed first: `append` leaves the padding after the archive unwritten, and all
            // of the record is read back below.
            let out = scratch.zeroed_mut(room);
            // SAFETY: `out` is this handle's own 16-aligned scratch buffer of `room` bytes,
            // locked for the call; nobody else reads or writes it.
            let appended =
                unsafe { crate::stream::append(out.as_mut_ptr(), room, 0, epoch, update) };
            match appended {
                Ok(end) => return Ok(Some(out[..end].to_vec())),
                Err(crate::stream::AppendError::StreamFull) if room >= limit => return Ok(None),
                Err(crate::stream::AppendError::StreamFull) => {
                    room = room.saturating_mul(4).min(limit);
                }
                Err(crate::stream::AppendError::Failed(detail)) => {
                    return Err(Error::Serialize {
                        name: self.name.clone(),
                        detail,
                    });
                }
            }
        }
    }

    /// The whole state plus `pending`, as a stored dump of `epoch`.
    fn dump_bytes(
        &self,
        view: &View<S>,
        pending: Option<&S::Update>,
        epoch: u32,
    ) -> Result<Vec<u8>> {
        let snapshot = S::snapshot(view.dump(), &view.overlay, pending)
            .map_err(|e| self.corrupt("view", format!("reading the state for a dump: {e}")))?;
        let current = view.dump.as_ref().map_or(0, Dump::archive_len);
        let archive = crate::schema::archive_to_vec((2 * current).max(4 << 10), |out| {
            S::archive(&snapshot, out)
        })
        .map_err(|detail| Error::Serialize {
            name: self.name.clone(),
            detail,
        })?;
        let header = crate::dump::header(self.dump_id(), epoch, archive.bytes().len());
        let mut stored = Vec::with_capacity(header.len() + archive.bytes().len());
        stored.extend_from_slice(&header);
        stored.extend_from_slice(archive.bytes());
        Ok(stored)
    }

    /// Runs a write script and reads its answer.
    fn outcome(&self, doing: &str, invocation: &redis::ScriptInvocation<'_>) -> Result<Outcome> {
        let reply: Vec<Value> = self.run(doing, |conn| invocation.invoke(conn))?;
        Ok(match text(reply.first()).as_deref() {
            Some("ok") => Outcome::Done,
            Some("stale") => Outcome::Stale,
            Some("full") => Outcome::Full,
            Some("locked") => Outcome::Locked(
                text(reply.get(1)).unwrap_or_default(),
                Duration::from_millis(number::<u64>(reply.get(2)).unwrap_or(1)),
            ),
            Some("lost") => Outcome::Lost,
            Some("removed") => Outcome::Removed,
            Some("dup") => Outcome::Dup,
            _ => return Err(self.corrupt("meta", format!("an unexpected reply while {doing}"))),
        })
    }

    /// The lock value this thread holds through this handle, if any.
    /// The lock value this thread holds through this handle, if any; fails if that hold's
    /// lease was found lost (a write under it would be refused).
    fn held_lock(&self) -> Result<Option<String>> {
        let lock = self.held_value();
        if lock.is_some() && self.feed.lock_lost.load(Ordering::Acquire) {
            return Err(self.lock_lost());
        }
        Ok(lock)
    }

    fn held_value(&self) -> Option<String> {
        if self.reentrant.held_by_caller() {
            self.feed.lock_value.lock().clone()
        } else {
            None
        }
    }

    fn lock_lost(&self) -> Error {
        Error::LockLost {
            name: self.name.clone(),
        }
    }

    /// Writes a full dump of the view plus `pending` as the next epoch, if the tip is still the
    /// view's.
    fn try_switch_epoch(
        &self,
        view: &mut View<S>,
        pending: Option<&S::Update>,
        lock: Option<&str>,
        write: u64,
    ) -> Result<Outcome> {
        let at = position_of(view);
        let next = epoch_of(at)
            .checked_add(1)
            .ok_or_else(|| self.corrupt("meta", "epoch counter exhausted"))?;
        let stored = self.dump_bytes(view, pending, next)?;
        // Validated before it leaves: what others will load is what this handle keeps.
        let dump = self.load_dump(next, &stored)?;
        let mut invocation = layout::DUMP.prepare_invoke();
        invocation
            .key(&self.keys.meta)
            .key(&self.keys.stream)
            .key(&self.keys.lock)
            .key(&self.keys.dump)
            .arg(&self.instance)
            .arg(id_of(at))
            .arg(next)
            .arg(stored)
            .arg(lock.unwrap_or(""))
            .arg(&*self.client.lock())
            .arg(write);
        let outcome = self.outcome("writing a full dump", &invocation)?;
        if let Outcome::Done = outcome {
            start_epoch(view, next, dump);
            self.feed.advance(position_of(view));
        }
        Ok(outcome)
    }

    /// Sleeps while another client holds the lock (up to its lease, in growing steps), with
    /// the view lock released; fails if the holder is this very thread (through another
    /// handle), which would wait forever.
    fn wait_for_lock(&self, holder: &str, lease_left: Duration, step: &mut Duration) -> Result<()> {
        let holder = Holder::parse(holder);
        let me = crate::os::current_thread();
        if holder.pid == me.pid && holder.tid == me.tid && holder.host == host() {
            return Err(Error::LockedByOtherHandle {
                name: self.name.clone(),
            });
        }
        std::thread::sleep((*step).min(lease_left.max(Duration::from_micros(100))));
        *step = (*step * 2).min(Duration::from_millis(20));
        Ok(())
    }

    /// What a write does after an attempt that did not commit: catch up (the tip moved), or
    /// wait for another client's lock with the view released; or fail. Returns the view to
    /// retry with.
    fn before_retry<'v>(
        &'v self,
        outcome: Outcome,
        mut view: parking_lot::RwLockWriteGuard<'v, View<S>>,
        step: &mut Duration,
    ) -> Result<parking_lot::RwLockWriteGuard<'v, View<S>>> {
        match outcome {
            Outcome::Locked(holder, lease_left) => {
                drop(view);
                self.wait_for_lock(&holder, lease_left, step)?;
                view = self.view.write();
                self.catch_up_view(&mut view)?;
            }
            Outcome::Lost => return Err(self.lock_lost()),
            Outcome::Removed => {
                self.feed.removed.store(true, Ordering::Release);
                return Err(self.removed());
            }
            Outcome::Stale => {
                // The server's tip is not this view's, and nothing after the view is there:
                // the server is behind the view (restarted from an older snapshot, or a
                // replica promoted without the last writes). Retrying would spin for good.
                if !self.fetch_into(&mut view)? {
                    return Err(Error::Backend {
                        address: self.target.address(),
                        doing: format!("writing to {}", self.name),
                        detail: "the server's stream is behind what this handle read from \
                                 it: it lost writes (restarted from an older snapshot, or \
                                 failed over to a replica without them)"
                            .into(),
                    });
                }
            }
            Outcome::Full | Outcome::Done | Outcome::Dup => {
                self.fetch_into(&mut view)?;
            }
        }
        Ok(view)
    }

    /// Commits under the rules of `Storage::write`.
    fn commit<R>(
        &self,
        update: Option<S::Update>,
        mut decide: impl FnMut(&View<S>, Option<&S::Update>) -> Result<(bool, R)>,
    ) -> Result<R> {
        let lock = self.held_lock()?;
        let mut step = Duration::from_micros(200);
        // One id for every attempt of this write, so that a resent attempt is known.
        let write = crate::os::random_u64();
        let mut view = self.view.write();
        self.catch_up_view(&mut view)?;
        loop {
            let (commit, result) = decide(&view, update.as_ref())?;
            if !commit {
                // Nothing to write: the answer holds if the view was the server's at one
                // instant of this call.
                if self.fetch_into(&mut view)? {
                    continue;
                }
                return Ok(result);
            }
            let at = position_of(&view);
            let record = match &update {
                Some(update) if at & 0xffff_ffff < u64::from(u32::MAX) => {
                    self.encode(update, epoch_of(at), self.buffer_size())?
                }
                _ => None,
            };
            let outcome = match record {
                Some(record) => {
                    let mut invocation = layout::APPEND.prepare_invoke();
                    invocation
                        .key(&self.keys.meta)
                        .key(&self.keys.stream)
                        .key(&self.keys.lock)
                        .arg(&self.instance)
                        .arg(id_of(at))
                        .arg(id_of(at + 1))
                        .arg(record)
                        .arg(lock.as_deref().unwrap_or(""))
                        .arg(&*self.client.lock())
                        .arg(write);
                    match self.outcome("appending a record", &invocation)? {
                        Outcome::Full => self.try_switch_epoch(
                            &mut view,
                            update.as_ref(),
                            lock.as_deref(),
                            write,
                        )?,
                        Outcome::Done => {
                            if let Some(update) = update {
                                let View { dump, overlay, .. } = &mut *view;
                                S::apply(dump.as_ref().map(Dump::root), overlay, update);
                            }
                            view.position = Position(u128::from(at + 1));
                            self.feed.advance(at + 1);
                            return Ok(result);
                        }
                        other => other,
                    }
                }
                None => {
                    self.try_switch_epoch(&mut view, update.as_ref(), lock.as_deref(), write)?
                }
            };
            match outcome {
                Outcome::Done => return Ok(result),
                Outcome::Dup => {
                    // Ours, applied: the fetch brings it into the view.
                    self.fetch_into(&mut view)?;
                    return Ok(result);
                }
                other => view = self.before_retry(other, view, &mut step)?,
            }
        }
    }

    fn buffer_size(&self) -> usize {
        self.buffer_size
    }
}

/// Resets `view` to the start of `epoch`, whose dump is `dump`.
fn start_epoch<S: Schema>(view: &mut View<S>, epoch: u32, dump: Dump<S::Dump>) {
    view.overlay = S::overlay_for(Some(dump.root()));
    view.dump = Some(dump);
    view.position = Position(u128::from(epoch) << 32);
}

/// What the open script found or made.
struct Opened {
    created: bool,
    instance: String,
    buffer_size: usize,
    lifetime: Lifetime,
    epoch: u32,
    dump: Vec<u8>,
    records: Value,
}

impl<S: Schema> RedisEngine<S> {
    /// Creates or attaches to the dict `options` name on the server `target`.
    fn open_remote(
        options: &Options,
        target: &Target,
        initial: Option<&S::Update>,
    ) -> Result<Self> {
        let name = match &options.name {
            Some(name) => name.clone(),
            None => crate::naming::unique(),
        };
        if options.child {
            crate::naming::validate_child(&name)?;
        } else {
            crate::naming::validate(&name)?;
        }
        let invalid = |option: &'static str, reason: &str| Error::InvalidOption {
            option,
            reason: reason.to_owned(),
        };
        if options.full_dump_size.is_some() {
            return Err(invalid(
                "full_dump_size",
                "a shared-memory option; Redis keeps dumps as strings",
            ));
        }
        if options.dir.is_some() || options.mode.is_some() {
            return Err(invalid(
                "directory/mode",
                "shared-memory options; Redis has its own access control",
            ));
        }
        if target.lease < MIN_LEASE {
            return Err(invalid("redis_lease", "at least 300 ms"));
        }
        let requested_size = options
            .buffer_size
            .map(|_| options.effective_buffer_size())
            .transpose()?;
        let default_size = options.effective_buffer_size()?;
        let keys = Keys::of(&name);
        let fingerprint = S::fingerprint();
        let instance_id = crate::os::random_u64();
        let place = Place::new(Arc::from("redis"), name.clone());
        let client = client_id();
        // The dump a creation starts from; another instance's dump if the dict exists (then
        // unused): cheap next to the round trip.
        let empty = View::<S>::empty();
        let first_epoch = (crate::os::random_u64() % (1 << 30)) as u32 + 1;
        let creation = Self::initial_dump(
            &place,
            instance_id,
            first_epoch,
            &fingerprint,
            &empty,
            initial,
        )?;
        let mut link = Link::new(target.clone(), target.timeout);
        let mode = match options.create {
            Create::New => "new",
            Create::Open => "open",
            Create::OpenOrCreate => "either",
        };
        let reply: Vec<Value> = link.run("opening the dict", |conn| {
            layout::OPEN
                .key(&keys.meta)
                .key(&keys.stream)
                .key(&keys.dump)
                .key(&keys.clients)
                .key(&keys.dicts)
                .key(&keys.lock)
                .key(&keys.register)
                .arg(mode)
                .arg(MAGIC)
                .arg(crate::control::FORMAT_VERSION)
                .arg(format!("{:016x}", fingerprint.hash))
                .arg(&fingerprint.description)
                .arg(requested_size.map(|n| n.to_string()).unwrap_or_default())
                .arg(default_size)
                .arg(
                    options
                        .lifetime
                        .map(|l| l.to_raw().to_string())
                        .unwrap_or_default(),
                )
                .arg(options.lifetime.unwrap_or_default().to_raw())
                .arg(format!("{instance_id:016x}"))
                .arg(creation)
                .arg(&client)
                .arg(target.lease.as_millis() as u64)
                .arg(&name)
                .arg(first_epoch)
                .invoke(conn)
        })?;
        let opened = Self::opened(&name, &keys, &fingerprint, reply)?;
        let instance_id = u64::from_str_radix(&opened.instance, 16)
            .map_err(|_| Error::corrupt(&keys.meta, "an instance id that is not hex"))?;
        let mut engine = RedisEngine {
            name: name.clone(),
            keys,
            target: target.clone(),
            link: Mutex::new(link),
            feed: Arc::new(Feed::new(0)),
            view: RwLock::new(View::empty()),
            place,
            fingerprint,
            instance: opened.instance.clone(),
            instance_id,
            lifetime: opened.lifetime,
            buffer_size: opened.buffer_size,
            client: Mutex::new(client),
            creator: opened.created.then(crate::os::fork_generation),
            subscribed: AtomicU64::new(crate::os::fork_generation()),
            reentrant: Reentrant::default(),
            detached: AtomicBool::new(false),
            catch_ups: AtomicU64::new(0),
            scratch: Mutex::new(AlignedBuf::with_capacity(256)),
        };
        // Anything wrong with what is stored: leave again before saying so.
        let view = match engine.first_view(&opened) {
            Ok(view) => view,
            Err(err) => {
                let _ = engine.detach(|_| false);
                return Err(err);
            }
        };
        let at = position_of(&view);
        engine.feed = Arc::new(Feed::new(at));
        *engine.view.get_mut() = view;
        // Every open of a root indexes it, not only its creation (an idempotent add): the
        // index is a key of its own, outside the scripts' slots, and a creator killed before
        // adding it, or a removal's late unindexing that crossed a new creation of the name,
        // leaves a dict out of the index until then.
        if !options.child {
            let root = layout::root_of(&name).to_owned();
            let _ = engine.run("indexing the dict", |conn| {
                redis::cmd("SADD")
                    .arg(layout::INDEX)
                    .arg(root)
                    .query::<i64>(conn)
            });
        }
        engine
            .subscription(at)
            .start()
            .map_err(|e| Error::io("starting the Redis subscription thread", e))?;
        Ok(engine)
    }

    fn initial_dump(
        place: &Place,
        instance: u64,
        epoch: u32,
        fingerprint: &Fingerprint,
        empty: &View<S>,
        initial: Option<&S::Update>,
    ) -> Result<Vec<u8>> {
        let snapshot = S::snapshot(None, &empty.overlay, initial)
            .map_err(|e| Error::corrupt(place.name(), format!("the initial state: {e}")))?;
        let archive = crate::schema::archive_to_vec(4 << 10, |out| S::archive(&snapshot, out))
            .map_err(|detail| Error::Serialize {
                name: place.name().to_owned(),
                detail,
            })?;
        let id = DumpId {
            place,
            instance,
            fingerprint: fingerprint.hash,
        };
        let header = crate::dump::header(id, epoch, archive.bytes().len());
        Ok([&header[..], archive.bytes()].concat())
    }

    /// Reads the open script's answer.
    fn opened(
        name: &str,
        keys: &Keys,
        fingerprint: &Fingerprint,
        reply: Vec<Value>,
    ) -> Result<Opened> {
        let name = name.to_owned();
        let bad = |what: &str| Error::corrupt(&keys.meta, format!("{what} in the meta hash"));
        match text(reply.first()).as_deref() {
            Some("ok") => {}
            Some("notfound") => return Err(Error::NotFound { name }),
            Some("exists") => return Err(Error::AlreadyExists { name }),
            Some("foreign") => {
                return Err(Error::Foreign {
                    segment: text(reply.get(1)).unwrap_or_default(),
                    reason: text(reply.get(2)).unwrap_or_default(),
                });
            }
            Some("version") => {
                return Err(Error::VersionMismatch {
                    segment: keys.meta.clone(),
                    found: number(reply.get(1)).unwrap_or(0),
                    expected: crate::control::FORMAT_VERSION,
                });
            }
            Some("schema") => {
                return Err(Error::SchemaMismatch {
                    name,
                    expected: fingerprint.description.clone(),
                    found: text(reply.get(1)).unwrap_or_default(),
                });
            }
            Some("param") => {
                let parameter = match text(reply.get(1)).as_deref() {
                    Some("lifetime") => "lifetime",
                    _ => "buffer_size",
                };
                let actual = text(reply.get(2)).unwrap_or_default();
                let actual = match parameter {
                    "lifetime" => actual
                        .parse()
                        .ok()
                        .and_then(Lifetime::from_raw)
                        .map_or(actual, |l| format!("{l:?}")),
                    _ => actual,
                };
                return Err(Error::ParameterMismatch {
                    name,
                    parameter,
                    requested: String::new(),
                    actual,
                });
            }
            _ => return Err(bad("an unexpected reply to the open")),
        }
        let mut reply = reply.into_iter();
        let mut next = || reply.next();
        let _ok = next();
        let created = number::<i64>(next().as_ref()) == Some(1);
        let instance = text(next().as_ref()).ok_or_else(|| bad("no instance"))?;
        let buffer_size = number(next().as_ref()).ok_or_else(|| bad("no buffer size"))?;
        let lifetime = number(next().as_ref())
            .and_then(Lifetime::from_raw)
            .ok_or_else(|| bad("no lifetime"))?;
        let epoch = number(next().as_ref()).ok_or_else(|| bad("no epoch"))?;
        let _tip = next();
        let dump = match next() {
            Some(Value::BulkString(dump)) => dump,
            _ => return Err(Error::corrupt(&keys.dump, "the current dump is missing")),
        };
        let records = next().unwrap_or(Value::Nil);
        Ok(Opened {
            created,
            instance,
            buffer_size,
            lifetime,
            epoch,
            dump,
            records,
        })
    }

    /// The view of what the open script returned: its dump and the records after it.
    fn first_view(&self, opened: &Opened) -> Result<View<S>> {
        let dump = self.load_dump(opened.epoch, &opened.dump)?;
        let mut view = View::empty();
        start_epoch(&mut view, opened.epoch, dump);
        let (updates, last) = self.records_of(
            opened.epoch,
            u64::from(opened.epoch) << 32,
            Some(&opened.records),
        )?;
        self.apply_updates(&mut view, updates, last);
        Ok(view)
    }

    /// The dict's name on the server, for the handle layer's nested dicts.
    pub(crate) fn target(&self) -> &Target {
        &self.target
    }

    /// Records `child` as a nested dict of this one, described by `what`.
    pub(crate) fn register_child(&self, child: &str, what: &str) -> Result<()> {
        let registered: i64 = self.run("registering a nested dict", |conn| {
            layout::REGISTER
                .key(&self.keys.meta)
                .key(&self.keys.register)
                .arg(&self.instance)
                .arg(child)
                .arg(what)
                .invoke(conn)
        })?;
        if registered == 0 {
            self.feed.removed.store(true, Ordering::Release);
            return Err(self.removed());
        }
        Ok(())
    }

    /// Removes the dict (this instance) and its nested dicts; with `unattached`, only if no
    /// live client is attached. Returns whether it was removed.
    fn remove(&self, unattached: bool) -> Result<bool> {
        let reply: Vec<Value> = self.run("removing the dict", |conn| {
            layout::REMOVE
                .key(&self.keys.dicts)
                .key(&self.keys.meta)
                .arg(&self.keys.tag_prefix)
                .arg(&self.name)
                .arg(&self.instance)
                .arg(if unattached { "1" } else { "0" })
                .invoke(conn)
        })?;
        let removed = text(reply.first()).as_deref() == Some("ok");
        if removed {
            self.feed.removed.store(true, Ordering::Release);
            if layout::root_of(&self.name) == self.name {
                let _ = self.run("unindexing the dict", |conn| {
                    layout::unindex(conn, &self.name)
                });
            }
        }
        Ok(removed)
    }
}

impl<S: Schema> Unlock for RedisEngine<S> {
    fn unlock(&self, key: u64) {
        if self.reentrant.leave(key).is_none() {
            return;
        }
        let Some(value) = self.feed.lock_value.lock().take() else {
            return;
        };
        // If this fails, the lease runs out instead.
        let _ = self.run("releasing the lock", |conn| {
            layout::UNLOCK
                .key(&self.keys.lock)
                .arg(&value)
                .invoke::<i64>(conn)
        });
    }
}

impl<S: Schema> Storage for RedisEngine<S> {
    type Schema = S;

    fn open(options: &Options, initial: Option<&S::Update>) -> Result<Self> {
        let target = options
            .remote
            .as_ref()
            .ok_or_else(|| Error::InvalidOption {
                option: "redis",
                reason: "no server given".into(),
            })?;
        Self::open_remote(options, target, initial)
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn lifetime(&self) -> Lifetime {
        self.lifetime
    }

    fn read<R>(&self, f: impl FnOnce(&View<S>) -> Result<R>) -> Result<R> {
        // A handle copied into a forked child has no subscription (no thread moves its tip)
        // until it starts one: a child that only reads must too.
        self.ensure_subscribed();
        let tip = self.feed.tip();
        {
            let view = self.view.read();
            if position_of(&view) >= tip {
                return f(&view);
            }
        }
        self.catch_up()?;
        f(&self.view.read())
    }

    fn catch_up(&self) -> Result<()> {
        self.ensure_subscribed();
        self.catch_ups.fetch_add(1, Ordering::Relaxed);
        let mut view = self.view.write();
        self.catch_up_view(&mut view)
    }

    fn sync(&self) -> Result<()> {
        let mut view = self.view.write();
        self.catch_up_view(&mut view)?;
        self.fetch_into(&mut view).map(drop)
    }

    fn reload(&self, force: bool) -> Result<()> {
        if force {
            // Position 0 is of no epoch: the fetch loads the current dump. Into a view of its
            // own, swapped in only once it is whole.
            let mut fresh = View::empty();
            let reply = self.fetch(0)?;
            self.apply_fetched(&mut fresh, &reply)?;
            if position_of(&fresh) == 0 {
                return Err(self.removed());
            }
            *self.view.write() = fresh;
            return Ok(());
        }
        self.sync()
    }

    fn write<R>(
        &self,
        update: S::Update,
        mut decide: impl FnMut(&View<S>, &S::Update) -> Result<(bool, R)>,
    ) -> Result<R> {
        self.commit(Some(update), |view, update| match update {
            Some(update) => decide(view, update),
            None => Err(Error::corrupt("write", "an update went missing")),
        })
    }

    fn write_via_dump(&self, update: Option<&S::Update>) -> Result<()> {
        let lock = self.held_lock()?;
        let mut step = Duration::from_micros(200);
        let write = crate::os::random_u64();
        let mut view = self.view.write();
        self.catch_up_view(&mut view)?;
        loop {
            match self.try_switch_epoch(&mut view, update, lock.as_deref(), write)? {
                Outcome::Done => return Ok(()),
                Outcome::Dup => return self.fetch_into(&mut view).map(drop),
                other => view = self.before_retry(other, view, &mut step)?,
            }
        }
    }

    fn updates_since(&self, position: Position) -> Result<Since<S::Update>> {
        let at = position.0 as u64;
        let reply = self.fetch(at)?;
        match text(reply.first()).as_deref() {
            Some("records") => {
                let (updates, last) = self.records_of(epoch_of(at), at, reply.get(2))?;
                if last == at {
                    return Ok(Since::Nothing);
                }
                Ok(Since::Updates(updates, Position(u128::from(last))))
            }
            Some("dump") => {
                let tip = text(reply.get(1))
                    .and_then(|tip| feed::at_of(tip.as_bytes()))
                    .unwrap_or(at);
                Ok(Since::Reset(Position(u128::from(tip))))
            }
            _ => Ok(Since::Nothing),
        }
    }

    fn published(&self) -> Position {
        self.ensure_subscribed();
        Position(u128::from(self.feed.tip()))
    }

    fn position(&self) -> Position {
        self.view.read().position
    }

    fn wait_for_change(&self, seen: Position, timeout: Duration) -> bool {
        self.ensure_subscribed();
        self.feed.wait(seen.0 as u64, timeout)
    }

    fn lock(&self, options: &LockOptions) -> Result<LockGuard<'_>> {
        let me = crate::os::current_thread();
        if let Some(key) = self.reentrant.reenter(me) {
            return Ok(LockGuard::new(self, key));
        }
        let value = format!(
            "{:016x} {} {} {}",
            crate::os::random_u64(),
            host(),
            me.pid,
            me.tid
        );
        let here = host();
        let started = Instant::now();
        let mut step = Duration::from_micros(200);
        loop {
            let at = position_of(&self.view.read());
            let reply: Vec<Value> = self.run("taking the lock", |conn| {
                layout::LOCK
                    .key(&self.keys.meta)
                    .key(&self.keys.lock)
                    .key(&self.keys.stream)
                    .key(&self.keys.dump)
                    .arg(&self.instance)
                    .arg(&value)
                    .arg(self.target.lease.as_millis() as u64)
                    .arg(id_of(at))
                    .arg(epoch_of(at))
                    .invoke(conn)
            })?;
            match text(reply.first()).as_deref() {
                Some("ok") => {
                    {
                        let mut held = self.feed.lock_value.lock();
                        *held = Some(value);
                        self.feed.lock_lost.store(false, Ordering::Release);
                    }
                    let guard = LockGuard::new(self, self.reentrant.enter(me, 0));
                    // Reads under the lock see everything committed before it: nobody else
                    // appends while it is held, so the fetch that came with the lock keeps the
                    // view current (unless the view moved meanwhile: then fetch again).
                    let mut view = self.view.write();
                    match reply.get(1) {
                        Some(Value::Array(fetched)) if position_of(&view) == at => {
                            self.apply_fetched(&mut view, fetched)?;
                        }
                        _ => {
                            self.fetch_into(&mut view)?;
                        }
                    }
                    drop(view);
                    return Ok(guard);
                }
                Some("removed") => return Err(self.removed()),
                Some("held") => {}
                _ => return Err(self.corrupt("lock", "an unexpected reply to a lock attempt")),
            }
            let holding = text(reply.get(1)).unwrap_or_default();
            let holder = Holder::parse(&holding);
            if holder.host == here && holder.pid == me.pid && holder.tid == me.tid {
                return Err(Error::LockedByOtherHandle {
                    name: self.name.clone(),
                });
            }
            let lease_left = Duration::from_millis(number::<u64>(reply.get(2)).unwrap_or(1));
            let holder_host = Some(holder.host.to_owned());
            let remaining = match options.wait {
                Wait::NonBlocking => {
                    return Err(Error::WouldBlock {
                        name: self.name.clone(),
                        holder_pid: holder.pid,
                        holder_host,
                    });
                }
                Wait::Forever => lease_left,
                Wait::Timeout(timeout) => match timeout.checked_sub(started.elapsed()) {
                    Some(remaining) if !remaining.is_zero() => remaining.min(lease_left),
                    _ => {
                        return Err(Error::LockTimeout {
                            name: self.name.clone(),
                            holder_pid: holder.pid,
                            holder_host,
                            waited: started.elapsed(),
                        });
                    }
                },
            };
            std::thread::sleep(
                step.min(remaining)
                    .min(options.sleep_time.max(Duration::from_micros(100))),
            );
            step = (step * 2).min(Duration::from_millis(20));
        }
    }

    fn status(&self) -> Status {
        let reply: Result<Vec<Value>> = self.run("reading the status", |conn| {
            layout::STATUS
                .key(&self.keys.meta)
                .key(&self.keys.clients)
                .key(&self.keys.lock)
                .key(&self.keys.stream)
                .invoke(conn)
        });
        let view = self.view.read();
        let at = position_of(&view);
        let mut status = Status {
            name: self.name.clone(),
            schema: self.fingerprint.description.clone(),
            directory: self.target.address(),
            control_segment: self.keys.meta.clone(),
            dump_segment: Some(self.keys.dump.clone()),
            buffer_size: self.buffer_size,
            buffer_used: 0,
            full_dump_size: None,
            epoch: epoch_of(at),
            committed_offset: (at & 0xffff_ffff) as usize,
            records: 0,
            dumps: 0,
            dump_bytes: view.dump.as_ref().map_or(0, |d| d.archive_len() as u64),
            lifetime: self.lifetime,
            attached_pids: Vec::new(),
            attached: Vec::new(),
            sleepers: 0,
            lock_holder: None,
            lock_recoveries: 0,
            last_dead_holder: None,
            locked_catch_ups: 0,
            catch_ups: self.catch_ups.load(Ordering::Relaxed),
            removed: self.feed.removed.load(Ordering::Acquire),
            unreachable: None,
        };
        drop(view);
        let reply = match reply {
            Ok(reply) => reply,
            Err(err) => {
                status.unreachable = Some(err.to_string());
                return status;
            }
        };
        if text(reply.first()).as_deref() != Some("ok") {
            status.removed = true;
            return status;
        }
        fill_status(&mut status, &reply, &self.instance);
        status
    }

    fn check_not_removed(&self) -> Result<()> {
        if self.feed.removed.load(Ordering::Acquire) {
            return Err(self.removed());
        }
        Ok(())
    }

    fn created_here(&self) -> bool {
        self.creator == Some(crate::os::fork_generation())
    }

    fn detach(&self, remove: impl FnOnce(&Departure) -> bool) -> Result<()> {
        if self.detached.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        self.feed.stop();
        let reply: Vec<Value> = self.run("detaching", |conn| {
            layout::DETACH
                .key(&self.keys.meta)
                .key(&self.keys.clients)
                .arg(&self.instance)
                .arg(&*self.client.lock())
                .invoke(conn)
        })?;
        if text(reply.first()).as_deref() != Some("ok") {
            return Ok(());
        }
        let departure = Departure {
            last: number::<u64>(reply.get(1)) == Some(0),
            creator: self.created_here(),
        };
        if remove(&departure) {
            self.remove(self.lifetime == Lifetime::LastClose)?;
        }
        Ok(())
    }

    fn unlink(&self) -> Result<()> {
        self.remove(false).map(drop)
    }

    #[cfg(feature = "tokio")]
    fn subscribe(&self) -> tokio::sync::watch::Receiver<Position> {
        self.ensure_subscribed();
        self.feed.subscribe()
    }
}

/// Fills `status` from the status script's reply.
fn fill_status(status: &mut Status, reply: &[Value], instance: &str) {
    if let Some(Value::Array(fields)) = reply.get(1) {
        for pair in fields.chunks(2) {
            let (Some(field), value) = (text(pair.first()), pair.get(1)) else {
                continue;
            };
            match field.as_str() {
                "schema" => status.schema = text(value).unwrap_or_default(),
                "used" => status.buffer_used = number(value).unwrap_or(0),
                "records" => status.records = number(value).unwrap_or(0),
                "dumps" => status.dumps = number(value).unwrap_or(0),
                "dump_bytes" => status.dump_bytes = number(value).unwrap_or(0),
                "epoch" => status.epoch = number(value).unwrap_or(0),
                "tip" => {
                    if let Some(at) = text(value).and_then(|t| feed::at_of(t.as_bytes())) {
                        status.committed_offset = (at & 0xffff_ffff) as usize;
                    }
                }
                "instance" => status.removed |= text(value).as_deref() != Some(instance),
                _ => {}
            }
        }
    }
    if let Some(Value::Array(clients)) = reply.get(2) {
        for client in clients {
            let Some(client) = text(Some(client)) else {
                continue;
            };
            let mut parts = client.split(' ');
            let host = parts.next().unwrap_or_default();
            let pid = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
            status.attached_pids.push(pid);
            status.attached.push(format!("{host} pid {pid}"));
        }
    }
    let lock = text(reply.get(3)).unwrap_or_default();
    if !lock.is_empty() {
        let holder = Holder::parse(&lock);
        let here = host();
        status.lock_holder = Some(LockHolder {
            pid: holder.pid,
            same_pid_namespace: holder.host == here,
            since: None,
            host: Some(holder.host.to_owned()),
        });
    }
}
