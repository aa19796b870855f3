//! A dict's life around its data: who is alive (across PID namespaces, after kills and forks),
//! who removes what, and that nothing is left behind. Real processes throughout: re-executed
//! children (some in PID namespaces of their own, through `unshare`), forks, SIGKILLs at the
//! fault-injection points of attach, detach, creation and removal.

use std::io::BufRead;
use std::time::Duration;

use ultradict::{Create, Error, Lifetime, SharedDict, UltraDict};
use ultradict_test_kit::{
    Running, Spawn, arg, assert_no_segments, fork, report, role, shm_objects, unique_name,
    wait_forked,
};

const WATCHDOG: Duration = Duration::from_secs(60);

type Dict = UltraDict<u32, u64>;

#[derive(SharedDict, Debug, Default)]
pub struct Inner {
    n: u64,
}

#[derive(SharedDict, Debug, Default)]
pub struct Outer {
    a: u64,
    #[ultradict(nested)]
    inner: Inner,
}

/// A child in a PID namespace of its own, running `role` on dict `name`, once it attached.
fn attached_in_pid_namespace(role: &str, name: &str) -> Running {
    let mut child = Spawn::test_in_pid_namespace("child_entry", role)
        .env("NAME", name)
        .start();
    child.wait_for_report("attached", WATCHDOG);
    child
}

fn open(name: &str) -> Dict {
    UltraDict::open(name).unwrap()
}

/// Children serve requests read from stdin, one per line, each answered with one report.
#[test]
fn child_entry() {
    let Some(role) = role() else { return };
    let name = arg("NAME");
    match role.as_str() {
        "serve" => serve(&name, Lifetime::LastClose),
        "serve_creator" => serve(&name, Lifetime::Creator),
        "serve_persistent" => serve(&name, Lifetime::Persistent),
        "open_close" => {
            // Dies at the crash point that ULTRADICT_CRASH_AT names, if it reaches it.
            let d = open(&name);
            d.insert(7, 7).unwrap();
            report("opened");
            d.close().unwrap();
            report("closed");
        }
        "sleep_in_wait" => {
            let d = open(&name);
            report("waiting");
            d.wait_for_change(Duration::from_secs(600)).unwrap();
        }
        "churn" => churn(&name),
        "group_member" => group_member(&name),
        "close_then_open_again" => {
            let d = open(&name);
            d.nested::<u32, u64>(&1).unwrap().insert(1, 1).unwrap();
            report("attached");
            let mut line = String::new();
            std::io::stdin().read_line(&mut line).unwrap();
            report(format!("closed: {:?}", d.close().map(|c| c.len())));
            let again = Dict::builder().name(&name).create(Create::New).open();
            report(format!(
                "created again: {:?}",
                again.map(|d| d.len().unwrap())
            ));
        }
        "fork_then_die" => fork_then_die(&name),
        "lock_fork_and_die" => lock_fork_and_die(&name),
        "fork_two_lockers" => fork_two_lockers(&name),
        "fork_while_opening" => fork_while_opening(&name),
        "fork_in_a_handler_while_opening" => fork_in_a_handler_while_opening(&name),
        "fork_in_a_handler_child_goes_on" => fork_in_a_handler_child_goes_on(&name),
        "open_outer" => {
            let opened = Outer::builder()
                .name(&name)
                .create(Create::Open)
                .open_timeout(Duration::from_secs(10))
                .open();
            report(format!("opened: {:?}", opened.err()));
        }
        "cleanup_in" => {
            let removed = ultradict::cleanup_in(arg("DIR"), false).unwrap();
            report(format!("cleaned {removed:?}"));
        }
        other => panic!("unknown role {other}"),
    }
}

fn serve(name: &str, lifetime: Lifetime) {
    let d: Dict = UltraDict::builder()
        .name(name)
        .lifetime(lifetime)
        .open()
        .unwrap();
    report(format!("attached {}", std::process::id()));
    let mut guard = None;
    for line in std::io::stdin().lock().lines() {
        match line.unwrap().as_str() {
            "lock" => {
                guard = Some(d.lock().unwrap());
                report("locked");
            }
            "write" => {
                d.insert(1, 1).unwrap();
                report("written");
            }
            "dump" => {
                d.dump().unwrap();
                report("dumped");
            }
            "close" => break,
            other => panic!("unknown request {other}"),
        }
    }
    drop(guard);
    let contents = d.close().unwrap();
    report(format!("closed {}", contents.len()));
}

// ---------------------------------------------------------------- A. PID namespaces

#[test]
fn a_live_holder_in_another_pid_namespace_keeps_the_lock_and_a_dead_one_is_recovered() {
    let name = unique_name("ns-lock");
    let d = open(&name);
    let mut child = Spawn::test_in_pid_namespace("child_entry", "serve")
        .env("NAME", &name)
        .start();
    let attached = child.wait_for_report("attached", WATCHDOG);
    assert_eq!(
        attached, "attached 1",
        "the child is pid 1 of its own namespace"
    );
    child.request("lock", WATCHDOG);
    // Pid 1 exists here too (init): a pid-based liveness check would be fooled both ways.
    assert!(matches!(d.try_lock(), Err(Error::WouldBlock { .. })));
    for _ in 0..5 {
        let waited = d.lock_timeout(Duration::from_millis(60));
        assert!(matches!(waited, Err(Error::LockTimeout { .. })), "robbed");
    }
    let holder = d.status().lock_holder.expect("held");
    assert!(!holder.same_pid_namespace, "{holder:?}");
    assert_eq!(d.status().lock_recoveries, 0);
    child.kill();
    let _guard = d.lock().unwrap();
    assert_eq!(d.status().lock_recoveries, 1);
    d.insert(2, 2).unwrap();
    drop(_guard);
    drop(d);
    assert_no_segments(&name);
}

#[test]
fn closing_in_either_pid_namespace_leaves_the_dict_to_the_other() {
    // The child in its namespace outlives this process's handle...
    let name = unique_name("ns-close");
    let d = open(&name);
    let mut child = attached_in_pid_namespace("serve", &name);
    child.request("write", WATCHDOG);
    assert_eq!(d.status().attached_pids.len(), 2);
    d.close().unwrap();
    assert!(!shm_objects(&name).is_empty(), "the child still uses it");
    assert_eq!(child.request("close", WATCHDOG), "closed 1");
    child.wait(WATCHDOG);
    assert_no_segments(&name);

    // ...and this process outlives the child's.
    let name = unique_name("ns-close");
    let mut child = attached_in_pid_namespace("serve", &name);
    let d = open(&name);
    child.request("close", WATCHDOG);
    child.wait(WATCHDOG);
    d.insert(3, 3).unwrap();
    assert_eq!(d.get(&3).unwrap(), Some(3));
    drop(d);
    assert_no_segments(&name);
}

#[test]
fn every_lifetime_holds_across_pid_namespaces() {
    // Creator: the creator's close removes it, whoever else is attached.
    let name = unique_name("ns-creator");
    let mut creator = attached_in_pid_namespace("serve_creator", &name);
    let other = open(&name);
    creator.request("close", WATCHDOG);
    creator.wait(WATCHDOG);
    assert_no_segments(&name);
    assert!(other.status().removed);
    drop(other);
    assert_no_segments(&name);

    // Persistent: stays after its creator in another namespace closed.
    let name = unique_name("ns-persistent");
    let mut creator = attached_in_pid_namespace("serve_persistent", &name);
    creator.request("write", WATCHDOG);
    creator.request("close", WATCHDOG);
    creator.wait(WATCHDOG);
    assert!(!shm_objects(&name).is_empty());
    assert!(!ultradict::cleanup(true).unwrap().contains(&name));
    assert_eq!(open(&name).get(&1).unwrap(), Some(1));
    Dict::unlink_by_name(&name).unwrap();
    assert_no_segments(&name);
}

