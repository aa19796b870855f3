//! The cross-process lock: crashes inside the critical section, holder reporting, fairness
//! between processes and threads, and sleeping (not spinning) waiters.

use std::sync::Arc;
use std::time::Duration;

use ultradict::{Create, Error, LockOptions, UltraDict};
use ultradict_test_kit::{
    Running, Spawn, arg, assert_no_segments, locked_increments, report, role, run_all, shm_objects,
    thread_cpu_time, unique_name,
};

const WATCHDOG: Duration = Duration::from_secs(120);

type Dict = UltraDict<u32, String>;

fn attach(name: &str) -> Dict {
    UltraDict::builder()
        .name(name)
        .create(Create::Open)
        .open()
        .unwrap()
}

#[test]
fn child_entry() {
    let Some(role) = role() else { return };
    let name = arg("NAME");
    match role.as_str() {
        // Dies (through ULTRADICT_CRASH_AT) somewhere inside this write.
        "crash_in_write" => {
            let d = attach(&name);
            let size: usize = arg("SIZE").parse().unwrap();
            report("writing");
            d.insert(99, "x".repeat(size)).unwrap();
            report("survived");
        }
        "hold" => {
            let d = attach(&name);
            let control: UltraDict<u32, u32> = UltraDict::builder()
                .name(arg("CONTROL"))
                .create(Create::Open)
                .open()
                .unwrap();
            let guard = d.lock().unwrap();
            report("locked");
            // Hold until the parent says so, or for the given time.
            let hold_ms: u64 = arg("HOLD_MS").parse().unwrap();
            let start = std::time::Instant::now();
            while control.get(&1).unwrap().is_none()
                && start.elapsed() < Duration::from_millis(hold_ms)
            {
                std::thread::sleep(Duration::from_millis(1));
            }
            drop(guard);
        }
        // Reads every key each time the parent names a round, with every catch-up under the
        // writers' lock (the parent sets ULTRADICT_LOCK_FREE_ATTEMPTS=0).
        "read_under_lock" => {
            use std::io::BufRead;
            let d = attach(&name);
            report("attached");
            for line in std::io::stdin().lock().lines() {
                let line = line.unwrap();
                if line == "end" {
                    break;
                }
                let round: u32 = line.parse().unwrap();
                let right = (0..KEYS)
                    .filter(|i| d.get(i).unwrap() == Some(format!("round {round} key {i}")))
                    .count();
                report(format!("read {right} of {KEYS}"));
            }
        }
        // Takes the lock and keeps it until killed.
        "hold_until_killed" => {
            let d = attach(&name);
            let _guard = d.lock().unwrap();
            report(format!("locked as thread {}", thread_id()));
            std::thread::sleep(WATCHDOG);
        }
        // Takes the lock when told ("go" on stdin) and holds it for HOLD_MS, keeping key 0 at
        // "inside" meanwhile: reports what it found there when it got the lock.
        "hold_inside" => {
            use std::io::BufRead;
            let d = attach(&name);
            report("attached");
            let mut line = String::new();
            std::io::stdin().lock().read_line(&mut line).unwrap();
            let guard = d.lock().unwrap();
            let found = d.get(&0).unwrap().unwrap_or_default();
            d.insert(0, "inside".into()).unwrap();
            report(format!("locked as thread {}, found {found:?}", thread_id()));
            std::thread::sleep(Duration::from_millis(arg("HOLD_MS").parse().unwrap()));
            d.insert(0, String::new()).unwrap();
            drop(guard);
            report("released");
        }
        "threads_increment" => {
            let d = Arc::new(
                UltraDict::<u32, u64>::builder()
                    .name(&name)
                    .create(Create::Open)
                    .open()
                    .unwrap(),
            );
            locked_increments(&d, 2, arg("COUNT").parse().unwrap());
        }
        other => panic!("unknown role {other}"),
    }
}

/// The calling thread's id, as this process's PID namespace numbers it.
fn thread_id() -> u32 {
    let link = std::fs::read_link("/proc/thread-self").unwrap();
    link.file_name().unwrap().to_str().unwrap().parse().unwrap()
}

/// Keys the locked catch-up test writes each round.
const KEYS: u32 = 40;

