//! A linearizability checker for histories of operations on the keys of a map, each key a
//! register with an `Option<u64>` value: get, insert, remove and add (`update` with `+ d`).
//!
//! A map is linearizable if and only if every key's sub-history is (operations on one key
//! touch only that key, and linearizability is local: Herlihy and Wing), so each key is
//! checked on its own with the Wing-Gong search as Lowe improved it: operations are tried in
//! an order their real-time order allows, and (set of operations done, value) pairs already
//! explored are remembered, so that the search stays small for histories of a few thousand
//! operations from a few processes.
//!
//! An operation whose process was killed before it answered is *pending*: it may have taken
//! effect at any time after its call, or never.

use std::collections::{BTreeMap, HashSet};

use crate::redis::{Backend, OnBackend};

/// What an operation does to its key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// Reads the value.
    Get,
    /// Sets the value; answers the previous one.
    Insert(u64),
    /// Removes the value; answers the previous one.
    Remove,
    /// Sets the value to (old value or 0) + d; answers the new one.
    Add(u64),
}

/// One operation as a process saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// The process (or thread) that ran it; its operations do not overlap.
    pub process: u32,
    /// The key.
    pub key: u32,
    /// What it did.
    pub op: Op,
    /// What it answered: the value `Get`, `Insert` and `Remove` saw, or the new value of
    /// `Add`; `None` if the process died before it answered (a pending operation).
    pub answer: Option<Option<u64>>,
    /// When it was called (monotonic clock, ns).
    pub called: u64,
    /// When it answered; ignored for pending operations.
    pub answered: u64,
}

/// Applies `op` to `value`: the value after it, if `answer` (when there is one) is what the
/// operation would answer from `value`.
fn step(value: Option<u64>, op: Op, answer: Option<Option<u64>>) -> Option<Option<u64>> {
    let (answers, after) = match op {
        Op::Get => (value, value),
        Op::Insert(new) => (value, Some(new)),
        Op::Remove => (value, None),
        Op::Add(delta) => {
            let new = Some(value.unwrap_or(0).wrapping_add(delta));
            (new, new)
        }
    };
    match answer {
        Some(answered) if answered != answers => None,
        _ => Some(after),
    }
}

/// Checks a history of any number of keys, each starting absent.
///
/// # Errors
/// The first key whose sub-history is not linearizable, with its operations.
pub fn check(history: &[Event]) -> Result<(), String> {
    let mut keys: BTreeMap<u32, Vec<&Event>> = BTreeMap::new();
    for event in history {
        keys.entry(event.key).or_default().push(event);
    }
    for (key, events) in keys {
        if !linearizable(&events) {
            let mut shown: Vec<String> = events.iter().map(|e| format!("{e:?}")).collect();
            shown.truncate(40);
            return Err(format!(
                "key {key}: {} operations admit no linearization; the first:\n{}",
                events.len(),
                shown.join("\n")
            ));
        }
    }
    Ok(())
}

/// A call or an answer in the time-ordered list the search walks.
#[derive(Clone, Copy, Debug)]
struct Entry {
    op: usize,
    is_call: bool,
    time: u64,
}

