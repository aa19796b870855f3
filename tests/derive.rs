//! `#[derive(SharedDict)]`: typed, nested state shared between real processes.

use std::collections::HashMap;
use std::time::Duration;

use ultradict::rkyv::{Archive, Deserialize, Serialize};
use ultradict::{Create, Error, SharedDict, UltraDict};
use ultradict_test_kit::{Spawn, arg, assert_no_segments, report, role, shm_objects, unique_name};

const WATCHDOG: Duration = Duration::from_secs(120);

#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[rkyv(crate = ultradict::rkyv)]
pub struct Worker {
    pub pid: u32,
    pub jobs: Vec<String>,
}

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
    workers: HashMap<u32, Worker>,
}

mod other_definition {
    use ultradict::SharedDict;

    /// Same name, another field: a different schema.
    #[derive(SharedDict, Debug, Default)]
    pub struct AppState {
        pub counter: u64,
        pub title: String,
    }
}

#[test]
fn child_entry() {
    let Some(role) = role() else { return };
    let name = arg("NAME");
    match role.as_str() {
        "bump" => {
            let state = AppState::builder()
                .name(&name)
                .create(Create::Open)
                .open()
                .unwrap();
            let count: u64 = arg("COUNT").parse().unwrap();
            for _ in 0..count {
                state.update_counter(|c| c + 1).unwrap();
                state.stats().update_hits(|h| h + 1).unwrap();
            }
            state
                .workers()
                .insert(
                    std::process::id(),
                    Worker {
                        pid: std::process::id(),
                        jobs: vec!["bump".into()],
                    },
                )
                .unwrap();
        }
        "read" => {
            let state = AppState::builder()
                .name(&name)
                .create(Create::Open)
                .open()
                .unwrap();
            report(format!("{:?}", state.snapshot().unwrap()));
        }
        "other_definition" => {
            let err = other_definition::AppState::builder()
                .name(&name)
                .create(Create::Open)
                .open()
                .unwrap_err();
            report(err);
        }
        other => panic!("unknown role {other}"),
    }
}

/// A generated updater's closure may read and write the state it updates (the lock is
/// re-entrant, the view let go while it runs); the update comes after what it wrote.
#[test]
fn an_updater_closure_may_use_its_state() {
    let name = unique_name("derive-updater");
    let state = AppState::open(&name).unwrap();
    state.set_label("x".into()).unwrap();
    let new = state
        .update_counter(|c| {
            state.set_counter(100).unwrap(); // overwritten by the update
            state
                .set_label(format!("{}y", state.label().unwrap()))
                .unwrap();
            c + state.label().unwrap().len() as u64
        })
        .unwrap();
    assert_eq!(new, 2);
    let other = AppState::open(&name).unwrap();
    assert_eq!(other.counter().unwrap(), 2);
    assert_eq!(other.label().unwrap(), "xy");
    drop((state, other));
    assert_no_segments(&name);
}

#[test]
fn typed_and_nested_updates_cross_processes() {
    let name = unique_name("derive");
    let state = AppState::open(&name).unwrap();
    state.set_counter(5).unwrap();
    state.set_label("hello".into()).unwrap();
    assert_eq!(state.update_counter(|c| c + 1).unwrap(), 6);
    state.stats().set_misses(2).unwrap();
    state
        .workers()
        .insert(
            7,
            Worker {
                pid: 7,
                jobs: vec!["a".into()],
            },
        )
        .unwrap();

    let reports = Spawn::test("child_entry", "read")
        .env("NAME", &name)
        .start()
        .wait(WATCHDOG);
    let expected = AppState {
        counter: 6,
        label: "hello".into(),
        stats: Stats { hits: 0, misses: 2 },
        workers: HashMap::from([(
            7,
            Worker {
                pid: 7,
                jobs: vec!["a".into()],
            },
        )]),
    };
    assert_eq!(reports, vec![format!("{expected:?}")]);
    assert_eq!(state.snapshot().unwrap(), expected);
    assert_eq!(state.counter().unwrap(), 6);
    assert_eq!(state.label().unwrap(), "hello");
    // The nested dicts are listed in /dev/shm under the root's name.
    let objects = shm_objects(&name);
    assert!(
        objects.contains(&format!("ultradict.{name}~stats")),
        "{objects:?}"
    );
    assert!(
        objects.contains(&format!("ultradict.{name}~workers")),
        "{objects:?}"
    );
    drop(state);
    assert_no_segments(&name);
}