/// A reader whose catch-ups all go down the locked path (the one it takes when writers overtake
/// its lock-free attempts again and again) sees every write, across full dumps of a 1 KiB
/// stream between two of its reads.
#[test]
fn a_reader_that_catches_up_under_the_lock_sees_every_write() {
    let name = unique_name("locked-catch-up");
    let d: Dict = UltraDict::builder()
        .name(&name)
        .buffer_size(1024)
        .open()
        .unwrap();
    let mut child = Spawn::test("child_entry", "read_under_lock")
        .env("NAME", &name)
        .raw_env("ULTRADICT_LOCK_FREE_ATTEMPTS", 0)
        .start();
    child.wait_for_report("attached", WATCHDOG);
    let dumps = d.status().dumps;
    for round in 0..5 {
        for i in 0..KEYS {
            d.insert(i, format!("round {round} key {i}")).unwrap();
        }
        let read = child.request(&round.to_string(), WATCHDOG);
        assert_eq!(read, format!("read {KEYS} of {KEYS}"), "round {round}");
    }
    child.send("end");
    child.wait(WATCHDOG);
    let status = d.status();
    assert!(
        status.dumps >= dumps + 5,
        "full dumps between reads: {status}"
    );
    assert!(
        status.locked_catch_ups >= 5,
        "catch-ups under the lock: {status}"
    );
    d.close().unwrap();
    assert_no_segments(&name);
}

/// A child SIGKILLs itself at `point` inside a write of a value of `size` bytes; the parent
/// goes on with every committed update and nothing of the dead write, and the lock shows the
/// recovery.
fn survive_crash_at(point: &str, size: usize, dead_write_committed: bool) {
    survive_crash_in(point, size, dead_write_committed, 0);
}

/// [`survive_crash_at`] in a dict with `filler` more entries: enough of them make the dump
/// larger than the 1 KiB buffer, so that the epoch streams into the dump's own segment.
fn survive_crash_in(point: &str, size: usize, dead_write_committed: bool, filler: u32) {
    let name = unique_name(&format!("crash-{point}"));
    let d: Dict = UltraDict::builder()
        .name(&name)
        .buffer_size(1024)
        .open()
        .unwrap();
    for i in 0..10 {
        d.insert(i, format!("committed {i}")).unwrap();
    }
    d.extend((1_000..1_000 + filler).map(|i| (i, format!("filler {i}"))))
        .unwrap();
    d.dump().unwrap();
    if filler > 0 {
        let status = d.status();
        assert!(status.buffer_size > 1024, "a grown stream: {status}");
    }
    d.insert(10, "committed 10".into()).unwrap();
    let before = d.status();

    let mut child = Spawn::test("child_entry", "crash_in_write")
        .env("NAME", &name)
        .env("SIZE", size)
        .raw_env("ULTRADICT_CRASH_AT", point)
        .start();
    let child_pid = child.pid();
    child.wait_for_report("writing", WATCHDOG);
    let (status, output) = child.finish(WATCHDOG);
    assert!(
        !status.success(),
        "the child should have died at {point}: {output}"
    );
    assert!(!output.contains("survived"), "{output}");

    // The lock the child died holding is recovered at our next attempt, without a timeout.
    let guard = d
        .lock_with(LockOptions::new().timeout(Duration::from_secs(30)))
        .unwrap();
    drop(guard);
    let after = d.status();
    assert_eq!(after.lock_recoveries, before.lock_recoveries + 1, "{after}");
    assert_eq!(after.last_dead_holder, Some(child_pid));
    assert!(after.lock_holder.is_none());

    // A fresh handle catches up without the lock: whatever the dead writer left in the state
    // and epoch words refuses no copy of intact records.
    let fresh = attach(&name);
    assert_eq!(fresh.get(&10).unwrap(), Some("committed 10".into()));
    assert_eq!(
        d.status().locked_catch_ups,
        after.locked_catch_ups,
        "{point}"
    );
    drop(fresh);

    for i in 0..=10 {
        assert_eq!(
            d.get(&i).unwrap(),
            Some(format!("committed {i}")),
            "{point}"
        );
    }
    assert_eq!(
        d.get(&99).unwrap().is_some(),
        dead_write_committed,
        "{point}"
    );
    d.insert(11, "after the crash".into()).unwrap();
    assert_eq!(
        d.len().unwrap(),
        12 + filler as usize + usize::from(dead_write_committed)
    );
    // A fresh handle sees the same state.
    let fresh = attach(&name);
    assert_eq!(fresh.to_hashmap().unwrap(), d.to_hashmap().unwrap());
    drop(fresh);
    // Nothing the dead writer made is left over: the control segment and the current dump.
    let dump = d.status().dump_segment.expect("a dump");
    assert_eq!(shm_objects(&name), vec![format!("ultradict.{name}"), dump]);
    drop(d);
    assert_no_segments(&name);
}