#[test]
fn cleanup_leaves_dicts_in_use_in_other_pid_namespaces_alone() {
    let name = unique_name("ns-cleanup");
    let child = attached_in_pid_namespace("serve", &name);
    let info = ultradict::inspect(&name).unwrap();
    assert_eq!(info.attached_count, 1);
    assert!(!info.orphaned(), "{info:?}");
    assert!(!ultradict::cleanup(true).unwrap().contains(&name));
    assert!(!ultradict::cleanup(false).unwrap().contains(&name));
    assert!(!shm_objects(&name).is_empty());
    child.kill();
    // Its lock on its slot went with it: now nobody will remove the dict but cleanup.
    let removed = wait_until(|| {
        let _ = ultradict::cleanup(false).unwrap();
        shm_objects(&name).is_empty()
    });
    assert!(removed, "left: {:?}", shm_objects(&name));
}

/// Polls `condition` (each poll may have side effects) until it holds or the watchdog ends.
fn wait_until(mut condition: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + WATCHDOG;
    while std::time::Instant::now() < deadline {
        if condition() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

// ---------------------------------------------------------------- B. kills at every step

/// Runs `open_close` in a child that SIGKILLs itself at `point`.
fn crash_at(name: &str, point: &str) {
    let mut child = Spawn::test("child_entry", "open_close")
        .env("NAME", name)
        .raw_env("ULTRADICT_CRASH_AT", point)
        .start();
    let (status, output) = child.finish(WATCHDOG);
    assert_killed_at(status, point, &output);
}

/// Fails unless the child died from the SIGKILL of its crash point (not from a panic).
fn assert_killed_at(status: std::process::ExitStatus, point: &str, output: &str) {
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        status.signal(),
        Some(libc::SIGKILL),
        "never reached {point} ({status}):\n{output}"
    );
}

#[test]
fn a_creator_killed_half_way_leaves_nothing_that_blocks_the_name() {
    for point in ["create-pending", "create-ready"] {
        let name = unique_name("kill-create");
        crash_at(&name, point);
        // Nothing half made has the name: an opener creates the dict at once.
        let d: Dict = UltraDict::builder()
            .name(&name)
            .create(Create::New)
            .open()
            .unwrap();
        assert_eq!(d.len().unwrap(), 0, "{point}");
        // The dead creator's private object went with the new creation.
        assert_eq!(
            shm_objects(&name).len(),
            1,
            "{point}: {:?}",
            shm_objects(&name)
        );
        drop(d);
        assert_no_segments(&name);
    }
}

#[test]
fn a_process_killed_while_attaching_does_not_keep_the_dict_alive() {
    let name = unique_name("kill-attach");
    let d = open(&name);
    crash_at(&name, "attach-claimed");
    assert_eq!(d.status().attached_pids, vec![std::process::id()]);
    drop(d);
    assert_no_segments(&name);
}

#[test]
fn a_last_closer_killed_before_removing_leaves_a_dict_that_the_next_close_or_cleanup_ends() {
    for finish_with_cleanup in [false, true] {
        let name = unique_name("kill-detach");
        let mut child = Spawn::test("child_entry", "serve")
            .env("NAME", &name)
            .raw_env("ULTRADICT_CRASH_AT", "detach-released")
            .start();
        child.wait_for_report("attached", WATCHDOG);
        child.request("write", WATCHDOG);
        child.send("close");
        let (status, output) = child.finish(WATCHDOG);
        assert_killed_at(status, "detach-released", &output);
        let info = ultradict::inspect(&name).unwrap();
        assert!(info.orphaned(), "{info:?}");
        if finish_with_cleanup {
            // (Other tests may run cleanup at the same time: judge by what is left.)
            let _ = ultradict::cleanup(false).unwrap();
        } else {
            let d = open(&name);
            assert_eq!(d.get(&1).unwrap(), Some(1), "nothing was lost");
            drop(d);
        }
        assert_no_segments(&name);
    }
}

#[test]
fn a_remover_killed_half_way_is_finished_by_the_next_opener() {
    let name = unique_name("kill-remove");
    let creator: Dict = UltraDict::builder()
        .name(&name)
        .buffer_size(256)
        .open()
        .unwrap();
    for i in 0..20 {
        creator.insert(i, u64::from(i)).unwrap(); // a dump or two to remove
    }
    let nested = creator.nested::<u32, u64>(&5u32).unwrap();
    nested.insert(1, 1).unwrap();
    drop(nested);
    let mut child = Spawn::test("child_entry", "serve")
        .env("NAME", &name)
        .raw_env("ULTRADICT_CRASH_AT", "removing")
        .start();
    child.wait_for_report("attached", WATCHDOG);
    drop(creator);
    child.send("close");
    let (status, _) = child.finish(WATCHDOG);
    assert!(
        !status.success(),
        "the child was the last closer and died removing"
    );
    assert!(ultradict::inspect(&name).unwrap().removing);
    // The next opener finishes the removal (no waiting out its timeout) and starts afresh.
    let d: Dict = UltraDict::builder()
        .name(&name)
        .open_timeout(Duration::from_secs(30))
        .open()
        .unwrap();
    assert_eq!(d.len().unwrap(), 0);
    drop(d);
    assert_no_segments(&name);
}

#[test]
fn a_process_stopped_holding_the_gate_delays_others_but_never_hangs_them() {
    let name = unique_name("stop-gate");
    let d = open(&name);
    d.insert(1, 1).unwrap();
    // A child that stops (SIGSTOP) right after taking its slot, with the gate held.
    let mut child = Spawn::test("child_entry", "open_close")
        .env("NAME", &name)
        .raw_env("ULTRADICT_CRASH_AT", "attach-claimed")
        .raw_env("ULTRADICT_CRASH_SIGNAL", "STOP")
        .start();
    let pid = child.pid() as libc::pid_t;
    assert!(
        wait_until(|| stopped(pid)),
        "the child stopped at its point"
    );
    // Opening waits for the gate only as long as its open_timeout, then says so.
    let busy = Dict::builder()
        .name(&name)
        .open_timeout(Duration::from_millis(300))
        .open();
    assert!(matches!(busy, Err(Error::NotReady { .. })), "{busy:?}");
    // Reads and writes through a handle already open do not need the gate.
    d.insert(2, 2).unwrap();
    assert_eq!(d.get(&1).unwrap(), Some(1));
    // Once the child runs again, it finishes attaching, writes and closes; so do we, and the
    // last close removes everything.
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    child.wait_for_report("closed", WATCHDOG);
    child.wait(WATCHDOG);
    assert_eq!(d.get(&7).unwrap(), Some(7), "the child's write");
    drop(d);
    assert_no_segments(&name);
}

/// A creator that has not locked its pending object yet looks dead to another opener, which
/// sweeps dead creations before creating the dict itself. If that creator was alive and wins
/// (renames its object into the dict's name, then writes a full dump) before the sweeper takes
/// what it judged, the sweeper must leave the now-live dict's dumps alone: it used to unlink
/// them, and every later open of the dict failed with NotFound on its dump.
#[test]
fn a_sweeper_leaves_alone_a_creation_it_judged_dead_that_then_won() {
    let name = unique_name("sweep-race");
    let stopped_at = |point: &str| {
        let child = Spawn::test("child_entry", "serve")
            .env("NAME", &name)
            .raw_env("ULTRADICT_CRASH_AT", point)
            .raw_env("ULTRADICT_CRASH_SIGNAL", "STOP")
            .start();
        let pid = child.pid() as libc::pid_t;
        assert!(wait_until(|| stopped(pid)), "stopped at {point}");
        child
    };
    // The creator stops with its pending object made, not locked; the sweeper stops having
    // judged it dead.
    let mut creator = stopped_at("create-unlocked");
    let mut sweeper = stopped_at("sweep-judged");
    // SAFETY: signalling our own children.
    unsafe { libc::kill(creator.pid() as libc::pid_t, libc::SIGCONT) };
    creator.wait_for_report("attached", WATCHDOG);
    creator.request("write", WATCHDOG);
    creator.request("dump", WATCHDOG);
    // SAFETY: as above.
    unsafe { libc::kill(sweeper.pid() as libc::pid_t, libc::SIGCONT) };
    // The sweeper finds the name taken and attaches to the creator's dict.
    sweeper.wait_for_report("attached", WATCHDOG);
    let d = open(&name);
    assert_eq!(d.get(&1).unwrap(), Some(1));
    for mut child in [creator, sweeper] {
        child.send("close");
        child.wait_for_report("closed", WATCHDOG);
        child.wait(WATCHDOG);
    }
    drop(d);
    assert_no_segments(&name);
}

/// `cleanup` that finds objects under a name with no control segment takes them for leftovers;
/// if a dict gets the name before it acts, the dict and its dumps are not leftovers. It used to
/// remove that dict unmarked (its creator's handle went on alone: split brain) and unlink
/// its dumps; only the true leftovers must go.
#[test]
fn cleanup_leaves_alone_a_dict_created_under_a_name_it_judged_left_over() {
    let dir = std::env::temp_dir().join(unique_name("cleanup-race-dir"));
    std::fs::create_dir(&dir).unwrap();
    let name = unique_name("cleanup-race");
    // A dump of an instance that is gone: a leftover.
    let stray = dir.join(format!("ultradict.{name}~dump.0badf00d.1"));
    std::fs::write(&stray, [0u8; 64]).unwrap();
    let mut cleaner = Spawn::test("child_entry", "cleanup_in")
        .env("NAME", &name)
        .env("DIR", dir.display())
        .raw_env("ULTRADICT_CRASH_AT", "cleanup-judged")
        .raw_env("ULTRADICT_CRASH_SIGNAL", "STOP")
        .start();
    let pid = cleaner.pid() as libc::pid_t;
    assert!(wait_until(|| stopped(pid)), "stopped at cleanup-judged");
    let d: Dict = UltraDict::builder()
        .name(&name)
        .directory(&dir)
        .buffer_size(1024)
        .open()
        .unwrap();
    for key in 0..100 {
        d.insert(key, 1).unwrap(); // through full dumps
    }
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    cleaner.wait_for_report("cleaned", WATCHDOG);
    cleaner.wait(WATCHDOG);
    assert!(!stray.exists(), "the true leftover went");
    assert!(!d.status().removed, "the new dict was not removed");
    let other: Dict = UltraDict::builder()
        .name(&name)
        .directory(&dir)
        .create(Create::Open)
        .open()
        .unwrap();
    assert_eq!(other.get(&99).unwrap(), Some(1), "its dumps are there");
    drop((d, other));
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
    std::fs::remove_dir(&dir).unwrap();
}

/// What is left under a name whose control segment is gone (here unlinked by hand, of a
/// persistent dict) goes with `cleanup`: the dict's dumps, a dump of a long gone instance, its
/// register and its nested dicts, whatever their lifetime, but a nested dict still open
/// stays until its last handle closes.
#[test]
fn cleanup_takes_what_is_left_under_a_name_with_no_control_segment() {
    let dir = std::env::temp_dir().join(unique_name("leftovers-dir"));
    std::fs::create_dir(&dir).unwrap();
    let name = unique_name("leftovers");
    let d: Dict = UltraDict::builder()
        .name(&name)
        .directory(&dir)
        .lifetime(Lifetime::Persistent)
        .buffer_size(1024)
        .open()
        .unwrap();
    for key in 0..100 {
        d.insert(key, 1).unwrap(); // through full dumps
    }
    let kept = d.nested::<u32, u64>(&1).unwrap();
    kept.insert(1, 1).unwrap();
    d.nested::<u32, u64>(&2).unwrap().insert(2, 2).unwrap();
    drop(d);
    std::fs::write(
        dir.join(format!("ultradict.{name}~dump.0badf00d.1")),
        [0u8; 64],
    )
    .unwrap();
    std::fs::remove_file(dir.join(format!("ultradict.{name}"))).unwrap();
    let objects = || -> Vec<String> {
        let mut all: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        all.sort();
        all
    };

    // Not reported: a nested dict of the name is still in use.
    assert_eq!(
        ultradict::cleanup_in(&dir, false).unwrap(),
        Vec::<String>::new()
    );
    let kept_prefix = format!("ultradict.{}", kept.name());
    let left = objects();
    assert!(!left.is_empty());
    assert!(
        left.iter().all(|o| o.starts_with(&kept_prefix)),
        "only the open nested dict is left: {left:?}"
    );
    kept.insert(3, 3).unwrap();
    assert!(!kept.status().removed);
    drop(kept);
    assert_eq!(
        ultradict::cleanup_in(&dir, false).unwrap(),
        vec![name.clone()]
    );
    assert_eq!(objects(), Vec::<String>::new());
    std::fs::remove_dir(&dir).unwrap();
}

/// A writer killed after publishing a new epoch and before waking the sleepers
/// (`epoch-published`) still ends the wait of another process's `wait_for_change`: sleeps are
/// cut into short ones that look at the state again. It used to sleep out its whole timeout.
#[test]
fn a_sleeper_sees_the_change_of_a_writer_that_died_before_waking_it() {
    use std::time::Instant;
    let name = unique_name("dead-waker");
    let d = open(&name);
    let mut child = Spawn::test("child_entry", "serve")
        .env("NAME", &name)
        .raw_env("ULTRADICT_CRASH_AT", "epoch-published")
        .start();
    child.wait_for_report("attached", WATCHDOG);
    std::thread::scope(|scope| {
        let waiter = scope.spawn(|| {
            let started = Instant::now();
            let changed = d.wait_for_change(Duration::from_secs(30)).unwrap();
            (changed, started.elapsed())
        });
        std::thread::sleep(Duration::from_millis(200)); // asleep by now
        child.send("dump");
        let (changed, waited) = waiter.join().unwrap();
        assert!(changed);
        assert!(waited < Duration::from_secs(10), "woke after {waited:?}");
    });
    let (status, output) = child.finish(WATCHDOG);
    assert_killed_at(status, "epoch-published", &output);
    assert_eq!(d.status().epoch, 1, "the dead writer's epoch stands");
    drop(d);
    assert_no_segments(&name);
}

/// A waiter for the lock whose sleeps are cut short by signals again and again (a profiler's
/// SIGPROF, a timer's SIGALRM) still notices that the holder died: it asked only after a
/// sleep that ran out, which then never came, and waited out its whole timeout.
#[test]
fn a_lock_waiter_hit_by_signals_still_recovers_a_dead_holders_lock() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::time::Instant;
    extern "C" fn ignore(_: libc::c_int) {}
    // SAFETY: installs a handler that does nothing, for a signal nothing else here uses.
    unsafe { libc::signal(libc::SIGUSR1, ignore as *const () as libc::sighandler_t) };
    let name = unique_name("signalled-waiter");
    let d = open(&name);
    let mut child = Spawn::test("child_entry", "serve")
        .env("NAME", &name)
        .start();
    child.wait_for_report("attached", WATCHDOG);
    child.request("lock", WATCHDOG);
    let (done, stopped) = (AtomicBool::new(false), AtomicBool::new(false));
    let waiter_thread = AtomicU64::new(0);
    std::thread::scope(|scope| {
        let waiter = scope.spawn(|| {
            // SAFETY: pthread_self has no preconditions.
            waiter_thread.store(unsafe { libc::pthread_self() }, Ordering::Release);
            let started = Instant::now();
            let locked = d.lock_timeout(Duration::from_secs(8)).map(drop);
            let waited = started.elapsed();
            done.store(true, Ordering::Relaxed);
            // Alive until the signaller stopped (it signals this very thread).
            while !stopped.load(Ordering::Acquire) {
                std::thread::yield_now();
            }
            (locked, waited)
        });
        scope.spawn(|| {
            let target = loop {
                match waiter_thread.load(Ordering::Acquire) {
                    0 => std::thread::yield_now(),
                    thread => break thread,
                }
            };
            while !done.load(Ordering::Relaxed) {
                // SAFETY: the waiter thread lives until this loop has stopped.
                unsafe { libc::pthread_kill(target, libc::SIGUSR1) };
                std::thread::sleep(Duration::from_millis(10));
            }
            stopped.store(true, Ordering::Release);
        });
        std::thread::sleep(Duration::from_millis(200)); // asleep, and signalled, by now
        child.kill();
        let (locked, waited) = waiter.join().unwrap();
        assert!(locked.is_ok(), "{locked:?}");
        assert!(
            waited < Duration::from_secs(4),
            "got the lock after {waited:?}"
        );
    });
    assert_eq!(d.status().lock_recoveries, 1);
    drop(d);
    assert_no_segments(&name);
}

