//! Named crash points for tests, compiled in only with the `fault-injection` feature.
//!
//! A process started with `ULTRADICT_CRASH_AT=<point>` kills itself with SIGKILL when it
//! reaches that point (after skipping `ULTRADICT_CRASH_SKIP` earlier hits, default 0): a crash
//! with no unwinding, no destructors and no chance to tidy up, at an exact place in the write,
//! dump, attach, detach, creation and removal paths. With `ULTRADICT_CRASH_SIGNAL=STOP` it
//! stops itself there instead (SIGSTOP: a process that hangs holding whatever it holds, until
//! SIGCONT); with `ULTRADICT_CRASH_SIGNAL=SLEEP`, only the thread that reached the point
//! sleeps there for `ULTRADICT_CRASH_SLEEP_MS` (default 200), while the process's other
//! threads run on: a window between two steps, widened. The points:
//!
//! | point | where |
//! |---|---|
//! | `locked` | the lock was just taken, nothing written yet |
//! | `lock-judged` | a lock waiter found the holder's slot dead, not yet taken the lock over |
//! | `record-written` | a record's bytes are in the stream, the offset is not yet published |
//! | `dump-written` | a full dump segment is written, its epoch is not yet published |
//! | `epoch-published` | a new epoch is in the state word, not yet in the epoch word |
//! | `dump-published` | the new epoch is published, the old dump is not yet unlinked |
//! | `create-unlocked` | a creator made its control segment under its private name, not yet locked it |
//! | `sweep-judged` | an opener found a pending creation unlocked (its creator dead?), not yet taken it |
//! | `create-pending` | a creator built its control segment under its private name, not yet renamed |
//! | `create-ready` | a creator marked it ready (and wrote a first dump, if any), not yet renamed |
//! | `cleanup-judged` | `cleanup` found objects under a name with no control segment, not yet taken them |
//! | `fork-tagged` | a handle copied into a forked child took a slot of its own and made it the child's |
//! | `anchor-opened` | an opener opened its anchor's description, not yet registered it to be closed in forked children |
//! | `attach-claimed` | an opener took its process-table slot, still holding the gate |
//! | `detach-released` | a closer gave its slot back, before deciding whether to remove the dict |
//! | `removing` | a remover marked the dict removed and removed its nested dicts, not yet the rest |
//! | `redis-removed` | a Redis dict was removed, its name not yet taken out of the index of dicts |
//!
//! And three knobs: `ULTRADICT_LOCK_FREE_ATTEMPTS=<n>` sets how many lock-free catch-ups a
//! reader tries before it catches up under the writers' lock (see [`lock_free_attempts`]);
//! `ULTRADICT_AHEAD_DELAY_MS=<n>` holds the helper thread's reservation of a stream's next
//! chunk back for that long (see [`ahead_delay`]); `ULTRADICT_REDIS_RESEND=1` sends every
//! Redis script twice, as a client library does after a lost reply (see [`redis_resend`]).

/// Crashes the process here if the environment asks for this point. Unarmed (no
/// `ULTRADICT_CRASH_AT`), a point costs one relaxed load, so that builds with the feature on
/// (the workspace's tests and benches share their dependencies) measure what users run.
#[cfg(feature = "fault-injection")]
#[inline]
pub(crate) fn point(name: &'static str) {
    use std::sync::atomic::{AtomicU8, Ordering};
    const UNKNOWN: u8 = 0;
    const UNARMED: u8 = 1;
    static STATE: AtomicU8 = AtomicU8::new(UNKNOWN);
    if STATE.load(Ordering::Relaxed) == UNARMED {
        return;
    }
    armed_point(name, &STATE, UNARMED);
}