#[test]
fn crash_after_taking_the_lock() {
    survive_crash_at("locked", 10, false);
}

#[test]
fn crash_after_writing_a_record_before_publishing_it() {
    survive_crash_at("record-written", 10, false);
}

#[test]
fn crash_after_writing_a_dump_before_publishing_it() {
    survive_crash_at("dump-written", 5_000, false);
}

#[test]
fn crash_after_publishing_an_epoch_before_storing_it_in_the_epoch_word() {
    survive_crash_at("epoch-published", 5_000, true);
}

/// A writer dies between publishing a new epoch and storing it in the epoch word. The
/// recovery of its lock stores it, before the next writer writes the epoch's first record:
/// otherwise every copy of that epoch's records without the lock would be refused, and every
/// catch-up would end under the lock until the next epoch.
#[test]
fn the_epoch_word_is_mended_after_its_writer_died() {
    let name = unique_name("epoch-word");
    let d: Dict = UltraDict::builder()
        .name(&name)
        .buffer_size(1024)
        .open()
        .unwrap();
    d.insert(1, "one".into()).unwrap();
    // Each child writes key 99: the first a value too large for the stream (a full dump,
    // a new epoch) and dies publishing it, the second a small one into that epoch's stream.
    for (size, crash_at) in [(5_000, "epoch-published"), (10, "")] {
        let mut child = Spawn::test("child_entry", "crash_in_write")
            .env("NAME", &name)
            .env("SIZE", size)
            .raw_env("ULTRADICT_CRASH_AT", crash_at)
            .start();
        child.wait_for_report("writing", WATCHDOG);
        let (status, output) = child.finish(WATCHDOG);
        assert_eq!(status.success(), crash_at.is_empty(), "{output}");
    }
    // This handle is still in the old epoch: it switches, then copies the record.
    let locked = d.status().locked_catch_ups;
    assert_eq!(d.get(&99).unwrap(), Some("x".repeat(10)));
    assert_eq!(
        d.status().locked_catch_ups,
        locked,
        "a catch-up under the lock"
    );
    assert_eq!(d.get(&1).unwrap(), Some("one".into()));
    assert_eq!(d.status().lock_recoveries, 1);
    drop(d);
    assert_no_segments(&name);
}

#[test]
fn crash_after_publishing_a_dump_before_unlinking_the_old_one() {
    survive_crash_at("dump-published", 5_000, true);
}

#[test]
fn crashes_in_an_epoch_that_streams_into_its_dump_segment() {
    survive_crash_in("record-written", 10, false, 300);
    survive_crash_in("dump-written", 50_000, false, 300);
    survive_crash_in("epoch-published", 50_000, true, 300);
    survive_crash_in("dump-published", 50_000, true, 300);
}

/// A dict named from `label` whose lock a child (role `hold`) holds, reported and waiting;
/// inserting key 1 into the returned control dict lets it go. Returns the dict's name, the
/// control dict's name, this process's handles of both, and the child.
fn held_by_a_child(label: &str) -> (String, String, Dict, UltraDict<u32, u32>, Running) {
    let name = unique_name(label);
    let control_name = unique_name(&format!("{label}-control"));
    let d: Dict = UltraDict::open(&name).unwrap();
    let control: UltraDict<u32, u32> = UltraDict::open(&control_name).unwrap();
    let mut child = Spawn::test("child_entry", "hold")
        .env("NAME", &name)
        .env("CONTROL", &control_name)
        .env("HOLD_MS", 60_000)
        .start();
    child.wait_for_report("locked", WATCHDOG);
    (name, control_name, d, control, child)
}