/// Whether process `pid` is stopped (state `T` in /proc).
fn stopped(pid: libc::pid_t) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            stat.rfind(')')
                .map(|at| stat[at + 1..].trim_start().starts_with('T'))
        })
        .unwrap_or(false)
}

#[test]
fn a_sleeper_killed_in_its_sleep_stops_counting() {
    let name = unique_name("kill-wait");
    let d = open(&name);
    let mut child = Spawn::test("child_entry", "sleep_in_wait")
        .env("NAME", &name)
        .start();
    child.wait_for_report("waiting", WATCHDOG);
    assert!(wait_until(|| d.status().sleepers == 1));
    assert_eq!(ultradict::inspect(&name).unwrap().sleepers, 1);
    child.kill();
    assert_eq!(d.status().sleepers, 0);
    // The sleepers flag it left costs one wake-up at most: commits go on as before.
    d.insert(1, 1).unwrap();
    d.insert(2, 2).unwrap();
    assert!(!d.wait_for_change(Duration::from_millis(1)).unwrap());
    drop(d);
    assert_no_segments(&name);
}

/// Opens, writes, nests, watches and closes until a stop file appears, then opens and closes
/// once more and exits.
fn churn(name: &str) {
    let stop = arg("STOP");
    let mut round = 0u64;
    while !std::path::Path::new(&stop).exists() {
        let opened = UltraDict::builder()
            .name(name)
            .buffer_size(1024)
            .open_timeout(Duration::from_secs(20))
            .open();
        // Said on stdout too, which the parent shows when this child fails.
        let d: Dict = opened.unwrap_or_else(|err| {
            report(format!("open failed in round {round}: {err:?}"));
            panic!("open failed: {err:?}")
        });
        d.update(&0, |n| n.unwrap_or(0) + 1).unwrap();
        d.insert((round % 50) as u32 + 1, round).unwrap();
        if round.is_multiple_of(3) {
            let child = d.nested::<u32, u64>(&((round % 4) as u32)).unwrap();
            child.insert(1, round).unwrap();
        }
        if round.is_multiple_of(5) {
            d.dump().unwrap();
        }
        let _ = d.wait_for_change(Duration::from_micros(200)).unwrap();
        d.close().unwrap();
        round += 1;
    }
    drop(open(name));
    report(format!("rounds {round}"));
}

