//! One conformance suite for every backend: the same test code runs against shared memory and
//! against a Redis server (started by the tests, see `ultradict_test_kit::redis`). Map
//! semantics, dumps, derived states, nested dicts, the lock, watching, lifetimes and bad
//! input, with real processes where sharing is the point.
//!
//! Each `conformance!` test is a function of the backend; the macro makes one `#[test]` per
//! backend of it (`shm::NAME`, `redis::NAME`).

use std::collections::HashMap;
use std::time::Duration;

use ultradict::{Change, Create, Error, Lifetime, SharedDict, UltraDict};
use ultradict_test_kit::redis::{Backend, OnBackend, leftovers};
use ultradict_test_kit::{arg, report, role, run_all, unique_name};

const WATCHDOG: Duration = Duration::from_secs(120);

#[derive(SharedDict, Debug, PartialEq, Default)]
pub struct Stats {
    hits: u64,
    misses: u64,
}

#[derive(SharedDict, Debug, PartialEq, Default)]
pub struct AppState {
    counter: u64,
    label: String,
    #[ultradict(nested)]
    stats: Stats,
    #[ultradict(nested)]
    workers: HashMap<u32, String>,
}

macro_rules! conformance {
    ($(fn $name:ident($backend:ident: &Backend) $body:block)*) => {
        $(fn $name($backend: &Backend) $body)*

        mod shm {
            $(#[test]
            fn $name() {
                super::$name(&super::Backend::Shm)
            })*
        }

        mod redis {
            $(#[test]
            fn $name() {
                super::$name(&super::Backend::redis())
            })*
        }
    };
}

fn map<K: ultradict::Key, V: ultradict::Value>(backend: &Backend, name: &str) -> UltraDict<K, V> {
    UltraDict::builder().name(name).on(backend).open().unwrap()
}

/// The dict `name` (with its nested dicts) is gone from its backend.
fn assert_removed(backend: &Backend, name: &str) {
    let left = leftovers(backend, name);
    assert!(left.is_empty(), "{name} left {left:?}");
    if backend.is_remote() {
        // Processes that share a dict on a server share nothing else: no /dev/shm at all.
        let shm = ultradict_test_kit::shm_objects(name);
        assert!(shm.is_empty(), "{name} on a server made {shm:?}");
    }
}

/// The dict `name` on `backend`, which must exist.
fn existing<K: ultradict::Key, V: ultradict::Value>(
    backend: &Backend,
    name: &str,
) -> UltraDict<K, V> {
    UltraDict::builder()
        .name(name)
        .create(Create::Open)
        .on(backend)
        .open()
        .unwrap()
}

#[test]
fn child_entry() {
    let Some(role) = role() else { return };
    let backend = Backend::from_env();
    let name = arg("NAME");
    match role.as_str() {
        "count" => {
            let d: UltraDict<String, u64> = existing(&backend, &name);
            let me: u64 = arg("ME").parse().unwrap();
            let rounds: u64 = arg("ROUNDS").parse().unwrap();
            for i in 0..rounds {
                d.update("total", |n| n.unwrap_or(0) + 1).unwrap();
                d.insert(format!("k{me}-{i}"), i).unwrap();
            }
            report("done");
        }
        "bump_state" => {
            let state = AppState::builder()
                .name(&name)
                .create(Create::Open)
                .on(&backend)
                .open()
                .unwrap();
            let me: u32 = arg("ME").parse().unwrap();
            for _ in 0..50 {
                state.update_counter(|c| c + 1).unwrap();
                state.stats().update_hits(|h| h + 2).unwrap();
            }
            state.workers().insert(me, format!("worker {me}")).unwrap();
            report("done");
        }
        "hold_lock" => {
            let d: UltraDict<String, u64> = existing(&backend, &name);
            let guard = d.lock().unwrap();
            report(format!("locked {}", std::process::id()));
            let mut line = String::new();
            std::io::stdin().read_line(&mut line).unwrap();
            d.insert("by child".into(), 1).unwrap();
            drop(guard);
            report("released");
            std::io::stdin().read_line(&mut line).unwrap();
        }
        "write_later" => {
            let d: UltraDict<String, u64> = existing(&backend, &name);
            report("ready");
            let mut line = String::new();
            std::io::stdin().read_line(&mut line).unwrap();
            d.insert("news".into(), 7).unwrap();
            report("written");
        }
        "nested" => {
            let root: UltraDict<String, u64> = existing(&backend, &name);
            let jobs = root.nested::<String, String>("jobs").unwrap();
            jobs.insert(format!("from {}", std::process::id()), "child".into())
                .unwrap();
            report("done");
        }
        other => panic!("unknown role {other}"),
    }
}