/// `inspect` (and `ultradict list`) map a dict's control block read-only, and write nothing
/// into it: they used to stamp when a lock's holder was first seen, and died of SIGSEGV on a
/// lock nobody had seen held yet.
#[test]
fn inspecting_a_dict_whose_lock_is_held_writes_nothing() {
    let (name, control_name, d, control, mut child) = held_by_a_child("inspect-held");
    let info = ultradict::inspect(&name).unwrap();
    let holder = info.lock_holder.expect("a holder");
    assert_eq!(holder.pid, child.pid());
    assert!(holder.since.is_none(), "nobody stamped it: {holder:?}");
    // A handle's report does stamp it, and `inspect` then shows it.
    assert!(d.status().lock_holder.unwrap().since.is_some());
    assert!(
        ultradict::inspect(&name)
            .unwrap()
            .lock_holder
            .unwrap()
            .since
            .is_some()
    );
    control.insert(1, 1).unwrap();
    let (status, output) = child.finish(WATCHDOG);
    assert!(status.success(), "{output}");
    drop(d);
    drop(control);
    assert_no_segments(&name);
    assert_no_segments(&control_name);
}

#[test]
fn errors_name_the_live_holder_and_it_is_never_robbed() {
    let (name, control_name, d, control, child) = held_by_a_child("holder");
    let holder = child.pid();

    match d.try_lock() {
        Err(Error::WouldBlock { holder_pid, .. }) => assert_eq!(holder_pid, holder),
        other => panic!("expected WouldBlock, got {other:?}"),
    }
    match d.lock_with(
        LockOptions::new()
            .timeout(Duration::from_millis(200))
            .sleep_time(Duration::from_millis(5)),
    ) {
        Err(Error::LockTimeout {
            holder_pid, waited, ..
        }) => {
            assert_eq!(holder_pid, holder);
            assert!(
                waited >= Duration::from_millis(200),
                "gave up early: {waited:?}"
            );
        }
        other => panic!("expected LockTimeout, got {other:?}"),
    }
    let held = d.status().lock_holder.expect("the child holds the lock");
    assert_eq!(held.pid, holder);
    assert!(held.since.is_some());
    assert_eq!(d.status().lock_recoveries, 0, "a live holder was robbed");

    control.insert(1, 1).unwrap(); // let the child go
    let guard = d
        .lock_with(LockOptions::new().timeout(Duration::from_secs(30)))
        .unwrap();
    drop(guard);
    child.wait(WATCHDOG);
    drop((d, control));
    assert_no_segments(&name);
    assert_no_segments(&control_name);
}

/// A waiter that judged the holder dead and was then held up must not take the lock over from
/// a new handle that meanwhile claimed the dead one's slot and took the lock. In containers
/// that new holder's word is often the very word the dead one had (same slot, the lowest free;
/// same thread id, small numbers in a fresh PID namespace), and a bare compare-and-swap could
/// not tell them apart: the waiter robbed the live holder.
#[test]
fn a_waiter_held_up_after_judging_the_holder_dead_robs_no_new_holder() {
    let name = unique_name("lock-aba");
    let d: Dict = UltraDict::open(&name).unwrap();
    // Slot 1: the waiter, which sleeps 3 s between judging the holder dead and taking over.
    let mut waiter = Spawn::test("child_entry", "hold_inside")
        .env("NAME", &name)
        .env("HOLD_MS", 0)
        .raw_env("ULTRADICT_CRASH_AT", "lock-judged")
        .raw_env("ULTRADICT_CRASH_SIGNAL", "SLEEP")
        .raw_env("ULTRADICT_CRASH_SLEEP_MS", 3_000)
        .start();
    waiter.wait_for_report("attached", WATCHDOG);
    // Slot 2: a holder in a PID namespace of its own, killed holding the lock.
    let mut dead = Spawn::test_in_pid_namespace("child_entry", "hold_until_killed")
        .env("NAME", &name)
        .start();
    let dead_thread = dead.wait_for_report("locked as thread ", WATCHDOG);
    dead.kill();
    while ultradict::inspect(&name).unwrap().lock_holder_alive != Some(false) {
        std::thread::sleep(Duration::from_millis(5));
    }
    waiter.send("go");
    // Slot 2 again: a new holder in a PID namespace of its own, with the dead one's thread id,
    // takes the lock while the waiter sleeps, and holds it past the waiter's wake-up.
    let mut new = Spawn::test_in_pid_namespace("child_entry", "hold_inside")
        .env("NAME", &name)
        .env("HOLD_MS", 4_000)
        .start();
    new.wait_for_report("attached", WATCHDOG);
    new.send("go");
    let new_thread = new.wait_for_report("locked as thread ", WATCHDOG);
    assert!(new_thread.ends_with("found \"\""), "{new_thread}");
    let thread = |report: &str| {
        let id = report.trim_start_matches("locked as thread ");
        id[..id.find(',').unwrap_or(id.len())].to_owned()
    };
    assert_eq!(
        thread(&dead_thread),
        thread(&new_thread),
        "the test needs both holders to have the same thread id"
    );
    let waited = waiter.wait_for_report("locked as thread ", WATCHDOG);
    assert!(
        waited.ends_with("found \"\""),
        "the waiter took the lock from a live holder: {waited}"
    );
    new.wait(WATCHDOG);
    waiter.wait(WATCHDOG);
    // The new holder's attach recovered the dead one's lock; nobody recovered a live one's.
    assert_eq!(d.status().lock_recoveries, 1);
    drop(d);
    assert_no_segments(&name);
}