#[test]
fn kill_churn_leaves_nothing_once_the_survivors_close() {
    let name = unique_name("churn");
    let stop = format!(
        "{}/ultradict-churn-{}",
        std::env::temp_dir().display(),
        name
    );
    let spawn = || {
        Spawn::test("child_entry", "churn")
            .env("NAME", &name)
            .env("STOP", &stop)
            .start()
    };
    let mut workers: Vec<_> = (0..4).map(|_| spawn()).collect();
    let mut seed = 0x9E37_79B9_7F4A_7C15u64 ^ u64::from(std::process::id());
    let mut kills = 0;
    for _ in 0..60 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        std::thread::sleep(Duration::from_micros(seed % 40_000));
        let victim = (seed >> 20) as usize % workers.len();
        workers.swap_remove(victim).kill();
        kills += 1;
        workers.push(spawn());
    }
    std::fs::write(&stop, b"stop").unwrap();
    for worker in workers {
        worker.wait(WATCHDOG);
    }
    let _ = std::fs::remove_file(&stop);
    assert_eq!(kills, 60);
    assert_no_segments(&name);
}

// ---------------------------------------------------------------- C. no leaks, right answers

#[test]
fn handles_of_a_removed_dict_create_nothing() {
    // Creator lifetime: another handle's later dump is refused, and leaves nothing.
    let name = unique_name("removed-creator");
    let creator: Dict = UltraDict::builder()
        .name(&name)
        .lifetime(Lifetime::Creator)
        .buffer_size(256)
        .open()
        .unwrap();
    let other = open(&name);
    drop(creator);
    assert_no_segments(&name);
    other.insert(1, 1).unwrap(); // the stream still takes it
    assert!(matches!(other.dump(), Err(Error::Removed { .. })));
    let refused = (0..100).find_map(|i| other.insert(i, 0).err());
    assert!(
        matches!(refused, Some(Error::Removed { .. })),
        "{refused:?}"
    );
    assert_no_segments(&name);
    drop(other);
    assert_no_segments(&name);

    // dump() and nested() on a handle whose dict another handle unlinked.
    let name = unique_name("removed-unlink");
    let a = open(&name);
    let b = open(&name);
    a.unlink().unwrap();
    assert!(matches!(b.dump(), Err(Error::Removed { .. })));
    assert!(matches!(
        b.nested::<u32, u64>(&1u32),
        Err(Error::Removed { .. })
    ));
    assert_no_segments(&name);
    drop((a, b));
    assert_no_segments(&name);
}

#[test]
fn a_nested_dict_keeps_its_root_attached() {
    let name = unique_name("nested-root");
    let jobs = open(&name).nested::<String, u64>(&1u32).unwrap();
    jobs.insert("done".into(), 1).unwrap();
    let again = open(&name).nested::<String, u64>(&1u32).unwrap();
    assert_eq!(again.get("done").unwrap(), Some(1), "the same dict");
    // A child that writes (and dumps) after its root's handle closed: still part of the tree.
    let root = open(&name);
    let child = root.nested::<String, u64>(&2u32).unwrap();
    root.close().unwrap();
    child.insert("late".into(), 1).unwrap();
    child.dump().unwrap();
    drop((jobs, again, child));
    assert_no_segments(&name);
}

// ---------------------------------------------------------------- D. fork

#[test]
fn a_guard_copied_into_a_forked_child_releases_nothing() {
    let name = unique_name("fork-guard");
    let handle = open(&name);
    let d = &handle;
    let guard = d.lock().unwrap();
    let child = fork(move || {
        // The parent drops its own guard after the fork; the copy here is the child's.
        let own = d.lock().unwrap();
        drop(guard);
        let grandchild = fork(|| match d.try_lock() {
            Err(Error::WouldBlock { .. }) => 0,
            _ => 1,
        });
        let blocked = wait_forked(grandchild, WATCHDOG);
        drop(own);
        let grandchild = fork(|| i32::from(d.try_lock().is_err()));
        let free = wait_forked(grandchild, WATCHDOG);
        i32::from(blocked != 0) * 10 + free
    });
    assert_eq!(wait_forked(child, WATCHDOG), 0);
    d.insert(1, 1).unwrap();
    drop(handle);
    assert_no_segments(&name);
}

#[test]
fn a_forked_child_that_dies_holding_the_lock_is_recovered() {
    let name = unique_name("fork-die");
    let handle = open(&name);
    let d = &handle;
    let child = fork(move || {
        let _guard = d.lock().unwrap();
        d.insert(1, 1).unwrap();
        // SAFETY: killing ourselves; no state is left to tidy.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
        0
    });
    let mut status = 0;
    // SAFETY: reaping our own child with a valid out-pointer.
    unsafe { libc::waitpid(child, &mut status, 0) };
    assert!(libc::WIFSIGNALED(status));
    let _guard = d.lock().unwrap();
    assert_eq!(d.get(&1).unwrap(), Some(1));
    assert_eq!(d.status().lock_recoveries, 1);
    drop(_guard);
    drop(handle);
    assert_no_segments(&name);
}

fn fork_then_die(name: &str) {
    let d = open(name);
    d.insert(1, 1).unwrap();
    // SAFETY: getpid has no preconditions.
    let parent = unsafe { libc::getpid() };
    // SAFETY: the child only uses its copy of `d` and then `_exit`s; it never returns into the
    // test harness.
    if unsafe { libc::fork() } == 0 {
        // SAFETY: kill(pid, 0) only checks that the process exists.
        while unsafe { libc::kill(parent, 0) } == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        let code = match d.insert(2, 2).and_then(|_| d.close()) {
            Ok(contents) if contents.len() == 2 => 0,
            _ => 1,
        };
        // SAFETY: ends the forked child at once.
        unsafe { libc::_exit(code) };
    }
    // SAFETY: killing ourselves, as a crash would; the handle is never closed here.
    unsafe { libc::kill(parent, libc::SIGKILL) };
}

