//! A remote handle's subscription: one thread per handle that blocks on the dict's stream
//! (`XREAD BLOCK`, no polling), queues what arrives for the handle's next read, wakes its
//! waiters, and renews the handle's leases (its client entry and, while held, the lock).
//!
//! The thread has its own connection: a blocked read cannot share one with commands. It
//! blocks for a third of the lease at most, so that it renews in time and notices the handle's
//! end. A stopped process stops renewing, which is how a stalled lock holder loses its lease.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use redis::Value;

use super::conn::{Link, Target};
use super::layout::{Keys, RENEW};
#[cfg(feature = "tokio")]
use crate::storage::Position;

/// One entry of the stream.
#[derive(Debug)]
pub(crate) enum Entry {
    /// A record (framed) at a position.
    Record { at: u64, bytes: Vec<u8> },
    /// The marker of a full dump that started an epoch.
    Dump { at: u64 },
    /// An entry that is not one of ours (written by something else): catching up fails on
    /// it. Placed just after the entry before it.
    Bad { at: u64, detail: String },
}

impl Entry {
    pub(crate) fn at(&self) -> u64 {
        match self {
            Entry::Record { at, .. } | Entry::Dump { at } | Entry::Bad { at, .. } => *at,
        }
    }
}

/// A position as a stream id: `EPOCH-SEQ`.
pub(crate) fn id_of(at: u64) -> String {
    format!("{}-{}", at >> 32, at & 0xffff_ffff)
}

/// A stream id as a position; `None` if it is not one of ours.
pub(crate) fn at_of(id: &[u8]) -> Option<u64> {
    let id = std::str::from_utf8(id).ok()?;
    let (epoch, seq) = id.split_once('-')?;
    let (epoch, seq): (u32, u32) = (epoch.parse().ok()?, seq.parse().ok()?);
    Some((u64::from(epoch) << 32) | u64::from(seq))
}

/// Parses stream entries as XRANGE and XREAD give them: `[[id, [field, value, ...]], ...]`,
/// with the last id. An entry that is not ours becomes [`Entry::Bad`]; `None` if the reply
/// itself does not hold together.
pub(crate) fn entries(reply: &Value, mut last: u64) -> Option<(Vec<Entry>, Option<String>)> {
    let Value::Array(items) = reply else {
        return matches!(reply, Value::Nil).then(|| (Vec::new(), None));
    };
    let mut out = Vec::with_capacity(items.len());
    let mut last_id = None;
    for item in items {
        let Value::Array(pair) = item else {
            return None;
        };
        let [Value::BulkString(id), Value::Array(fields)] = pair.as_slice() else {
            return None;
        };
        last_id = Some(String::from_utf8_lossy(id).into_owned());
        let Some(at) = at_of(id).filter(|&at| at > last) else {
            last += 1;
            out.push(Entry::Bad {
                at: last,
                detail: format!("stream entry {:?} has no id of ours", last_id),
            });
            continue;
        };
        last = at;
        match fields.as_slice() {
            [Value::BulkString(field), Value::BulkString(bytes)] if field == b"r" => {
                out.push(Entry::Record {
                    at,
                    bytes: bytes.clone(),
                });
            }
            [Value::BulkString(field), _] if field == b"d" && at & 0xffff_ffff == 0 => {
                out.push(Entry::Dump { at });
            }
            _ => out.push(Entry::Bad {
                at,
                detail: format!(
                    "stream entry {} is neither a record nor a dump marker",
                    id_of(at)
                ),
            }),
        }
    }
    Some((out, last_id))
}

/// What the subscription shares with its handle.
pub(crate) struct Feed {
    queue: Mutex<VecDeque<Entry>>,
    changed: Condvar,
    /// The furthest position known: delivered by the subscription or written by this handle.
    tip: AtomicU64,
    stop: AtomicBool,
    /// A renewal is being sent: [`stop`](Feed::stop) waits for it, so that none crosses the
    /// client's detach (a renewal re-adds a client whose entry is gone).
    renewing: AtomicBool,
    /// The lock value this handle holds, for the renewals.
    pub(crate) lock_value: Mutex<Option<String>>,
    /// A renewal found the lock held by someone else (the lease ran out).
    pub(crate) lock_lost: AtomicBool,
    /// A renewal found the dict gone (removed, or replaced by a new instance).
    pub(crate) removed: AtomicBool,
    /// The last error of the subscription's connection, cleared by its next success.
    pub(crate) trouble: Mutex<Option<String>>,
    #[cfg(feature = "tokio")]
    watch: tokio::sync::watch::Sender<Position>,
}