conformance! {
    fn map_operations(backend: &Backend) {
        let name = unique_name("conf-map");
        let d: UltraDict<String, u64> = map(backend, &name);
        assert_eq!(d.insert("a".into(), 1).unwrap(), None);
        assert_eq!(d.insert("a".into(), 2).unwrap(), Some(1));
        assert_eq!(d.get("a").unwrap(), Some(2));
        assert!(d.contains_key("a").unwrap());
        assert_eq!(d.update("a", |n| n.unwrap_or(0) * 10).unwrap(), 20);
        assert_eq!(d.get_or_insert_with("b".into(), || 5).unwrap(), 5);
        assert_eq!(d.get_or_insert_with("b".into(), || 6).unwrap(), 5);
        d.extend((0..10).map(|i| (format!("e{i}"), i))).unwrap();
        assert_eq!(d.len().unwrap(), 12);
        assert_eq!(d.remove("e3").unwrap(), Some(3));
        assert_eq!(d.remove("e3").unwrap(), None);
        assert_eq!(d.len().unwrap(), 11);
        let mut keys = d.keys().unwrap();
        keys.sort();
        assert_eq!(keys.first().map(String::as_str), Some("a"));
        // A second handle sees it all.
        let other: UltraDict<String, u64> = map(backend, &name);
        assert_eq!(other.to_hashmap().unwrap(), d.to_hashmap().unwrap());
        other.insert("from other".into(), 9).unwrap();
        d.sync().unwrap();
        assert_eq!(d.get("from other").unwrap(), Some(9));
        d.replace_all([("only".to_owned(), 1)]).unwrap();
        other.sync().unwrap();
        assert_eq!(other.to_hashmap().unwrap(), HashMap::from([("only".to_owned(), 1)]));
        other.clear().unwrap();
        d.sync().unwrap();
        assert!(d.is_empty().unwrap());
        drop(other);
        drop(d);
        assert_removed(backend, &name);
    }

    fn epochs_switch_when_the_stream_fills(backend: &Backend) {
        let name = unique_name("conf-epochs");
        let d: UltraDict<u64, String> = UltraDict::builder()
            .name(&name)
            .buffer_size(1024)
            .on(backend)
            .open()
            .unwrap();
        let watcher: UltraDict<u64, String> = map(backend, &name);
        for i in 0..500 {
            d.insert(i % 50, format!("value {i}")).unwrap();
        }
        assert!(d.status().epoch > 3, "{}", d.status());
        d.dump().unwrap();
        watcher.sync().unwrap();
        let late: UltraDict<u64, String> = map(backend, &name);
        for i in 450..500 {
            let want = Some(format!("value {i}"));
            assert_eq!(d.get(&(i % 50)).unwrap(), want);
            assert_eq!(watcher.get(&(i % 50)).unwrap(), want);
            assert_eq!(late.get(&(i % 50)).unwrap(), want);
        }
        // An insert larger than the whole stream goes through a dump.
        d.insert(1000, "x".repeat(4000)).unwrap();
        late.sync().unwrap();
        assert_eq!(late.get(&1000).unwrap().map(|s| s.len()), Some(4000));
        // A forced reload rebuilds the same state.
        late.load(true).unwrap();
        assert_eq!(late.len().unwrap(), 51);
    }

    fn updates_from_many_processes_add_up(backend: &Backend) {
        let name = unique_name("conf-count");
        let d: UltraDict<String, u64> = map(backend, &name);
        let rounds = 100;
        let children = (0..3).map(|me| {
            backend.spawn("count", &name)
                .env("ME", me)
                .env("ROUNDS", rounds)
        });
        for reports in run_all(children, WATCHDOG) {
            assert_eq!(reports, ["done"]);
        }
        d.sync().unwrap();
        assert_eq!(d.get("total").unwrap(), Some(3 * rounds));
        assert_eq!(d.len().unwrap() as u64, 1 + 3 * rounds);
        for me in 0..3 {
            for i in 0..rounds {
                assert_eq!(d.get(&format!("k{me}-{i}")).unwrap(), Some(i));
            }
        }
    }

    fn derived_state_with_nested_dicts(backend: &Backend) {
        let name = unique_name("conf-state");
        let state = AppState::builder().name(&name).on(backend).open().unwrap();
        state.set_label("shared".into()).unwrap();
        let children = (0..2).map(|me| backend.spawn("bump_state", &name).env("ME", me));
        for reports in run_all(children, WATCHDOG) {
            assert_eq!(reports, ["done"]);
        }
        state.sync().unwrap();
        state.stats().sync().unwrap();
        state.workers().sync().unwrap();
        assert_eq!(state.counter().unwrap(), 100);
        assert_eq!(state.stats().hits().unwrap(), 200);
        assert_eq!(state.workers().len().unwrap(), 2);
        let copy = state.snapshot().unwrap();
        assert_eq!(copy.label, "shared");
        assert_eq!(copy.workers.get(&1).map(String::as_str), Some("worker 1"));
        state.unlink().unwrap();
        drop(state);
        assert_removed(backend, &name);
        assert_removed(backend, &format!("{name}~stats"));
    }

    fn nested_maps_go_with_their_root(backend: &Backend) {
        let name = unique_name("conf-nested");
        let root: UltraDict<String, u64> = UltraDict::builder()
            .name(&name)
            .lifetime(Lifetime::Persistent)
            .on(backend)
            .open()
            .unwrap();
        let jobs = root.nested::<String, String>("jobs").unwrap();
        jobs.insert("from parent".into(), "parent".into()).unwrap();
        assert_eq!(run_all([backend.spawn("nested", &name)], WATCHDOG), [["done"]]);
        jobs.sync().unwrap();
        assert_eq!(jobs.len().unwrap(), 2);
        let child_name = jobs.name().to_owned();
        drop(jobs);
        root.unlink().unwrap();
        drop(root);
        assert_removed(backend, &name);
        assert_removed(backend, &child_name);
    }

    fn the_lock_excludes_other_processes(backend: &Backend) {
        let name = unique_name("conf-lock");
        let d: UltraDict<String, u64> = map(backend, &name);
        let mut holder = backend.spawn("hold_lock", &name).start();
        let line = holder.wait_for_report("locked", WATCHDOG);
        let pid: u32 = line.trim_start_matches("locked ").parse().unwrap();
        match d.try_lock() {
            Err(Error::WouldBlock { holder_pid, .. }) => assert_eq!(holder_pid, pid),
            other => panic!("expected WouldBlock, got {other:?}"),
        }
        match d.lock_timeout(Duration::from_millis(100)) {
            Err(Error::LockTimeout { holder_pid, .. }) => assert_eq!(holder_pid, pid),
            other => panic!("expected LockTimeout, got {other:?}"),
        }
        holder.send("go");
        holder.wait_for_report("released", WATCHDOG);
        {
            let _guard = d.lock().unwrap();
            let _again = d.lock().unwrap();
            assert_eq!(d.get("by child").unwrap(), Some(1));
            let other: UltraDict<String, u64> = map(backend, &name);
            assert!(matches!(other.try_lock(), Err(Error::LockedByOtherHandle { .. })));
            // A write through the other handle would wait for this very thread.
            assert!(matches!(
                other.insert("x".into(), 1),
                Err(Error::LockedByOtherHandle { .. })
            ));
        }
        holder.send("end");
        holder.wait(WATCHDOG);
    }

    fn watchers_see_other_processes_writes(backend: &Backend) {
        let name = unique_name("conf-watch");
        let d: UltraDict<String, u64> = map(backend, &name);
        let mut watcher = d.watch();
        let mut writer = backend.spawn("write_later", &name).start();
        writer.wait_for_report("ready", WATCHDOG);
        assert!(!d.wait_for_change(Duration::from_millis(50)).unwrap());
        writer.send("go");
        assert!(d.wait_for_change(Duration::from_secs(30)).unwrap());
        assert_eq!(d.get("news").unwrap(), Some(7));
        match watcher.wait(Duration::from_secs(30)).unwrap() {
            Some(Change::Keys(keys)) => assert_eq!(keys, ["news"]),
            other => panic!("expected the key news, got {other:?}"),
        }
        writer.wait_for_report("written", WATCHDOG);
        writer.wait(WATCHDOG);
    }

    fn a_forked_child_shares_the_dict_and_waits_for_its_parents_lock(backend: &Backend) {
        let name = unique_name("conf-fork");
        let d: UltraDict<String, u64> = map(backend, &name);
        d.insert("before".into(), 1).unwrap();
        let guard = d.lock().unwrap();
        let child = ultradict_test_kit::fork(|| {
            // The parent's guard is not this process's: the write waits for the parent.
            let ok = d.insert("child".into(), 2).is_ok()
                && d.get("before").ok() == Some(Some(1))
                && d.get("parent").ok() == Some(Some(3));
            i32::from(!ok)
        });
        std::thread::sleep(Duration::from_millis(200));
        d.insert("parent".into(), 3).unwrap();
        drop(guard);
        assert_eq!(ultradict_test_kit::wait_forked(child, WATCHDOG), 0);
        d.sync().unwrap();
        assert_eq!(d.get("child").unwrap(), Some(2));
    }

    fn lifetimes_remove_when_they_should(backend: &Backend) {
        let name = unique_name("conf-life");
        let a: UltraDict<u64, u64> = map(backend, &name);
        let b: UltraDict<u64, u64> = map(backend, &name);
        a.insert(1, 1).unwrap();
        drop(a);
        b.sync().unwrap();
        assert_eq!(b.get(&1).unwrap(), Some(1));
        drop(b);
        assert_removed(backend, &name);

        let name = unique_name("conf-life");
        let kept: UltraDict<u64, u64> = UltraDict::builder()
            .name(&name)
            .lifetime(Lifetime::Persistent)
            .on(backend)
            .open()
            .unwrap();
        kept.insert(1, 2).unwrap();
        drop(kept);
        let again: UltraDict<u64, u64> = map(backend, &name);
        assert_eq!(again.get(&1).unwrap(), Some(2));
        again.unlink().unwrap();
        drop(again);
        assert_removed(backend, &name);

        let name = unique_name("conf-life");
        let creator: UltraDict<u64, u64> = UltraDict::builder()
            .name(&name)
            .lifetime(Lifetime::Creator)
            .on(backend)
            .open()
            .unwrap();
        let other: UltraDict<u64, u64> = map(backend, &name);
        drop(creator);
        assert_removed(backend, &name);
        assert!(matches!(other.dump(), Err(Error::Removed { .. })));
    }

    fn bad_input_gets_typed_errors(backend: &Backend) {
        let name = unique_name("conf-bad");
        let d: UltraDict<String, u64> = UltraDict::builder()
            .name(&name)
            .buffer_size(4096)
            .on(backend)
            .open()
            .unwrap();
        d.insert("x".into(), 1).unwrap();
        let exists = UltraDict::<String, u64>::builder()
            .name(&name)
            .create(Create::New)
            .on(backend)
            .open()
            .unwrap_err();
        assert!(matches!(exists, Error::AlreadyExists { .. }), "{exists}");
        match UltraDict::<u64, String>::builder().name(&name).on(backend).open() {
            Err(Error::SchemaMismatch { expected, found, .. }) => {
                assert!(expected.contains("u64, alloc::string::String"), "{expected}");
                assert!(found.contains("alloc::string::String, u64"), "{found}");
            }
            other => panic!("expected SchemaMismatch, got {other:?}"),
        }
        let size = UltraDict::<String, u64>::builder()
            .name(&name)
            .buffer_size(8192)
            .on(backend)
            .open()
            .unwrap_err();
        assert!(matches!(size, Error::ParameterMismatch { parameter: "buffer_size", .. }), "{size}");
        let missing = UltraDict::<u64, u64>::builder()
            .name(unique_name("conf-missing"))
            .create(Create::Open)
            .on(backend)
            .open()
            .unwrap_err();
        assert!(matches!(missing, Error::NotFound { .. }), "{missing}");
        let bad_name = UltraDict::<u64, u64>::builder()
            .name("no/slashes")
            .on(backend)
            .open()
            .unwrap_err();
        assert!(matches!(bad_name, Error::InvalidName { .. }), "{bad_name}");
        // Nothing of the failed opens changed the dict.
        assert_eq!(d.get("x").unwrap(), Some(1));
        assert_eq!(d.len().unwrap(), 1);
    }
}