/// A pipe: (read end, write end).
fn pipe() -> (libc::c_int, libc::c_int) {
    let mut ends = [0; 2];
    // SAFETY: `ends` has room for the two descriptors pipe writes.
    assert_eq!(unsafe { libc::pipe(ends.as_mut_ptr()) }, 0);
    (ends[0], ends[1])
}

/// Writes a byte to the write end `fd` of a pipe.
fn signal(fd: libc::c_int) {
    // SAFETY: writes one byte from a valid buffer.
    assert_eq!(unsafe { libc::write(fd, [1u8].as_ptr().cast(), 1) }, 1);
}

/// Waits for a byte on the read end `fd` of a pipe.
fn wait_for_signal(fd: libc::c_int) {
    let mut byte = [0u8];
    // SAFETY: reads at most one byte into a valid buffer.
    assert_eq!(unsafe { libc::read(fd, byte.as_mut_ptr().cast(), 1) }, 1);
}

/// A handle copied into a forked child that has only read there: its parent's close, the last
/// as far as the parent could tell, removed the dict under the child, whose next write failed
/// with `Removed`. The copy now takes a slot of its own at its first read.
#[test]
fn a_forked_child_that_only_read_keeps_the_dict_past_its_parents_close() {
    let name = unique_name("fork-reader");
    let d = open(&name);
    d.insert(1, 1).unwrap();
    let (read, parent_closed) = (pipe(), pipe());
    let child = fork(|| {
        if !matches!(d.get(&1), Ok(Some(1))) {
            return 2;
        }
        signal(read.1);
        wait_for_signal(parent_closed.0);
        if d.insert(2, 2).is_err() {
            return 3;
        }
        // SAFETY: this process's copy of `d` is never used or dropped again: the child
        // `_exit`s after the body, running no destructor.
        let own = unsafe { std::ptr::read(&d) };
        match own.close() {
            Ok(contents) if contents.len() == 2 => 0,
            _ => 4,
        }
    });
    wait_for_signal(read.0);
    d.close().unwrap();
    let left = shm_objects(&name);
    signal(parent_closed.1);
    assert_eq!(wait_forked(child, WATCHDOG), 0);
    assert!(!left.is_empty(), "removed under the child");
    assert_all_gone(&name);
}

/// Forks a child that sleeps for a minute, keeping what the fork copied (the parent's mapping
/// of a dict, say) and nothing else: not even the output the test reads to its end.
fn fork_sleeper() -> libc::pid_t {
    // SAFETY: the child only sleeps and then `_exit`s; it never returns into the harness.
    let child = unsafe { libc::fork() };
    if child == 0 {
        // SAFETY: closing this process's own standard descriptors.
        unsafe {
            libc::close(1);
            libc::close(2);
        }
        std::thread::sleep(Duration::from_secs(60));
        // SAFETY: ends the forked child at once.
        unsafe { libc::_exit(0) };
    }
    child
}

fn lock_fork_and_die(name: &str) {
    let d = open(name);
    let _guard = d.lock().unwrap();
    // SAFETY: getpid has no preconditions.
    let parent = unsafe { libc::getpid() };
    report(format!("grandchild {}", fork_sleeper()));
    // SAFETY: killing ourselves while holding the lock, as a crash would.
    unsafe { libc::kill(parent, libc::SIGKILL) };
}

/// In a forked child, the first lock through the copied handle takes a slot of its own; it
/// sleeps at `fork-tagged` (the slot is the child's by then) while a second thread takes the
/// lock through that slot and holds it. The first must then wait for the second: it used to
/// "recover" the lock of its new slot after tagging it, robbing the second's live hold.
fn fork_two_lockers(name: &str) {
    use std::time::Instant;
    let d = open(name);
    d.insert(0, 0).unwrap();
    let pid = fork(|| {
        std::thread::scope(|scope| {
            let first = scope.spawn(|| {
                let guard = d.lock().unwrap();
                let got = Instant::now();
                drop(guard);
                got
            });
            let second = scope.spawn(|| {
                std::thread::sleep(Duration::from_millis(100));
                let guard = d.lock().unwrap();
                std::thread::sleep(Duration::from_millis(600));
                let released = Instant::now();
                drop(guard);
                released
            });
            let got = first.join().unwrap();
            let released = second.join().unwrap();
            let recoveries = d.status().lock_recoveries;
            i32::from(got < released) + 2 * i32::from(recoveries != 0)
        })
    });
    report(format!(
        "forked child exited {}",
        wait_forked(pid, WATCHDOG)
    ));
}

#[test]
fn a_forked_childs_first_lock_never_robs_another_of_its_threads() {
    let name = unique_name("fork-two-lockers");
    let d = open(&name);
    let mut child = Spawn::test("child_entry", "fork_two_lockers")
        .env("NAME", &name)
        .raw_env("ULTRADICT_CRASH_AT", "fork-tagged")
        .raw_env("ULTRADICT_CRASH_SIGNAL", "SLEEP")
        .raw_env("ULTRADICT_CRASH_SLEEP_MS", 300)
        .start();
    // 1: the first thread had the lock while the second held it; 2: a recovery was counted.
    let exited = child.wait_for_report("forked child exited", WATCHDOG);
    assert_eq!(exited, "forked child exited 0");
    child.wait(WATCHDOG);
    assert_eq!(d.status().lock_recoveries, 0);
    drop(d);
    assert_no_segments(&name);
}

/// The pid of the grandchild that `child` forked and reported, once `child` killed itself.
fn grandchild_of_a_suicide(mut child: Running) -> libc::pid_t {
    let grandchild = child
        .wait_for_report("grandchild", WATCHDOG)
        .trim_start_matches("grandchild ")
        .parse()
        .unwrap();
    let (status, output) = child.finish(WATCHDOG);
    assert_killed_at(status, "its own kill", &output);
    grandchild
}

/// Waits (under the watchdog) until nothing of dict `name` is left in /dev/shm.
fn assert_all_gone(name: &str) {
    assert!(
        wait_until(|| shm_objects(name).is_empty()),
        "left: {:?}",
        shm_objects(name)
    );
}

#[test]
fn a_dead_holder_whose_forked_child_lives_on_is_still_dead() {
    // The child inherits the parent's mapping of the dict; that must not keep the dead
    // parent's slot (and so its lock) looking alive.
    let name = unique_name("fork-holder");
    let child = Spawn::test("child_entry", "lock_fork_and_die")
        .env("NAME", &name)
        .start();
    let grandchild = grandchild_of_a_suicide(child);
    let d = open(&name);
    let recovered = d.lock_timeout(Duration::from_secs(10)).map(drop);
    // SAFETY: the grandchild is ours to end; kill has no memory effects.
    unsafe { libc::kill(grandchild, libc::SIGKILL) };
    recovered.unwrap();
    assert_eq!(d.status().attached_pids, [std::process::id()]);
    drop(d);
    assert_all_gone(&name);
}

/// Opens `name` while another thread forks (the open sleeps at `anchor-opened`, its anchor's
/// description open but not yet registered to be closed in children), takes the lock and
/// dies; the forked child lives on with nothing but what the fork copied.
fn fork_while_opening(name: &str) {
    use std::sync::atomic::{AtomicBool, Ordering};
    // SAFETY: getpid has no preconditions.
    let parent = unsafe { libc::getpid() };
    let opening = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let forker = scope.spawn(|| {
            while !opening.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(1));
            }
            std::thread::sleep(Duration::from_millis(100));
            fork_sleeper()
        });
        opening.store(true, Ordering::SeqCst);
        let d = open(name);
        let _guard = d.lock().unwrap();
        report(format!("grandchild {}", forker.join().unwrap()));
        // SAFETY: killing ourselves while holding the lock, as a crash would.
        unsafe { libc::kill(parent, libc::SIGKILL) };
    });
}

