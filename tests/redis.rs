//! The Redis backend where it differs from shared memory: faults of clients and of the server,
//! leases, bad data under a dict's keys, and a Redis Cluster. The behaviour both backends
//! share is tested once for both in `conformance.rs`.
//!
//! Every server here is started by the test itself on 127.0.0.1 (see
//! `ultradict_test_kit::redis`) and stopped at its end.

use std::time::{Duration, Instant};

use ultradict::{Create, Error, SharedDict, UltraDict};
use ultradict_test_kit::redis::{Backend, Cluster, OnBackend, Server, leftovers};
use ultradict_test_kit::{arg, report, role, run_all, unique_name};

const WATCHDOG: Duration = Duration::from_secs(120);

/// The lease the fault tests give their handles, so that expiries come quickly.
const LEASE: Duration = Duration::from_millis(600);

#[derive(SharedDict, Debug, PartialEq, Default)]
pub struct Counters {
    total: u64,
    #[ultradict(nested)]
    per_child: std::collections::HashMap<u32, u64>,
}

fn open(backend: &Backend, name: &str) -> UltraDict<String, u64> {
    UltraDict::builder()
        .name(name)
        .on(backend)
        .redis_lease(LEASE)
        .open()
        .unwrap()
}

#[test]
fn child_entry() {
    let Some(role) = role() else { return };
    let backend = Backend::from_env();
    let name = arg("NAME");
    match role.as_str() {
        "lock_and_die" => {
            let d = open(&backend, &name);
            let _guard = d.lock().unwrap();
            d.insert("before".into(), 1).unwrap();
            report("locked");
            std::thread::sleep(Duration::from_secs(600));
        }
        "attach_and_hang" => {
            let d = open(&backend, &name);
            d.insert("x".into(), 1).unwrap();
            report("attached");
            std::thread::sleep(Duration::from_secs(600));
        }
        "write_forever" => {
            let d = open(&backend, &name);
            for i in 0u64.. {
                d.insert(format!("k{i}"), i).unwrap();
                report(format!("acked {i}"));
            }
        }
        "hold_then_write" => {
            let d = open(&backend, &name);
            let _guard = d.lock().unwrap();
            report("locked");
            let mut line = String::new();
            std::io::stdin().read_line(&mut line).unwrap();
            match d.insert("stale holder".into(), 1) {
                Err(err @ Error::LockLost { .. }) => report(format!("refused: {err}")),
                other => report(format!("unexpected: {other:?}")),
            }
        }
        "count" => {
            let d: UltraDict<String, u64> = UltraDict::builder()
                .name(&name)
                .create(Create::Open)
                .on(&backend)
                .open()
                .unwrap();
            let me: u32 = arg("ME").parse().unwrap();
            let state = Counters::builder()
                .name(format!("{name}-state"))
                .on(&backend)
                .open()
                .unwrap();
            for _ in 0..100 {
                d.update("total", |n| n.unwrap_or(0) + 1).unwrap();
                state.update_total(|t| t + 1).unwrap();
                state
                    .per_child()
                    .update(&me, |n| n.unwrap_or(0) + 1)
                    .unwrap();
            }
            report("done");
        }
        // Every script sent twice, the first reply lost (ULTRADICT_REDIS_RESEND=1).
        "resent" => {
            let me: u32 = arg("ME").parse().unwrap();
            let shared = UltraDict::<String, u64>::builder()
                .name(&name)
                .create(Create::Open)
                .on(&backend)
                .open()
                .unwrap();
            let own: UltraDict<u64, u64> = UltraDict::builder()
                .name(format!("{name}-own{me}"))
                .create(Create::New)
                .buffer_size(1024)
                .on(&backend)
                .open()
                .unwrap();
            let state = Counters::builder()
                .name(format!("{name}-state"))
                .on(&backend)
                .open()
                .unwrap();
            for i in 0..100u64 {
                shared.update("total", |n| n.unwrap_or(0) + 1).unwrap();
                state.update_total(|t| t + 1).unwrap();
                state
                    .per_child()
                    .update(&me, |n| n.unwrap_or(0) + 1)
                    .unwrap();
                own.insert(i, i).unwrap();
                own.update(&1000, |n| n.unwrap_or(0) + 1).unwrap();
                if i % 3 == 0 {
                    own.remove(&i).unwrap();
                }
                let guard = own.lock().unwrap();
                own.update(&1001, |n| n.unwrap_or(0) + 1).unwrap();
                drop(guard);
            }
            let status = own.status();
            let contents = own.close().unwrap();
            report(format!(
                "done: {} entries, counters {:?} {:?}, {} dumps",
                contents.len(),
                contents.get(&1000),
                contents.get(&1001),
                status.dumps,
            ));
        }
        "unlink" => {
            let admin = ultradict::RedisServer::new(arg("URL"));
            report(format!("unlinked {}", admin.unlink(&name).unwrap()));
        }
        other => panic!("unknown role {other}"),
    }
}