/// The Wing-Gong-Lowe search over one key's operations.
fn linearizable(events: &[&Event]) -> bool {
    let n = events.len();
    let mut entries: Vec<Entry> = Vec::with_capacity(2 * n);
    for (op, event) in events.iter().enumerate() {
        entries.push(Entry {
            op,
            is_call: true,
            time: event.called,
        });
        let answered = if event.answer.is_some() {
            event.answered
        } else {
            u64::MAX
        };
        entries.push(Entry {
            op,
            is_call: false,
            time: answered,
        });
    }
    // Calls before answers at the same instant: such operations overlap.
    entries.sort_by_key(|e| (e.time, !e.is_call));
    // A doubly linked list over `entries`, with the head at index `n2` (a sentinel).
    if n == 0 {
        return true;
    }
    // A circular doubly linked list over `entries`; index `n2` is the sentinel, which both
    // starts and ends it.
    let n2 = entries.len();
    let end = n2;
    let mut next: Vec<usize> = (1..=n2).collect();
    next.push(0);
    let mut prev: Vec<usize> = vec![n2];
    prev.extend(0..n2 - 1);
    prev.push(n2 - 1);
    let mut answer_of = vec![0; n];
    for (i, e) in entries.iter().enumerate() {
        if !e.is_call {
            answer_of[e.op] = i;
        }
    }
    let unlink = |i: usize, next: &mut Vec<usize>, prev: &mut Vec<usize>| {
        let (p, q) = (prev[i], next[i]);
        next[p] = q;
        prev[q] = p;
    };
    let relink = |i: usize, next: &mut Vec<usize>, prev: &mut Vec<usize>| {
        let (p, q) = (prev[i], next[i]);
        next[p] = i;
        prev[q] = i;
    };
    let words = n.div_ceil(64);
    let mut done = vec![0u64; words];
    let mut seen: HashSet<(Vec<u64>, Option<u64>)> = HashSet::new();
    let mut value: Option<u64> = None;
    // (call entry, value before it) of every operation linearized so far.
    let mut stack: Vec<(usize, Option<u64>)> = Vec::new();
    let mut at = next[end];
    loop {
        if at == end {
            return true;
        }
        let entry = entries[at];
        if entry.is_call {
            let event = events[entry.op];
            if let Some(after) = step(value, event.op, event.answer) {
                done[entry.op / 64] |= 1 << (entry.op % 64);
                if seen.insert((done.clone(), after)) {
                    stack.push((at, value));
                    value = after;
                    unlink(at, &mut next, &mut prev);
                    unlink(answer_of[entry.op], &mut next, &mut prev);
                    at = next[end];
                    continue;
                }
                done[entry.op / 64] &= !(1 << (entry.op % 64));
            }
            at = next[at];
        } else {
            // The earliest answer still in the list belongs to an operation not yet placed.
            // A pending one's "answer" is at the end of time: every answered operation was
            // placed, and pending ones may simply never have happened.
            if events[entry.op].answer.is_none() {
                return true;
            }
            let Some((call, before)) = stack.pop() else {
                return false;
            };
            let op = entries[call].op;
            relink(answer_of[op], &mut next, &mut prev);
            relink(call, &mut next, &mut prev);
            done[op / 64] &= !(1 << (op % 64));
            value = before;
            at = next[call];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(
        process: u32,
        op: Op,
        answer: Option<Option<u64>>,
        called: u64,
        answered: u64,
    ) -> Event {
        Event {
            process,
            key: 0,
            op,
            answer,
            called,
            answered,
        }
    }

    #[test]
    fn sequential_histories_follow_the_model() {
        let good = [
            event(0, Op::Insert(5), Some(None), 0, 1),
            event(0, Op::Get, Some(Some(5)), 2, 3),
            event(0, Op::Add(2), Some(Some(7)), 4, 5),
            event(0, Op::Remove, Some(Some(7)), 6, 7),
            event(0, Op::Get, Some(None), 8, 9),
        ];
        assert!(check(&good).is_ok());
        let stale = [
            event(0, Op::Insert(5), Some(None), 0, 1),
            event(1, Op::Get, Some(None), 2, 3),
        ];
        assert!(
            check(&stale).is_err(),
            "a read after a completed write saw the old value"
        );
    }

    #[test]
    fn overlapping_operations_may_take_effect_in_either_order() {
        let either = [
            event(0, Op::Insert(1), Some(None), 0, 10),
            event(1, Op::Get, Some(Some(1)), 1, 2),
            event(2, Op::Get, Some(None), 3, 4),
        ];
        // The reads contradict each other in real time: 2 saw nothing after 1 saw the write.
        assert!(check(&either).is_err());
        let fine = [
            event(0, Op::Insert(1), Some(None), 0, 10),
            event(2, Op::Get, Some(None), 1, 2),
            event(1, Op::Get, Some(Some(1)), 3, 4),
        ];
        assert!(check(&fine).is_ok());
    }

    #[test]
    fn lost_increments_are_caught_and_pending_ones_may_or_may_not_count() {
        let lost = [
            event(0, Op::Add(1), Some(Some(1)), 0, 1),
            event(1, Op::Add(1), Some(Some(1)), 2, 3),
        ];
        assert!(check(&lost).is_err());
        let pending = [
            event(0, Op::Add(1), None, 0, 0),
            event(1, Op::Get, Some(Some(1)), 5, 6),
            event(1, Op::Add(1), Some(Some(2)), 7, 8),
        ];
        assert!(check(&pending).is_ok(), "the killed add took effect");
        let never = [
            event(0, Op::Add(1), None, 0, 0),
            event(1, Op::Get, Some(None), 5, 6),
        ];
        assert!(check(&never).is_ok(), "the killed add never took effect");
    }
}

/// The history of one process, as the lines it reported (see [`record_call`] and
/// [`record_answer`]), read back; a call without an answer is a pending operation.
///
/// # Panics
/// On a line that is not a record.
pub fn parse(process: u32, lines: &[String]) -> Vec<Event> {
    let mut events: Vec<Event> = Vec::new();
    for line in lines {
        let words: Vec<&str> = line.split(' ').collect();
        match words.as_slice() {
            ["call", key, op, arg, called] => {
                let arg: u64 = arg.parse().expect("argument");
                events.push(Event {
                    process,
                    key: key.parse().expect("key"),
                    op: match *op {
                        "get" => Op::Get,
                        "insert" => Op::Insert(arg),
                        "remove" => Op::Remove,
                        "add" => Op::Add(arg),
                        other => panic!("unknown operation {other}"),
                    },
                    answer: None,
                    called: called.parse().expect("time"),
                    answered: 0,
                });
            }
            ["answer", value, answered] => {
                let event = events.last_mut().expect("an answer after its call");
                event.answer = Some(match *value {
                    "-" => None,
                    v => Some(v.parse().expect("value")),
                });
                event.answered = answered.parse().expect("time");
            }
            _ => {}
        }
    }
    events
}

/// The monotonic clock (ns), the same in every process of the machine.
pub fn now() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out-pointer for clock_gettime.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

/// Reports the call of `op` on `key` (a line [`parse`] reads), stamped now.
pub fn record_call(key: u32, op: Op) {
    let (name, arg) = match op {
        Op::Get => ("get", 0),
        Op::Insert(v) => ("insert", v),
        Op::Remove => ("remove", 0),
        Op::Add(d) => ("add", d),
    };
    crate::report(format!("call {key} {name} {arg} {}", now()));
}

/// Reports the answer of the operation called last, stamped now.
pub fn record_answer(value: Option<u64>) {
    let value = value.map_or("-".to_owned(), |v| v.to_string());
    crate::report(format!("answer {value} {}", now()));
}

/// Keys the scenario's workers use: few, so that they contend.
pub const KEYS: u32 = 3;

/// A worker of the scenario: opens the dict `name` on `backend` (a 2 KiB stream, so that
/// epochs switch often) and runs `ops` random operations on [`KEYS`] keys, reporting each call
/// and answer. On a server, a get is `sync()` then `get()`: the documented linearizable read
/// (a plain get serves what the handle's subscription delivered, a round trip behind).
///
/// # Panics
/// If an operation fails.
pub fn worker(name: &str, seed: u64, ops: u64, backend: &Backend) {
    use ultradict::UltraDict;
    let d: UltraDict<u32, u64> = UltraDict::builder()
        .name(name)
        .buffer_size(2048)
        .on(backend)
        .open()
        .expect("open");
    let mut state = seed | 1;
    let mut random = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..ops {
        let key = (random() % u64::from(KEYS)) as u32;
        let op = match random() % 4 {
            0 => Op::Get,
            1 => Op::Insert(random() % 1000),
            2 => Op::Remove,
            _ => Op::Add(1 + random() % 3),
        };
        record_call(key, op);
        let answer = match op {
            Op::Get if backend.is_remote() => d.sync().and_then(|()| d.get(&key)),
            Op::Get => d.get(&key),
            Op::Insert(value) => d.insert(key, value),
            Op::Remove => d.remove(&key),
            Op::Add(delta) => d.update(&key, |n| n.unwrap_or(0) + delta).map(Some),
        };
        record_answer(answer.expect("operation"));
    }
    d.close().expect("close");
}

/// What [`record`] saw.
#[derive(Debug)]
pub struct Recorded {
    /// Every operation of every process.
    pub history: Vec<Event>,
    /// Processes SIGKILLed while they worked.
    pub kills: u64,
    /// Epochs the dict went through (full dumps).
    pub epochs: u32,
}

/// Runs the scenario: four workers of `ops` operations each on dict `name` on `backend`; `kills` times, the
/// oldest worker is SIGKILLed after a third of its operations and a new one takes its place.
/// This process keeps the dict open throughout, so that a worker finishing first does not
/// remove it. `spawn(seed, ops)` starts a worker (a re-executed binary calling [`worker`]).
///
/// # Panics
/// If a worker fails or the dict cannot be opened.
pub fn record(
    name: &str,
    ops: u64,
    kills: u64,
    backend: &Backend,
    spawn: impl Fn(u64, u64) -> crate::Running,
) -> Recorded {
    use std::time::Duration;
    const WATCHDOG: Duration = Duration::from_secs(600);
    let keeper: ultradict::UltraDict<u32, u64> = ultradict::UltraDict::builder()
        .name(name)
        .buffer_size(2048)
        .on(backend)
        .open()
        .expect("open");
    let mut seed = 0x9E37_79B9_u64;
    let mut next_seed = || {
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        seed
    };
    let mut workers: std::collections::VecDeque<crate::Running> =
        (0..4).map(|_| spawn(next_seed(), ops)).collect();
    let mut history = Vec::new();
    let mut process = 0;
    for _ in 0..kills {
        let mut victim = workers.pop_front().expect("a worker");
        for _ in 0..ops / 3 {
            victim.wait_for_report("answer", WATCHDOG);
        }
        history.extend(parse(process, &victim.kill_and_collect()));
        process += 1;
        workers.push_back(spawn(next_seed(), ops));
    }
    for worker in workers {
        history.extend(parse(process, &worker.wait(WATCHDOG)));
        process += 1;
    }
    let epochs = keeper.status().epoch;
    keeper.close().expect("close");
    Recorded {
        history,
        kills,
        epochs,
    }
}