/// A fork while another thread opens a dict must not copy the opener's anchor into the child
/// before the anchor is registered to be closed there: the child would keep the opener's slot,
/// and so its lock, alive after the opener died.
#[test]
fn a_fork_during_an_open_keeps_no_dead_opener_alive() {
    let name = unique_name("fork-opening");
    let d = open(&name);
    let child = Spawn::test("child_entry", "fork_while_opening")
        .env("NAME", &name)
        .raw_env("ULTRADICT_CRASH_AT", "anchor-opened")
        .raw_env("ULTRADICT_CRASH_SIGNAL", "SLEEP")
        .raw_env("ULTRADICT_CRASH_SLEEP_MS", 500)
        .start();
    let grandchild = grandchild_of_a_suicide(child);
    let recovered = d.lock_timeout(Duration::from_secs(5)).map(drop);
    let attached = d.status().attached_pids;
    // SAFETY: the grandchild is ours to end; kill has no memory effects.
    unsafe { libc::kill(grandchild, libc::SIGKILL) };
    recovered.unwrap();
    assert_eq!(attached, [std::process::id()]);
    drop(d);
    assert_all_gone(&name);
}

/// Pid of the child a signal handler forked (0 before it ran, -1 if the fork failed).
static FORKED_IN_HANDLER: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

extern "C" fn fork_and_note(_: libc::c_int) {
    // SAFETY: fork is async-signal-safe; the child only calls _exit, which is too.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: ends the forked child at once, running nothing of the parent's.
        unsafe { libc::_exit(0) };
    }
    FORKED_IN_HANDLER.store(pid, std::sync::atomic::Ordering::SeqCst);
}

/// Opens `name` while SIGUSR1, handled by `handler`, interrupts this very thread's opening
/// (which the caller's environment holds up at `anchor-opened`, SLEEP).
fn open_interrupted_by(name: &str, handler: extern "C" fn(libc::c_int)) -> Dict {
    // SAFETY: the handlers given here only fork and store to an atomic; SA_RESTART so that
    // nothing else of the test sees EINTR.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = handler as *const () as libc::sighandler_t;
        action.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&raw mut action.sa_mask);
        assert_eq!(
            libc::sigaction(libc::SIGUSR1, &action, std::ptr::null_mut()),
            0
        );
    }
    // SAFETY: pthread_self has no preconditions.
    let opener = unsafe { libc::pthread_self() };
    // Not joined: a child forked by the handler has no such thread.
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        // SAFETY: the opener thread is inside `open` for a second yet.
        unsafe { libc::pthread_kill(opener, libc::SIGUSR1) };
    });
    open(name)
}

/// Opens `name` while a signal whose handler forks interrupts this very thread's opening,
/// then writes and closes.
fn fork_in_a_handler_while_opening(name: &str) {
    use std::sync::atomic::Ordering;
    let d = open_interrupted_by(name, fork_and_note);
    d.insert(1, 1).unwrap();
    let forked = FORKED_IN_HANDLER.load(Ordering::SeqCst);
    assert!(forked > 0, "the handler did not fork: {forked}");
    assert_eq!(wait_forked(forked, WATCHDOG), 0);
    report(format!("opened and wrote {}", d.close().unwrap().len()));
}

/// Marks, in [`FORKED_IN_HANDLER`], the child that [`fork_and_go_on`] forked.
const IN_THE_CHILD: i32 = -2;

extern "C" fn fork_and_go_on(_: libc::c_int) {
    // SAFETY: fork is async-signal-safe.
    let pid = unsafe { libc::fork() };
    let noted = if pid == 0 { IN_THE_CHILD } else { pid };
    FORKED_IN_HANDLER.store(noted, std::sync::atomic::Ordering::SeqCst);
}

/// As [`fork_in_a_handler_while_opening`], but the child returns from the handler: its copy of
/// the interrupted opening finishes, and it then opens another dict, writes and closes it.
fn fork_in_a_handler_child_goes_on(name: &str) {
    use std::sync::atomic::Ordering;
    let d = open_interrupted_by(name, fork_and_go_on);
    if FORKED_IN_HANDLER.load(Ordering::SeqCst) == IN_THE_CHILD {
        let second = Dict::builder()
            .name(format!("{name}-second"))
            .open()
            .and_then(|other| other.insert(1, 1).and_then(|_| other.close()));
        // The copy of the parent's opening shares the parent's anchor: left, not closed.
        std::mem::forget(d);
        // SAFETY: ends the forked child at once.
        unsafe { libc::_exit(if second.is_ok() { 0 } else { 3 }) };
    }
    let forked = FORKED_IN_HANDLER.load(Ordering::SeqCst);
    assert!(forked > 0, "the handler did not fork: {forked}");
    report(format!(
        "the child's open: {}",
        wait_forked(forked, Duration::from_secs(20))
    ));
    d.close().unwrap();
}

/// A child forked in a signal handler that returns from it, after the fix above: its count of
/// openings in flight was reset to 0 and then counted the interrupted opening out, wrapping to
/// a value that barred every later open in the child, which spun for good.
#[test]
fn a_child_forked_in_a_signal_handler_that_goes_on_can_open_dicts() {
    let name = unique_name("fork-handler-on");
    let mut child = Spawn::test("child_entry", "fork_in_a_handler_child_goes_on")
        .env("NAME", &name)
        .raw_env("ULTRADICT_CRASH_AT", "anchor-opened")
        .raw_env("ULTRADICT_CRASH_SIGNAL", "SLEEP")
        .raw_env("ULTRADICT_CRASH_SLEEP_MS", 1_000)
        .start();
    let opened = child.wait_for_report("the child's open", WATCHDOG);
    child.wait(WATCHDOG);
    assert_eq!(opened, "the child's open: 0");
    assert_all_gone(&name);
    assert_all_gone(&format!("{name}-second"));
}

/// The first read of a forked child's copy could not take a slot (a process stopped in the
/// gate made it wait out its patience), and the failure was dropped for good: later reads
/// took the fast way and never attached, and the parent's close removed the dict under the
/// child. The next read now tries again.
#[test]
fn a_forked_childs_failed_attach_is_tried_again_at_its_next_read() {
    let name = unique_name("fork-retry");
    let d = open(&name);
    d.insert(1, 1).unwrap();
    let stopper = Spawn::test("child_entry", "open_close")
        .env("NAME", &name)
        .raw_env("ULTRADICT_CRASH_AT", "attach-claimed")
        .raw_env("ULTRADICT_CRASH_SIGNAL", "STOP")
        .start();
    let stopper_pid = stopper.pid() as libc::pid_t;
    assert!(
        wait_until(|| stopped(stopper_pid)),
        "never stopped in the gate"
    );
    let (read, go, parent_closed) = (pipe(), pipe(), pipe());
    let child = fork(|| {
        // Waits out its patience for the gate, then reads without a slot.
        let first = d.get(&1);
        signal(read.1);
        wait_for_signal(go.0);
        let second = d.get(&1);
        signal(read.1);
        wait_for_signal(parent_closed.0);
        if !matches!((first, second), (Ok(Some(1)), Ok(Some(1)))) {
            return 2;
        }
        if d.insert(2, 2).is_err() {
            return 3;
        }
        // SAFETY: this process's copy of `d` is never used or dropped again: the child
        // `_exit`s after the body, running no destructor.
        let own = unsafe { std::ptr::read(&d) };
        match own.close() {
            Ok(contents) if contents.len() == 2 => 0,
            _ => 4,
        }
    });
    wait_for_signal(read.0);
    stopper.kill();
    signal(go.1);
    wait_for_signal(read.0);
    d.close().unwrap();
    let left = shm_objects(&name);
    signal(parent_closed.1);
    assert_eq!(wait_forked(child, WATCHDOG), 0);
    assert!(!left.is_empty(), "removed under the child");
    assert_all_gone(&name);
}

/// A fork in a signal handler that interrupted its own thread's opening of a dict (between the
/// open and the registration that children close it): the fork waited for that opening to end,
/// which it never does while the handler runs, and the process hung.
#[test]
fn a_fork_in_a_signal_handler_during_its_threads_open_does_not_hang() {
    let name = unique_name("fork-handler");
    let mut child = Spawn::test("child_entry", "fork_in_a_handler_while_opening")
        .env("NAME", &name)
        .raw_env("ULTRADICT_CRASH_AT", "anchor-opened")
        .raw_env("ULTRADICT_CRASH_SIGNAL", "SLEEP")
        .raw_env("ULTRADICT_CRASH_SLEEP_MS", 1_000)
        .start();
    let opened = child.wait_for_report("opened and wrote", Duration::from_secs(15));
    assert_eq!(opened, "opened and wrote 1");
    child.wait(WATCHDOG);
    assert_all_gone(&name);
}