impl Feed {
    pub(crate) fn new(tip: u64) -> Self {
        Feed {
            queue: Mutex::new(VecDeque::new()),
            changed: Condvar::new(),
            tip: AtomicU64::new(tip),
            stop: AtomicBool::new(false),
            renewing: AtomicBool::new(false),
            lock_value: Mutex::new(None),
            lock_lost: AtomicBool::new(false),
            removed: AtomicBool::new(false),
            trouble: Mutex::new(None),
            #[cfg(feature = "tokio")]
            watch: tokio::sync::watch::Sender::new(Position(u128::from(tip))),
        }
    }

    /// The furthest position known.
    pub(crate) fn tip(&self) -> u64 {
        self.tip.load(Ordering::Acquire)
    }

    /// Records that the state reached `at` (a write of this handle, or a fetch).
    pub(crate) fn advance(&self, at: u64) {
        let _queue = self.queue.lock();
        if self.tip.fetch_max(at, Ordering::AcqRel) < at {
            self.changed.notify_all();
            #[cfg(feature = "tokio")]
            self.watch.send_replace(Position(u128::from(at)));
        }
    }

    /// Takes the queued entries after `at` (and drops those before).
    pub(crate) fn take_after(&self, at: u64) -> Vec<Entry> {
        let mut queue = self.queue.lock();
        while queue.front().is_some_and(|entry| entry.at() <= at) {
            queue.pop_front();
        }
        queue.drain(..).collect()
    }

    /// Sleeps until the tip differs from `seen` or `timeout` passes; returns whether it did.
    pub(crate) fn wait(&self, seen: u64, timeout: Duration) -> bool {
        let deadline = Instant::now().checked_add(timeout);
        let mut queue = self.queue.lock();
        while self.tip() == seen {
            match deadline {
                Some(deadline) => {
                    if self.changed.wait_until(&mut queue, deadline).timed_out() {
                        return self.tip() != seen;
                    }
                }
                None => self.changed.wait(&mut queue),
            }
        }
        true
    }

    #[cfg(feature = "tokio")]
    pub(crate) fn subscribe(&self) -> tokio::sync::watch::Receiver<Position> {
        self.watch.subscribe()
    }

    fn deliver(&self, entries: Vec<Entry>) {
        let Some(last) = entries.last().map(Entry::at) else {
            return;
        };
        let mut queue = self.queue.lock();
        for entry in entries {
            if matches!(entry, Entry::Dump { .. }) {
                // Whatever came before a dump is in it.
                queue.clear();
            }
            queue.push_back(entry);
        }
        if self.tip.fetch_max(last, Ordering::AcqRel) < last {
            self.changed.notify_all();
            #[cfg(feature = "tokio")]
            self.watch.send_replace(Position(u128::from(last)));
        }
    }

    /// Ends the subscription (within one block time), and waits for a renewal being sent to
    /// end (at most `RENEWAL_PATIENCE`): after this, no renewal of this handle reaches the
    /// server. Each side stores its flag then loads the other's (SeqCst): a renewal that
    /// missed the stop is seen here, and waited for.
    pub(crate) fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + RENEWAL_PATIENCE;
        while self.renewing.load(Ordering::SeqCst) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// In a forked child: no thread of the parent's runs here, nor renews anything.
    pub(crate) fn forked(&self) {
        self.renewing.store(false, Ordering::SeqCst);
    }
}

/// How long stopping a subscription waits for a renewal being sent (a renewal's round trip
/// is bounded by the connection's timeout, a few seconds by default).
const RENEWAL_PATIENCE: Duration = Duration::from_secs(10);