/// A process stopped inside the gate (SIGSTOP at `attach-claimed`, holding it) does not keep a
/// dead holder's lock from being recovered: the waiter waits for the gate a while, then judges
/// without it.
#[test]
fn a_process_stopped_in_the_gate_does_not_keep_a_dead_holders_lock() {
    let name = unique_name("lock-gate-stopped");
    let d: Dict = UltraDict::open(&name).unwrap();
    let mut dead = Spawn::test("child_entry", "hold_until_killed")
        .env("NAME", &name)
        .start();
    dead.wait_for_report("locked as thread ", WATCHDOG);
    let stopped = Spawn::test("child_entry", "hold_until_killed")
        .env("NAME", &name)
        .raw_env("ULTRADICT_CRASH_AT", "attach-claimed")
        .raw_env("ULTRADICT_CRASH_SIGNAL", "STOP")
        .start();
    let state = format!("/proc/{}/stat", stopped.pid());
    while !std::fs::read_to_string(&state)
        .unwrap()
        .rsplit(')')
        .next()
        .is_some_and(|rest| rest.trim_start().starts_with('T'))
    {
        std::thread::sleep(Duration::from_millis(5));
    }
    dead.kill();
    let recovered = d.lock_timeout(Duration::from_secs(20)).map(drop);
    stopped.kill();
    recovered.unwrap();
    assert_eq!(d.status().lock_recoveries, 1);
    drop(d);
    assert_no_segments(&name);
}

#[test]
fn processes_and_threads_exclude_each_other() {
    const PROCESSES: u64 = 4;
    const COUNT: u64 = 5_000;
    let name = unique_name("increments");
    let d: UltraDict<u32, u64> = UltraDict::builder()
        .name(&name)
        .buffer_size(16 << 10)
        .open()
        .unwrap();
    run_all(
        (0..PROCESSES).map(|_| {
            Spawn::test("child_entry", "threads_increment")
                .env("NAME", &name)
                .env("COUNT", COUNT)
        }),
        WATCHDOG,
    );
    assert_eq!(d.get(&0).unwrap(), Some(PROCESSES * 2 * COUNT));
    drop(d);
    assert_no_segments(&name);
}

#[test]
fn a_waiter_sleeps_instead_of_spinning() {
    let name = unique_name("sleep");
    let control_name = unique_name("sleep-control");
    let d: Dict = UltraDict::open(&name).unwrap();
    let control: UltraDict<u32, u32> = UltraDict::open(&control_name).unwrap();
    let mut child = Spawn::test("child_entry", "hold")
        .env("NAME", &name)
        .env("CONTROL", &control_name)
        .env("HOLD_MS", 1_000)
        .start();
    child.wait_for_report("locked", WATCHDOG);
    let cpu_before = thread_cpu_time();
    let waited = std::time::Instant::now();
    let guard = d.lock().unwrap();
    let (cpu, waited) = (thread_cpu_time() - cpu_before, waited.elapsed());
    drop(guard);
    println!("waited {waited:?} for the lock, using {cpu:?} of CPU");
    assert!(
        waited >= Duration::from_millis(500),
        "the child held the lock for about 1 s: {waited:?}"
    );
    assert!(
        cpu < Duration::from_millis(250),
        "the waiter burned {cpu:?} of CPU in {waited:?}"
    );
    child.wait(WATCHDOG);
    drop((d, control));
    assert_no_segments(&name);
    assert_no_segments(&control_name);
}