#[test]
fn a_killed_lock_holder_loses_the_lock_when_its_lease_ends() {
    let server = Server::start();
    let backend = Backend::Redis(server.url());
    let name = unique_name("redis-killed-holder");
    let d = open(&backend, &name);
    let mut holder = backend.spawn("lock_and_die", &name).start();
    holder.wait_for_report("locked", WATCHDOG);
    assert!(matches!(d.try_lock(), Err(Error::WouldBlock { .. })));
    holder.kill();
    let started = Instant::now();
    let guard = d.lock_timeout(Duration::from_secs(30)).unwrap();
    assert!(started.elapsed() < Duration::from_secs(30));
    // The holder's write under the lock is whole.
    d.sync().unwrap();
    assert_eq!(d.get("before").unwrap(), Some(1));
    d.insert("after".into(), 2).unwrap();
    drop(guard);
    // A close drops the clients whose lease ran out, and their last writes' ids with them:
    // only this handle's is left.
    std::thread::sleep(LEASE);
    drop(open(&backend, &name));
    let meta = format!("ultradict:{{{name}}}:{name}:meta");
    let fields = server.cli(&["HKEYS", &meta]);
    assert_eq!(
        fields.lines().filter(|f| f.starts_with("w:")).count(),
        1,
        "{fields}"
    );
    drop(d);
    // The killed client's lease ran out before the last close: nothing is left.
    assert_eq!(leftovers(&backend, &name), Vec::<String>::new());
}

#[test]
fn a_writer_killed_mid_stream_tears_nothing_and_loses_no_acknowledged_write() {
    let server = Server::start();
    let backend = Backend::Redis(server.url());
    let name = unique_name("redis-killed-writer");
    let d: UltraDict<String, u64> = UltraDict::builder()
        .name(&name)
        .buffer_size(2048)
        .on(&backend)
        .open()
        .unwrap();
    for round in 0..3 {
        let mut writer = backend.spawn("write_forever", &name).start();
        writer.wait_for_report(&format!("acked {}", 50 + round * 37), WATCHDOG);
        let lines = writer.kill_and_collect();
        let acked: Vec<u64> = lines
            .iter()
            .filter_map(|line| line.strip_prefix("acked ")?.parse().ok())
            .collect();
        d.sync().unwrap();
        for i in acked {
            assert_eq!(d.get(&format!("k{i}")).unwrap(), Some(i));
        }
        // A new handle reads the same state from the dump and stream.
        let fresh = open(&backend, &name);
        assert_eq!(fresh.to_hashmap().unwrap(), d.to_hashmap().unwrap());
    }
}