/// Objects any user can put under another user's dict name, where its nested dicts would be:
/// a file of a third user (which the dict's owner may not remove from /dev/shm, a sticky
/// directory) and a directory. The last close failed with `PermissionDenied` (or an `Io` error
/// for the directory), left the dict marked removing, and every later open of the name failed
/// the same way. Removal now leaves such objects alone.
#[test]
fn strays_of_other_users_under_a_dicts_name_stop_no_removal() {
    use std::os::unix::fs::PermissionsExt;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        println!("skipped: needs root to start a child as another user");
        return;
    }
    let name = unique_name("strays");
    let mut owner = Spawn::test_under(
        &[
            "setpriv",
            "--reuid=61011",
            "--regid=61011",
            "--clear-groups",
            "--",
        ],
        "child_entry",
        "close_then_open_again",
    )
    .env("NAME", &name)
    .start();
    owner.wait_for_report("attached", WATCHDOG);
    let stray_file = format!("/dev/shm/ultradict.{name}~strayfile");
    std::fs::write(&stray_file, b"not a dict").unwrap();
    std::os::unix::fs::chown(&stray_file, Some(61_012), Some(61_012)).unwrap();
    std::fs::set_permissions(&stray_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let stray_dir = format!("/dev/shm/ultradict.{name}~straydir");
    std::fs::create_dir(&stray_dir).unwrap();
    owner.send("close");
    assert_eq!(owner.wait_for_report("closed", WATCHDOG), "closed: Ok(0)");
    assert_eq!(
        owner.wait_for_report("created again", WATCHDOG),
        "created again: Ok(0)"
    );
    owner.wait(WATCHDOG);
    let mut left = shm_objects(&name);
    left.sort();
    assert_eq!(
        left,
        [
            format!("ultradict.{name}~straydir"),
            format!("ultradict.{name}~strayfile")
        ]
    );
    std::fs::remove_file(&stray_file).unwrap();
    std::fs::remove_dir(&stray_dir).unwrap();
}

/// A name `cleanup` cannot clean (a directory where a dump would be) stopped the whole
/// cleanup: the names after it were never cleaned.
#[test]
fn cleanup_goes_on_past_a_name_it_cannot_clean() {
    let dir = std::path::PathBuf::from(format!(
        "/dev/shm/ultradict-test-cleanup-strays-{}",
        std::process::id()
    ));
    std::fs::create_dir(&dir).unwrap();
    let (first, second) = (unique_name("a-stray"), unique_name("b-orphan"));
    // Under the first name, only a directory named as a dump of a dead instance.
    std::fs::create_dir(dir.join(format!("ultradict.{first}~dump.0badf00d.1"))).unwrap();
    // Under the second, the dumps of a dict whose control segment is gone.
    let d: Dict = UltraDict::builder()
        .name(&second)
        .directory(&dir)
        .lifetime(Lifetime::Persistent)
        .buffer_size(1024)
        .open()
        .unwrap();
    for key in 0..100 {
        d.insert(key, 1).unwrap(); // through full dumps
    }
    drop(d);
    std::fs::remove_file(dir.join(format!("ultradict.{second}"))).unwrap();
    assert_eq!(ultradict::cleanup_in(&dir, false).unwrap(), [second]);
    let left: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(left, [format!("ultradict.{first}~dump.0badf00d.1")]);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A derived state's nested struct field that an opener creates while another process removes
/// the root (the opener held up opening the field's dict, at its second `anchor-opened`) goes
/// with the failed open: it was left in /dev/shm, and a root created again under the name
/// then took it for its own field, with its old values.
#[test]
fn a_nested_field_created_during_its_roots_removal_is_taken_back() {
    let name = unique_name("nested-removal");
    let root = Outer::open(&name).unwrap();
    let mut opener = Spawn::test("child_entry", "open_outer")
        .env("NAME", &name)
        .raw_env("ULTRADICT_CRASH_AT", "anchor-opened")
        .raw_env("ULTRADICT_CRASH_SKIP", 1)
        .raw_env("ULTRADICT_CRASH_SIGNAL", "SLEEP")
        .raw_env("ULTRADICT_CRASH_SLEEP_MS", 1_500)
        .start();
    assert!(
        wait_until(|| root.status().attached_pids.len() == 2),
        "the opener never attached"
    );
    std::thread::sleep(Duration::from_millis(300));
    root.unlink().unwrap();
    let opened = opener.wait_for_report("opened: ", WATCHDOG);
    opener.wait(WATCHDOG);
    drop(root);
    assert!(opened.contains("Removed"), "{opened}");
    assert_eq!(shm_objects(&name), Vec::<String>::new());
}

#[test]
fn a_forked_child_outliving_its_parent_is_the_last_to_close() {
    let name = unique_name("fork-orphan");
    let mut child = Spawn::test("child_entry", "fork_then_die")
        .env("NAME", &name)
        .start();
    let (status, output) = child.finish(WATCHDOG);
    assert_killed_at(status, "its own kill", &output);
    // Its forked child writes, then exits (running destructors: the handle closes); the
    // parent's slot died with the parent, since the child did not keep its descriptor.
    assert_all_gone(&name);
}

// ---------------------------------------------------------------- E. odd objects

#[test]
fn odd_objects_under_the_name_are_errors_not_hangs() {
    let name = unique_name("odd");
    let path = format!("/dev/shm/ultradict.{name}");
    std::os::unix::fs::symlink("/nonexistent/ultradict-target", &path).unwrap();
    for create in [Create::Open, Create::New, Create::OpenOrCreate] {
        let result = Dict::builder()
            .name(&name)
            .create(create)
            .open_timeout(Duration::from_secs(3600))
            .open();
        assert!(matches!(result, Err(Error::Foreign { .. })), "{result:?}");
    }
    Dict::unlink_by_name(&name).unwrap();
    assert_no_segments(&name);

    let fifo = std::ffi::CString::new(path.clone()).unwrap();
    // SAFETY: a valid C string; mkfifo only creates a file.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    for create in [Create::Open, Create::New, Create::OpenOrCreate] {
        let result = Dict::builder()
            .name(&name)
            .create(create)
            .open_timeout(Duration::from_secs(3600))
            .open();
        assert!(matches!(result, Err(Error::Foreign { .. })), "{result:?}");
    }
    assert!(ultradict::inspect(&name).is_err());
    assert!(!ultradict::cleanup(false).unwrap().contains(&name));
    Dict::unlink_by_name(&name).unwrap();
    assert_no_segments(&name);

    // A directory: foreign too (it was an `Io` error), and not ours to remove.
    std::fs::create_dir(&path).unwrap();
    for create in [Create::Open, Create::New, Create::OpenOrCreate] {
        let result = Dict::builder().name(&name).create(create).open();
        assert!(matches!(result, Err(Error::Foreign { .. })), "{result:?}");
    }
    let removed = Dict::unlink_by_name(&name);
    assert!(matches!(removed, Err(Error::Foreign { .. })), "{removed:?}");
    std::fs::remove_dir(&path).unwrap();
}

// ---------------------------------------------------------------- G. sharing with a group

/// The group the users of the group test share, and its users (no entries in /etc/passwd
/// needed: `setpriv` takes numbers).
const GROUP: u32 = 61_000;

/// Opens the dict in directory `DIR` (with mode `MODE` if given) and serves requests:
/// `write`, `nest`, `read`, `close`.
fn group_member(name: &str) {
    let mut builder = Dict::builder()
        .name(name)
        .directory(arg("DIR"))
        .buffer_size(1024);
    if let Ok(mode) = std::env::var("ULTRADICT_TEST_MODE") {
        builder = builder.mode(u32::from_str_radix(&mode, 8).unwrap());
    }
    let d = match builder.open() {
        Ok(d) => d,
        Err(err) => {
            report(format!("refused {err:?}"));
            return;
        }
    };
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    report(format!("attached uid {me}"));
    let me = u64::from(me);
    for line in std::io::stdin().lock().lines() {
        match line.unwrap().as_str() {
            "write" => {
                // Enough records for several full dumps of a 1 KiB stream.
                for key in 0..100 {
                    d.insert(key, me).unwrap();
                }
                report("written");
            }
            "nest" => {
                d.nested::<u32, u64>(&7).unwrap().insert(1, me).unwrap();
                report("nested");
            }
            "read" => {
                let values: std::collections::BTreeSet<u64> =
                    d.values().unwrap().into_iter().collect();
                report(format!("read {values:?}"));
            }
            "close" => break,
            other => panic!("unknown request {other}"),
        }
    }
    d.close().unwrap();
    report("closed");
}