#[test]
fn concurrent_update_methods_give_exact_counts() {
    const PROCESSES: u64 = 3;
    const COUNT: u64 = 2_000;
    let name = unique_name("derive-count");
    let state = AppState::builder()
        .name(&name)
        .buffer_size(8 << 10)
        .open()
        .unwrap();
    let children: Vec<_> = (0..PROCESSES)
        .map(|_| {
            Spawn::test("child_entry", "bump")
                .env("NAME", &name)
                .env("COUNT", COUNT)
                .start()
        })
        .collect();
    let pids: Vec<u32> = children.iter().map(|c| c.pid()).collect();
    for child in children {
        child.wait(WATCHDOG);
    }
    assert_eq!(state.counter().unwrap(), PROCESSES * COUNT);
    assert_eq!(state.stats().hits().unwrap(), PROCESSES * COUNT);
    let workers = state.workers().to_hashmap().unwrap();
    for pid in pids {
        assert_eq!(workers[&pid].pid, pid);
    }
    assert!(
        state.status().epoch > 1,
        "meant to cross dumps: {}",
        state.status()
    );
    drop(state);
    assert_no_segments(&name);
}

#[test]
fn another_struct_definition_cannot_attach() {
    let name = unique_name("derive-schema");
    let state = AppState::open(&name).unwrap();
    let reports = Spawn::test("child_entry", "other_definition")
        .env("NAME", &name)
        .start()
        .wait(WATCHDOG);
    let message = &reports[0];
    assert!(
        message.contains("AppState { counter: u64, label: alloc::string::String, stats: nested"),
        "{message}"
    );
    assert!(
        message.contains("AppState { counter: u64, title: alloc::string::String }"),
        "{message}"
    );
    match other_definition::AppState::open(&name) {
        Err(Error::SchemaMismatch { .. }) => {}
        other => panic!("expected a schema mismatch, got {other:?}"),
    }
    drop(state);
    assert_no_segments(&name);
}

#[test]
fn replacing_nested_values_again_and_again_leaks_nothing() {
    let name = unique_name("derive-replace");
    let state = AppState::open(&name).unwrap();
    let before = shm_objects(&name).len();
    for round in 0..10u64 {
        state
            .set_stats(Stats {
                hits: round,
                misses: round * 2,
            })
            .unwrap();
        state
            .set_workers(HashMap::from([(
                round as u32,
                Worker {
                    pid: 1,
                    jobs: vec![],
                },
            )]))
            .unwrap();
        assert_eq!(state.stats().hits().unwrap(), round);
        assert_eq!(state.workers().len().unwrap(), 1);
        // One control segment and one dump per dict, however often values are replaced.
        assert!(
            shm_objects(&name).len() <= before + 2,
            "{:?}",
            shm_objects(&name)
        );
    }
    let copy = state.snapshot().unwrap();
    state.replace(AppState { counter: 1, ..copy }).unwrap();
    assert_eq!(state.counter().unwrap(), 1);
    assert_eq!(state.stats().misses().unwrap(), 18);
    let final_state = state.close().unwrap();
    assert_eq!(final_state.counter, 1);
    assert_no_segments(&name);
}

#[test]
fn dynamic_nested_maps_are_shared_and_removed_with_their_root() {
    let name = unique_name("nested-map");
    let root: UltraDict<String, u64> = UltraDict::open(&name).unwrap();
    root.nested::<String, u64>("jobs")
        .unwrap()
        .update("count", |n| n.unwrap_or(0) + 1)
        .unwrap();
    let again: UltraDict<String, u64> = UltraDict::open(&name).unwrap();
    let jobs = again.nested::<String, u64>("jobs").unwrap();
    assert_eq!(jobs.get("count").unwrap(), Some(1));
    let deeper = jobs.nested::<u32, String>(&"deeper".to_string()).unwrap();
    deeper.insert(1, "one".into()).unwrap();
    assert!(matches!(
        root.nested::<u32, u32>("jobs"),
        Err(Error::SchemaMismatch { .. })
    ));
    assert!(shm_objects(&name).len() >= 4, "{:?}", shm_objects(&name));
    drop((jobs, deeper));
    drop((root, again));
    assert_no_segments(&name);
}

#[test]
fn persistent_trees_are_removed_by_name() {
    let name = unique_name("derive-tree");
    let state = AppState::builder()
        .name(&name)
        .lifetime(ultradict::Lifetime::Persistent)
        .open()
        .unwrap();
    state.stats().set_hits(3).unwrap();
    state.close().unwrap();
    assert!(shm_objects(&name).len() >= 3);
    let again = AppState::builder()
        .name(&name)
        .create(Create::Open)
        .open()
        .unwrap();
    assert_eq!(again.stats().hits().unwrap(), 3);
    drop(again);
    UltraDict::<u8, u8>::unlink_by_name(&name).unwrap();
    assert_no_segments(&name);
}