#[test]
fn a_stalled_holder_past_its_lease_is_refused_by_the_server() {
    let server = Server::start();
    let backend = Backend::Redis(server.url());
    let name = unique_name("redis-stalled-holder");
    let d = open(&backend, &name);
    let mut holder = backend.spawn("hold_then_write", &name).start();
    holder.wait_for_report("locked", WATCHDOG);
    // Stop it past its lease, take the lock meanwhile, and let it go on.
    // SAFETY: kill has no memory effects; the pid is our own child's.
    unsafe { libc::kill(holder.pid() as libc::pid_t, libc::SIGSTOP) };
    let guard = d.lock_timeout(Duration::from_secs(30)).unwrap();
    d.insert("new holder".into(), 2).unwrap();
    // SAFETY: as above.
    unsafe { libc::kill(holder.pid() as libc::pid_t, libc::SIGCONT) };
    holder.send("write");
    let line = holder.wait_for_report("", WATCHDOG);
    assert!(line.starts_with("refused: "), "{line}");
    drop(guard);
    d.sync().unwrap();
    assert_eq!(d.get("stale holder").unwrap(), None);
    assert_eq!(d.get("new holder").unwrap(), Some(2));
    holder.wait(WATCHDOG);
}

/// A server of its own, and a dict on it that waits at most 300 ms for a reply, holding `a`.
fn impatient(tag: &str) -> (Server, UltraDict<String, u64>) {
    let server = Server::start();
    let d: UltraDict<String, u64> = UltraDict::builder()
        .name(unique_name(tag))
        .redis(server.url())
        .redis_timeout(Duration::from_millis(300))
        .open()
        .unwrap();
    d.insert("a".into(), 1).unwrap();
    (server, d)
}