#[cfg(feature = "fault-injection")]
#[cold]
fn armed_point(name: &'static str, state: &std::sync::atomic::AtomicU8, unarmed: u8) {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};
    static TARGET: OnceLock<Option<(String, u64)>> = OnceLock::new();
    static HITS: AtomicU64 = AtomicU64::new(0);
    let target = TARGET.get_or_init(|| {
        let point = std::env::var("ULTRADICT_CRASH_AT").ok()?;
        let skip = std::env::var("ULTRADICT_CRASH_SKIP")
            .ok()
            .and_then(|s| s.parse().ok());
        Some((point, skip.unwrap_or(0)))
    });
    let Some((point, skip)) = target else {
        state.store(unarmed, Ordering::Relaxed);
        return;
    };
    if point == name && HITS.fetch_add(1, Ordering::Relaxed) >= *skip {
        let signal = match std::env::var("ULTRADICT_CRASH_SIGNAL").as_deref() {
            Ok("STOP") => libc::SIGSTOP,
            Ok("SLEEP") => {
                let ms = std::env::var("ULTRADICT_CRASH_SLEEP_MS")
                    .ok()
                    .and_then(|ms| ms.parse().ok())
                    .unwrap_or(200);
                std::thread::sleep(std::time::Duration::from_millis(ms));
                return;
            }
            _ => libc::SIGKILL,
        };
        // To this thread, not the process: a process-directed SIGSTOP may be taken by another
        // thread, and this one runs on (here: dropped the gate it was to hold) before the group
        // stop reaches it. A thread-directed one is acted on before `raise` returns.
        // SAFETY: sending a signal to the calling thread has no memory-safety preconditions.
        unsafe { libc::raise(signal) };
    }
}

/// How many lock-free catch-up attempts a reader makes before it catches up under the
/// writers' lock: `default`, or `ULTRADICT_LOCK_FREE_ATTEMPTS` when that is set. Only writers
/// that overtake a reader again and again send it down the locked path otherwise; 0 sends
/// every catch-up there, so that a test can run that path.
#[cfg(feature = "fault-injection")]
pub(crate) fn lock_free_attempts(default: u32) -> u32 {
    static ATTEMPTS: std::sync::OnceLock<Option<u32>> = std::sync::OnceLock::new();
    ATTEMPTS
        .get_or_init(|| {
            std::env::var("ULTRADICT_LOCK_FREE_ATTEMPTS")
                .ok()
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(default)
}

/// Without the feature, the default.
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub(crate) fn lock_free_attempts(default: u32) -> u32 {
    default
}

/// How long the helper thread waits before it reserves a stream's next chunk (see
/// `Dump::reserve_stream`): `ULTRADICT_AHEAD_DELAY_MS`, else not at all. A test forks while
/// such a job is certainly pending.
#[cfg(feature = "fault-injection")]
pub(crate) fn ahead_delay() -> Option<std::time::Duration> {
    static DELAY: std::sync::OnceLock<Option<std::time::Duration>> = std::sync::OnceLock::new();
    *DELAY.get_or_init(|| {
        std::env::var("ULTRADICT_AHEAD_DELAY_MS")
            .ok()
            .and_then(|ms| ms.parse().ok())
            .map(std::time::Duration::from_millis)
    })
}

/// Without the feature, no delay.
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub(crate) fn ahead_delay() -> Option<std::time::Duration> {
    None
}

/// Whether every server-side script is sent twice, the first reply thrown away:
/// `ULTRADICT_REDIS_RESEND=1`. That is what a client library does when a reply is lost and it
/// sends the request again (the Cluster client retries at once): every script must come out
/// the same when it ran twice.
#[cfg(feature = "fault-injection")]
pub(crate) fn redis_resend() -> bool {
    static RESEND: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *RESEND.get_or_init(|| std::env::var("ULTRADICT_REDIS_RESEND").is_ok_and(|v| v == "1"))
}

/// Without the feature, every request is sent once.
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub(crate) fn redis_resend() -> bool {
    false
}

/// Without the feature, crash points compile to nothing.
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub(crate) fn point(_name: &'static str) {}