/// What the subscription thread needs to know of its handle.
pub(crate) struct Subscription {
    pub(crate) feed: Arc<Feed>,
    pub(crate) target: Target,
    pub(crate) keys: Keys,
    pub(crate) instance: String,
    pub(crate) client: String,
    /// Adds the client with the first renewal, made at once (a forked child joining).
    pub(crate) join: bool,
    /// The stream id to read after.
    pub(crate) after: u64,
}

impl Subscription {
    /// Starts the thread.
    pub(crate) fn start(self) -> std::io::Result<()> {
        std::thread::Builder::new()
            .name("ultradict-redis".into())
            .spawn(move || self.run())
            .map(drop)
    }

    fn run(self) {
        let lease = self.target.lease;
        let block = (lease / 3).max(Duration::from_millis(10));
        let mut link = Link::new(self.target.clone(), block + self.target.timeout);
        let mut after = id_of(self.after);
        let mut last = self.after;
        let mut renew_at = if self.join {
            Instant::now()
        } else {
            Instant::now() + block
        };
        let mut join = self.join;
        let mut backoff = Duration::from_millis(5);
        while !self.feed.stop.load(Ordering::Acquire) {
            if Instant::now() >= renew_at && self.renew(&mut link, join).is_ok() {
                renew_at = Instant::now() + block;
                join = false;
            }
            let read = link.run("reading the stream", |conn| {
                redis::cmd("XREAD")
                    .arg("COUNT")
                    .arg(4096)
                    .arg("BLOCK")
                    .arg(block.as_millis() as u64)
                    .arg("STREAMS")
                    .arg(&self.keys.stream)
                    .arg(&after)
                    .query::<Value>(conn)
            });
            match read {
                Ok(reply) => {
                    backoff = Duration::from_millis(5);
                    *self.feed.trouble.lock() = None;
                    let Some((entries, last_id)) = stream_entries(&reply, last) else {
                        continue;
                    };
                    if let Some(id) = last_id {
                        after = id;
                    }
                    if let Some(entry) = entries.last() {
                        last = entry.at();
                    }
                    self.feed.deliver(entries);
                }
                Err(err) => {
                    *self.feed.trouble.lock() = Some(err.to_string());
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(block);
                }
            }
        }
    }

    fn renew(&self, link: &mut Link, join: bool) -> crate::error::Result<()> {
        self.feed.renewing.store(true, Ordering::SeqCst);
        let renewed = if self.feed.stop.load(Ordering::SeqCst) {
            Ok(()) // the handle is detaching: its entry must stay gone
        } else {
            self.send_renewal(link, join)
        };
        self.feed.renewing.store(false, Ordering::SeqCst);
        renewed
    }

    fn send_renewal(&self, link: &mut Link, join: bool) -> crate::error::Result<()> {
        let lock = self.feed.lock_value.lock().clone();
        let reply: Vec<i64> = link.run("renewing leases", |conn| {
            RENEW
                .key(&self.keys.meta)
                .key(&self.keys.clients)
                .key(&self.keys.lock)
                .arg(&self.instance)
                .arg(&self.client)
                .arg(self.target.lease.as_millis() as u64)
                .arg(lock.as_deref().unwrap_or(""))
                .arg(if join { "1" } else { "0" })
                .invoke(conn)
        })?;
        if reply.first() == Some(&0) {
            self.feed.removed.store(true, Ordering::Release);
        }
        if lock.is_some() && reply.get(1) == Some(&0) {
            // Only if the lock renewed is still the one held: a renewal that crossed an unlock
            // and a new acquire says nothing about the new hold.
            let held = self.feed.lock_value.lock();
            if *held == lock {
                self.feed.lock_lost.store(true, Ordering::Release);
            }
        }
        Ok(())
    }
}

/// The entries of an XREAD reply for one stream: `[[key, entries]]`, or nil on a timeout.
fn stream_entries(reply: &Value, last: u64) -> Option<(Vec<Entry>, Option<String>)> {
    match reply {
        Value::Nil => None,
        Value::Array(streams) => match streams.first() {
            Some(Value::Array(pair)) => entries(pair.get(1)?, last),
            _ => None,
        },
        Value::Map(streams) => entries(&streams.first()?.1, last),
        _ => None,
    }
}
