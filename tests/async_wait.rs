//! Awaiting changes from tokio (the `tokio` feature): waiters across real processes, for maps
//! and derived states, cancelled waits, many waiters in one runtime, no lost wake-up.

use std::time::Duration;

use ultradict::{Change, Create, SharedDict, UltraDict};
use ultradict_test_kit::{Spawn, arg, assert_no_segments, report, role, unique_name};

const WATCHDOG: Duration = Duration::from_secs(60);

type Dict = UltraDict<u32, u64>;

#[derive(SharedDict, Default, Debug)]
struct Config {
    version: u64,
    greeting: String,
}

#[test]
fn child_entry() {
    let Some(role) = role() else { return };
    let name = arg("NAME");
    match role.as_str() {
        // Writes key i after the parent asked for it (stdin), `ROUNDS` times.
        "writer" => {
            use std::io::BufRead;
            let d: Dict = UltraDict::builder()
                .name(&name)
                .create(Create::Open)
                .open()
                .unwrap();
            report("ready");
            for line in std::io::stdin().lock().lines() {
                let key: u32 = line.unwrap().parse().unwrap();
                d.insert(key, u64::from(key)).unwrap();
            }
        }
        "config_writer" => {
            let config = Config::builder()
                .name(&name)
                .create(Create::Open)
                .open()
                .unwrap();
            std::thread::sleep(Duration::from_millis(50));
            config.set_version(2).unwrap();
        }
        other => panic!("unknown role {other}"),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn waiters_in_one_runtime_see_commits_of_another_process() {
    let name = unique_name("async");
    let d = std::sync::Arc::new(Dict::open(&name).unwrap());
    let mut writer = Spawn::test("child_entry", "writer")
        .env("NAME", &name)
        .start();
    writer.wait_for_report("ready", WATCHDOG);
    runtime().block_on(async {
        // Nothing happens: the wait times out.
        assert!(
            !d.wait_for_change_async(Duration::from_millis(30))
                .await
                .unwrap()
        );
        // Fifty waiters, one commit in another process: every one of them wakes.
        let waiters: Vec<_> = (0..50)
            .map(|_| {
                let d = std::sync::Arc::clone(&d);
                tokio::spawn(async move { d.wait_for_change_async(WATCHDOG).await.unwrap() })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(20)).await;
        writer.send("1");
        for waiter in waiters {
            assert!(waiter.await.unwrap());
        }
        assert_eq!(d.get(&1).unwrap(), Some(1));
    });
    drop(writer.kill_and_collect());
    drop(d);
    assert_no_segments(&name);
}

#[test]
fn cancelled_waits_lose_nothing_and_no_wake_up_is_lost() {
    let name = unique_name("async-cancel");
    let d = Dict::open(&name).unwrap();
    let mut writer = Spawn::test("child_entry", "writer")
        .env("NAME", &name)
        .start();
    writer.wait_for_report("ready", WATCHDOG);
    runtime().block_on(async {
        // Waits dropped before anything happened.
        for _ in 0..20 {
            tokio::select! {
                _ = d.wait_for_change_async(WATCHDOG) => panic!("nothing was committed"),
                _ = tokio::time::sleep(Duration::from_millis(1)) => {}
            }
        }
        // A watcher awaited round after round while the other process commits: every commit
        // is reported, in order, whether it came before or during the wait.
        let mut watcher = d.watch();
        for key in 0..200u32 {
            writer.send(&key.to_string());
            let mut seen = Vec::new();
            while !seen.contains(&key) {
                match tokio::time::timeout(WATCHDOG, watcher.changed()).await {
                    Ok(Ok(Change::Keys(keys))) => seen.extend(keys),
                    other => panic!("round {key}: {other:?}"),
                }
            }
            assert_eq!(seen, vec![key], "one commit per round");
        }
    });
    drop(writer.kill_and_collect());
    drop(d);
    assert_no_segments(&name);
}

#[test]
fn a_derived_state_is_awaited_too() {
    let name = unique_name("async-config");
    let config = Config::open(&name).unwrap();
    let child = Spawn::test("child_entry", "config_writer")
        .env("NAME", &name)
        .start();
    runtime().block_on(async {
        let mut watcher = config.watch();
        let change = tokio::time::timeout(WATCHDOG, watcher.changed())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(change, Change::Keys(vec!["version"]));
        assert_eq!(config.version().unwrap(), 2);
        assert!(
            !config
                .wait_for_change_async(Duration::from_millis(20))
                .await
                .unwrap()
        );
    });
    child.wait(WATCHDOG);
    drop(config);
    assert_no_segments(&name);
}

#[test]
fn a_forked_child_awaits_with_a_helper_of_its_own() {
    let name = unique_name("async-fork");
    let handle: Dict = UltraDict::builder().name(&name).open().unwrap();
    // The parent's first async wait starts its helper thread, which a forked child lacks.
    let rt = runtime();
    assert!(
        !rt.block_on(handle.wait_for_change_async(Duration::from_millis(10)))
            .unwrap()
    );
    drop(rt);
    let d = &handle;
    let child = ultradict_test_kit::fork(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let woke = std::thread::scope(|scope| {
            scope.spawn(|| {
                std::thread::sleep(Duration::from_millis(50));
                d.insert(1, 1).unwrap();
            });
            // The wait's own timeout is longer than this one: only a wake-up ends it in time.
            rt.block_on(async {
                tokio::time::timeout(Duration::from_secs(10), d.wait_for_change_async(WATCHDOG))
                    .await
            })
        });
        i32::from(!matches!(woke, Ok(Ok(true))))
    });
    assert_eq!(ultradict_test_kit::wait_forked(child, WATCHDOG), 0);
    assert_eq!(handle.get(&1).unwrap(), Some(1));
    drop(handle);
    assert_no_segments(&name);
}