/// Starts `group_member` as user `uid` with primary group `gid` and supplementary `groups`,
/// under umask 077.
fn member(
    name: &str,
    dir: &str,
    uid: u32,
    gid: u32,
    groups: &[u32],
    mode: Option<&str>,
) -> ultradict_test_kit::Running {
    let groups = if groups.is_empty() {
        "--clear-groups".to_owned()
    } else {
        format!(
            "--groups={}",
            groups
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(",")
        )
    };
    let script =
        format!("umask 077 && exec setpriv --reuid={uid} --regid={gid} {groups} -- \"$@\"");
    let mut spawn = Spawn::test_under(&["sh", "-c", &script, "sh"], "child_entry", "group_member")
        .env("NAME", name)
        .env("DIR", dir);
    if let Some(mode) = mode {
        spawn = spawn.env("MODE", mode);
    }
    spawn.start()
}

#[test]
fn a_group_shares_a_dict_in_a_directory_of_its_own() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        println!("skipped: needs root to start children as other users");
        return;
    }
    // In /dev/shm (sticky: only an object's owner may remove it) a shared mode is refused.
    let refused = Dict::builder()
        .name(unique_name("group-sticky"))
        .mode(0o660)
        .open();
    assert!(
        matches!(&refused, Err(Error::InvalidOption { option: "mode", .. })),
        "{refused:?}"
    );
    // The group's directory: setgid, writable by the group, not sticky.
    let dir = format!("/dev/shm/ultradict-test-group-{}", std::process::id());
    std::fs::create_dir(&dir).unwrap();
    std::os::unix::fs::chown(&dir, Some(0), Some(GROUP)).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o2770)).unwrap();
    let name = unique_name("group");

    // A creates it (its primary group is the group), B joins through its supplementary group.
    let mut a = member(&name, &dir, 61_001, GROUP, &[GROUP], Some("660"));
    a.wait_for_report("attached uid 61001", WATCHDOG);
    a.request("write", WATCHDOG);
    let mut b = member(&name, &dir, 61_002, 61_002, &[GROUP], None);
    b.wait_for_report("attached uid 61002", WATCHDOG);
    assert_eq!(b.request("read", WATCHDOG), "read {61001}");
    b.request("write", WATCHDOG); // dumps owned by B, superseding A's
    b.request("nest", WATCHDOG);
    assert_eq!(a.request("read", WATCHDOG), "read {61002}");
    // Every object, whoever created it, has the dict's mode (the umask of 077 did not narrow
    // it) and the group's group.
    let objects: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap())
        .collect();
    assert!(
        objects.len() >= 4,
        "control, dump, nested dict, register: {objects:?}"
    );
    for object in &objects {
        let meta = object.metadata().unwrap();
        assert_eq!(meta.mode() & 0o7777, 0o660, "{:?}", object.file_name());
        assert_eq!(meta.gid(), GROUP, "{:?}", object.file_name());
    }
    // Somebody outside the group may not attach, nor create the dict afresh.
    let mut c = member(&name, &dir, 61_003, 61_003, &[], None);
    let refusal = c.wait_for_report("refused", WATCHDOG);
    assert!(refusal.contains("PermissionDenied"), "{refusal}");
    c.wait(WATCHDOG);
    // A leaves first; B, the last, removes every object, A's included.
    a.request("close", WATCHDOG);
    a.wait(WATCHDOG);
    b.request("close", WATCHDOG);
    b.wait(WATCHDOG);
    let left: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "left in {dir}: {left:?}");
    std::fs::remove_dir(&dir).unwrap();
}

// ---------------------------------------------------------------- F. errors that say what happened

/// A type whose serialization fails for 13, as a user's type with a failing `with` wrapper
/// (or a custom `Serialize`) can.
#[derive(
    ultradict::rkyv::Archive,
    ultradict::rkyv::Serialize,
    ultradict::rkyv::Deserialize,
    Clone,
    Debug,
    PartialEq,
    Eq,
    Hash,
)]
#[rkyv(crate = ultradict::rkyv)]
struct Picky(#[rkyv(with = picky::Unlucky13)] u32);

impl PartialEq<Picky> for ArchivedPicky {
    fn eq(&self, other: &Picky) -> bool {
        self.0.to_native() == other.0
    }
}

mod picky {
    use ultradict::rkyv::rancor::{Fallible, Source};
    use ultradict::rkyv::with::{ArchiveWith, DeserializeWith, SerializeWith};
    use ultradict::rkyv::{Archive, Archived, Place};

    /// Archives a `u32` as itself, but refuses 13.
    pub struct Unlucky13;

    #[derive(Debug)]
    struct Unlucky;

    impl std::fmt::Display for Unlucky {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("13 is unlucky")
        }
    }

    impl std::error::Error for Unlucky {}

    impl ArchiveWith<u32> for Unlucky13 {
        type Archived = Archived<u32>;
        type Resolver = ();

        fn resolve_with(field: &u32, resolver: (), out: Place<Self::Archived>) {
            field.resolve(resolver, out);
        }
    }

    impl<S: Fallible + ?Sized> SerializeWith<u32, S> for Unlucky13
    where
        S::Error: Source,
    {
        fn serialize_with(field: &u32, _: &mut S) -> Result<(), S::Error> {
            if *field == 13 {
                return Err(S::Error::new(Unlucky));
            }
            Ok(())
        }
    }

    impl<D: Fallible + ?Sized> DeserializeWith<Archived<u32>, u32, D> for Unlucky13 {
        fn deserialize_with(field: &Archived<u32>, _: &mut D) -> Result<u32, D::Error> {
            Ok(field.to_native())
        }
    }
}

#[test]
fn a_value_that_fails_to_serialize_is_a_serialize_error() {
    let name = unique_name("picky");
    let d: UltraDict<Picky, Picky> = UltraDict::builder()
        .name(&name)
        .buffer_size(256)
        .full_dump_size(4096)
        .open()
        .unwrap();
    d.insert(Picky(1), Picky(1)).unwrap();
    let err = d.insert(Picky(2), Picky(13)).unwrap_err();
    assert!(matches!(err, Error::Serialize { .. }), "{err:?}");
    assert!(err.to_string().contains(&name), "{err}");
    // Through a dump too (extend: one record larger than the stream).
    let many: Vec<_> = (100..140).map(|i| (Picky(i), Picky(i))).collect();
    d.extend(many).unwrap();
    let err = d
        .extend((200..240).map(|i| (Picky(i), Picky(if i == 239 { 13 } else { i }))))
        .unwrap_err();
    assert!(matches!(err, Error::Serialize { .. }), "{err:?}");
    assert_eq!(d.len().unwrap(), 41, "nothing of the failed writes");
    let err = d.nested::<u32, u32>(&Picky(13)).unwrap_err();
    assert!(matches!(err, Error::Serialize { .. }), "{err:?}");
    drop(d);
    assert_no_segments(&name);
}

#[test]
fn the_longest_name_still_nests_one_level() {
    let name = format!(
        "{}-{}",
        unique_name("long"),
        "x".repeat(ultradict::MAX_NAME_LEN)
    );
    let name = &name[..ultradict::MAX_NAME_LEN];
    let root = open(name);
    let child = root.nested::<String, u64>(&u32::MAX).unwrap();
    child.insert("deep".into(), 1).unwrap();
    child.dump().unwrap();
    let too_deep = child.nested::<u32, u32>("deeper");
    assert!(
        matches!(&too_deep, Err(Error::InvalidName { reason, .. }) if reason.contains("nested too deep")),
        "{too_deep:?}"
    );
    drop((root, child));
    assert_no_segments(name);
}