#[test]
fn a_stopped_server_gives_typed_errors_in_time_and_the_handle_recovers() {
    let (server, d) = impatient("redis-stopped");
    server.signal(libc::SIGSTOP);
    let started = Instant::now();
    match d.insert("b".into(), 2) {
        Err(Error::Backend { address, doing, .. }) => {
            assert!(address.contains(&server.port().to_string()), "{address}");
            assert_eq!(doing, "appending a record");
        }
        other => panic!("expected a backend error, got {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    // Reads with no news need no server.
    assert_eq!(d.get("a").unwrap(), Some(1));
    assert!(matches!(d.sync(), Err(Error::Backend { .. })));
    server.signal(libc::SIGCONT);
    d.insert("c".into(), 3).unwrap();
    d.sync().unwrap();
    assert_eq!(d.get("c").unwrap(), Some(3));
    assert_eq!(d.get("a").unwrap(), Some(1));
}

#[test]
fn a_killed_server_restarted_from_its_log_keeps_every_acknowledged_write() {
    let mut server = Server::start_durable();
    let name = unique_name("redis-restart");
    let d: UltraDict<String, u64> = UltraDict::builder()
        .name(&name)
        .redis(server.url())
        .redis_timeout(Duration::from_millis(500))
        .buffer_size(1024)
        .open()
        .unwrap();
    for i in 0..200 {
        d.insert(format!("k{i}"), i).unwrap();
    }
    server.kill();
    assert!(matches!(
        d.insert("lost".into(), 0),
        Err(Error::Backend { .. })
    ));
    server.restart();
    d.insert("after".into(), 1).unwrap();
    let fresh: UltraDict<String, u64> = UltraDict::builder()
        .name(&name)
        .create(Create::Open)
        .redis(server.url())
        .open()
        .unwrap();
    for i in 0..200 {
        assert_eq!(fresh.get(&format!("k{i}")).unwrap(), Some(i));
    }
    assert_eq!(fresh.get("after").unwrap(), Some(1));
    assert_eq!(fresh.get("lost").unwrap(), None);
}

#[test]
fn foreign_and_corrupt_data_under_a_dicts_keys_gets_typed_errors() {
    let server = Server::start();
    let backend = Backend::Redis(server.url());
    let open = |name: &str| {
        UltraDict::<String, u64>::builder()
            .name(name)
            .on(&backend)
            .open()
    };
    // A string where the meta hash belongs.
    let name = unique_name("redis-foreign");
    server.cli(&["SET", &format!("ultradict:{{{name}}}:{name}:meta"), "hello"]);
    assert!(matches!(open(&name), Err(Error::Foreign { .. })));
    // A stream of someone else's without a meta hash.
    let name = unique_name("redis-foreign");
    server.cli(&[
        "XADD",
        &format!("ultradict:{{{name}}}:{name}:stream"),
        "*",
        "x",
        "1",
    ]);
    assert!(matches!(open(&name), Err(Error::Foreign { .. })));
    // A hash without our magic.
    let name = unique_name("redis-foreign");
    server.cli(&[
        "HSET",
        &format!("ultradict:{{{name}}}:{name}:meta"),
        "a",
        "b",
    ]);
    assert!(matches!(open(&name), Err(Error::Foreign { .. })));

    // A newer format version.
    let name = unique_name("redis-version");
    let d = open(&name).unwrap();
    let meta = format!("ultradict:{{{name}}}:{name}:meta");
    server.cli(&["HSET", &meta, "version", "99"]);
    match open(&name) {
        Err(Error::VersionMismatch { found: 99, .. }) => {}
        other => panic!("expected VersionMismatch, got {other:?}"),
    }
    drop(d);

    // A corrupt record: nothing of it is applied, and the error names the stream.
    let name = unique_name("redis-corrupt");
    let d = open(&name).unwrap();
    d.insert("kept".into(), 1).unwrap();
    let status = d.status();
    let next = format!("{}-{}", status.epoch, status.committed_offset + 1);
    let stream = format!("ultradict:{{{name}}}:{name}:stream");
    server.cli(&["XADD", &stream, &next, "r", "not a record at all"]);
    let reader = open(&name);
    assert!(matches!(reader, Err(Error::Corrupt { .. })), "{reader:?}");
    assert!(matches!(d.sync(), Err(Error::Corrupt { .. })));
    // Once the subscription delivered the bad record, reads fail rather than serve a state
    // that skips it, as on shared memory.
    assert!(d.wait_for_change(Duration::from_secs(30)).unwrap());
    assert!(matches!(d.get("kept"), Err(Error::Corrupt { .. })));
    d.unlink().unwrap();
    drop(d);

    // A corrupt dump.
    let name = unique_name("redis-corrupt-dump");
    let d = open(&name).unwrap();
    d.insert("x".into(), 1).unwrap();
    d.dump().unwrap();
    server.cli(&[
        "SET",
        &format!("ultradict:{{{name}}}:{name}:dump"),
        "garbage",
    ]);
    assert!(matches!(open(&name), Err(Error::Corrupt { .. })));
    // The failed opens left no client behind.
    let clients = server.cli(&["ZCARD", &format!("ultradict:{{{name}}}:{name}:clients")]);
    assert_eq!(clients, "1");
    d.unlink().unwrap();
}

#[test]
fn a_cluster_spreads_dicts_over_its_slots_with_the_same_results() {
    let cluster = Cluster::start();
    let backend = Backend::Cluster(cluster.urls());
    let names: Vec<String> = (0..6).map(|_| unique_name("cluster")).collect();
    let handles: Vec<UltraDict<String, u64>> = names
        .iter()
        .map(|name| UltraDict::builder().name(name).on(&backend).open().unwrap())
        .collect();
    let states: Vec<_> = names
        .iter()
        .map(|name| {
            Counters::builder()
                .name(format!("{name}-state"))
                .on(&backend)
                .open()
                .unwrap()
        })
        .collect();
    let children = names
        .iter()
        .flat_map(|name| (0..2).map(|me| backend.spawn("count", name).env("ME", me)));
    for reports in run_all(children, WATCHDOG) {
        assert_eq!(reports, ["done"]);
    }
    for ((name, d), state) in names.iter().zip(&handles).zip(&states) {
        d.sync().unwrap();
        assert_eq!(d.get("total").unwrap(), Some(200), "{name}");
        state.sync().unwrap();
        state.per_child().sync().unwrap();
        assert_eq!(state.total().unwrap(), 200);
        assert_eq!(state.per_child().get(&0).unwrap(), Some(100));
        assert_eq!(state.per_child().get(&1).unwrap(), Some(100));
    }
    // The dicts landed on more than one master.
    let used = cluster
        .servers()
        .iter()
        .filter(|server| {
            !server
                .cli(&["--scan", "--pattern", "ultradict:*"])
                .is_empty()
        })
        .count();
    assert!(used >= 2, "all dicts on one master");
    drop(handles);
    drop(states);
    for name in &names {
        assert_eq!(
            leftovers(&backend, &format!("{name}-state")),
            Vec::<String>::new()
        );
        assert_eq!(leftovers(&backend, name), Vec::<String>::new());
    }
}

/// Every script sent twice with the first reply lost, as a client library does when a reply
/// times out (the Cluster client sends again at once): opens (a `Create::New` among them),
/// compare-and-append writes, `update`s, full dumps, the lock, derived states, nested dicts
/// and closes all come out as if each had been sent once.
#[test]
fn every_script_sent_twice_comes_out_as_sent_once() {
    let backend = Backend::redis();
    let name = unique_name("resent");
    let d = open(&backend, &name);
    let state = Counters::builder()
        .name(format!("{name}-state"))
        .on(&backend)
        .open()
        .unwrap();
    let children = (0..2).map(|me| {
        backend
            .spawn("resent", &name)
            .env("ME", me)
            .raw_env("ULTRADICT_REDIS_RESEND", 1)
    });
    for reports in run_all(children, WATCHDOG) {
        // Keys 0..100 but every third one (34 removed), and two counters of 100 rounds.
        let [report] = &reports[..] else {
            panic!("{reports:?}")
        };
        let expected = "done: 68 entries, counters Some(100) Some(100)";
        assert!(report.starts_with(expected), "{report}");
        assert!(
            !report.ends_with(" 1 dumps"),
            "no full dump was written: {report}"
        );
    }
    d.sync().unwrap();
    assert_eq!(d.get("total").unwrap(), Some(200));
    state.sync().unwrap();
    state.per_child().sync().unwrap();
    assert_eq!(state.total().unwrap(), 200);
    assert_eq!(state.per_child().get(&0).unwrap(), Some(100));
    assert_eq!(state.per_child().get(&1).unwrap(), Some(100));
    drop(d);
    drop(state);
    for dict in [
        name.clone(),
        format!("{name}-state"),
        format!("{name}-own0"),
        format!("{name}-own1"),
    ] {
        assert_eq!(leftovers(&backend, &dict), Vec::<String>::new(), "{dict}");
    }
}

/// A server that comes back with older data than a handle read from it (restarted from an
/// older snapshot; a replica promoted without the last writes): the handle's next write says
/// so with `Error::Backend` instead of retrying for good (it used to spin, sending its append
/// about 11,000 times a second).
#[test]
fn a_write_to_a_server_that_went_back_in_time_fails_instead_of_spinning() {
    let mut server = Server::start();
    let backend = Backend::Redis(server.url());
    let name = unique_name("redis-back-in-time");
    let d: UltraDict<String, u64> = UltraDict::builder()
        .name(&name)
        .on(&backend)
        .redis_timeout(Duration::from_secs(2))
        .open()
        .unwrap();
    for i in 0..5 {
        d.insert(format!("k{i}"), i).unwrap();
    }
    assert_eq!(server.cli(&["SAVE"]), "OK");
    for i in 5..8 {
        d.insert(format!("k{i}"), i).unwrap();
    }
    server.restart(); // loads the snapshot: records 5..8 are gone
    let started = Instant::now();
    let mut outcome = d.insert("after".into(), 1);
    // The first attempt may meet a connection the restart closed: the error then says so.
    while matches!(&outcome, Err(Error::Backend { detail, .. }) if !detail.contains("behind"))
        && started.elapsed() < Duration::from_secs(20)
    {
        outcome = d.insert("after".into(), 1);
    }
    match outcome {
        Err(Error::Backend { detail, .. }) => assert!(detail.contains("behind"), "{detail}"),
        other => panic!("{other:?}"),
    }
    drop(d);
}

/// A client whose lease ran out once (stopped longer than its lease), and whose entry another
/// client's close dropped meanwhile, is counted again once it renews: the last other
/// client's close must not remove the dict under it. It used to be dropped for good.
#[test]
fn a_client_whose_lease_lapsed_once_is_counted_again() {
    let server = Server::start();
    let backend = Backend::Redis(server.url());
    let admin = ultradict::RedisServer::new(server.url());
    let name = unique_name("redis-lapse");
    let first = open(&backend, &name);
    let mut child = backend.spawn("attach_and_hang", &name).start();
    child.wait_for_report("attached", WATCHDOG);
    let pid = child.pid() as libc::pid_t;
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    std::thread::sleep(LEASE * 3);
    // A close that is not the last: it drops the stopped child's lapsed entry.
    drop(open(&backend, &name));
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    std::thread::sleep(LEASE * 2); // the child renews (every third of a lease)
    drop(first);
    let listed: Vec<String> = admin.list().unwrap().into_iter().map(|l| l.name).collect();
    assert!(
        listed.contains(&name),
        "the child's dict was removed: {listed:?}"
    );
    child.kill();
    assert!(admin.unlink(&name).unwrap());
    assert_eq!(leftovers(&backend, &name), Vec::<String>::new());
}

#[test]
fn cleanup_removes_a_dict_whose_clients_all_crashed_once_their_leases_end() {
    let server = Server::start();
    let backend = Backend::Redis(server.url());
    let admin = ultradict::RedisServer::new(server.url());
    let orphan = unique_name("redis-orphan");
    let kept = unique_name("redis-kept");
    let persistent: UltraDict<String, u64> = UltraDict::builder()
        .name(&kept)
        .lifetime(ultradict::Lifetime::Persistent)
        .on(&backend)
        .open()
        .unwrap();
    drop(persistent);
    let mut child = backend.spawn("attach_and_hang", &orphan).start();
    child.wait_for_report("attached", WATCHDOG);
    assert_eq!(admin.cleanup(false).unwrap(), Vec::<String>::new());
    child.kill();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let info = admin.inspect(&orphan).unwrap();
        if info.orphaned() {
            break;
        }
        assert!(Instant::now() < deadline, "the lease never ended: {info:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(admin.cleanup(true).unwrap(), std::slice::from_ref(&orphan));
    assert_eq!(admin.cleanup(false).unwrap(), std::slice::from_ref(&orphan));
    assert_eq!(leftovers(&backend, &orphan), Vec::<String>::new());
    let names: Vec<String> = admin.list().unwrap().into_iter().map(|l| l.name).collect();
    assert_eq!(names, std::slice::from_ref(&kept));
    assert!(admin.unlink(&kept).unwrap());
    assert!(!admin.unlink(&kept).unwrap());
    assert!(admin.list().unwrap().is_empty());
}

#[test]
fn async_waits_on_redis_wake_for_other_processes_writes() {
    let server = Server::start();
    let backend = Backend::Redis(server.url());
    let name = unique_name("redis-async");
    let d = open(&backend, &name);
    let mut watcher = d.watch();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    runtime.block_on(async {
        assert!(
            !d.wait_for_change_async(Duration::from_millis(50))
                .await
                .unwrap()
        );
        let writer = backend.spawn("write_forever", &name).start();
        assert!(
            d.wait_for_change_async(Duration::from_secs(30))
                .await
                .unwrap()
        );
        let change = tokio::time::timeout(Duration::from_secs(30), watcher.changed())
            .await
            .expect("a change within the timeout")
            .unwrap();
        assert!(matches!(change, ultradict::Change::Keys(_)), "{change:?}");
        writer.kill();
    });
}

#[test]
fn status_names_the_server_the_clients_and_trouble() {
    let (server, d) = impatient("redis-status");
    let guard = d.lock().unwrap();
    let status = d.status();
    assert_eq!(status.records, 1);
    assert_eq!(status.attached_pids, [std::process::id()]);
    let holder = status.lock_holder.clone().expect("held");
    assert_eq!(holder.pid, std::process::id());
    let shown = status.to_string();
    assert!(
        shown.contains(&format!("pid {}", std::process::id())),
        "{shown}"
    );
    assert!(shown.contains(&server.port().to_string()), "{shown}");
    drop(guard);
    server.signal(libc::SIGSTOP);
    let status = d.status();
    server.signal(libc::SIGCONT);
    assert!(status.unreachable.is_some(), "{status:?}");
    assert!(status.to_string().contains("unreachable"), "{status}");
}

#[test]
fn a_handle_of_a_removed_dict_never_takes_in_the_records_of_its_successor() {
    let server = Server::start();
    let backend = Backend::Redis(server.url());
    let name = unique_name("redis-successor");
    let old = open(&backend, &name);
    old.insert("k".into(), 1).unwrap();
    ultradict::RedisServer::new(server.url())
        .unlink(&name)
        .unwrap();
    let new = open(&backend, &name);
    for i in 0..5 {
        new.insert("k".into(), 100 + i).unwrap();
    }
    // The old handle's subscription sees the new dict's stream; it must not apply it.
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(old.get("k").unwrap(), Some(1));
    assert!(matches!(
        old.insert("x".into(), 1),
        Err(Error::Removed { .. })
    ));
    assert!(matches!(old.load(true), Err(Error::Removed { .. })));
    assert_eq!(old.get("k").unwrap(), Some(1));
    new.sync().unwrap();
    assert_eq!(new.get("k").unwrap(), Some(104));
    assert_eq!(new.get("x").unwrap(), None);
}

/// A dict created again while its remover is held up between the removal and taking the name
/// out of the index of dicts (which lies outside the dict's slot, so no script does both): the
/// remover took the new dict's entry out, and `list` and `cleanup` no longer saw it.
#[test]
fn a_dict_created_again_during_its_removal_stays_listed() {
    let server = Server::start();
    let backend = Backend::Redis(server.url());
    let admin = ultradict::RedisServer::new(server.url());
    let name = unique_name("redis-unindex");
    drop(
        UltraDict::<String, u64>::builder()
            .name(&name)
            .lifetime(ultradict::Lifetime::Persistent)
            .on(&backend)
            .open()
            .unwrap(),
    );
    let mut remover = backend
        .spawn("unlink", &name)
        .env("URL", server.url())
        .raw_env("ULTRADICT_CRASH_AT", "redis-removed")
        .raw_env("ULTRADICT_CRASH_SIGNAL", "SLEEP")
        .raw_env("ULTRADICT_CRASH_SLEEP_MS", 1_000)
        .start();
    let deadline = Instant::now() + WATCHDOG;
    while !matches!(admin.inspect(&name), Err(Error::NotFound { .. })) {
        assert!(Instant::now() < deadline, "the dict was never removed");
        std::thread::sleep(Duration::from_millis(5));
    }
    let again = open(&backend, &name);
    assert_eq!(
        remover.wait_for_report("unlinked", WATCHDOG),
        "unlinked true"
    );
    remover.wait(WATCHDOG);
    let names: Vec<String> = admin.list().unwrap().into_iter().map(|l| l.name).collect();
    assert_eq!(names, std::slice::from_ref(&name));
    drop(again);
    assert!(admin.list().unwrap().is_empty());
    assert_eq!(leftovers(&backend, &name), Vec::<String>::new());
}
