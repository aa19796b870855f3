//! Waiting for changes and watching what changed, across processes.

use std::time::Duration;

use ultradict::{Change, Create, SharedDict, UltraDict};
use ultradict_test_kit::{Spawn, arg, assert_no_segments, role, thread_cpu_time, unique_name};

const WATCHDOG: Duration = Duration::from_secs(60);

#[derive(SharedDict, Default)]
struct Settings {
    mode: String,
    level: u32,
}

#[test]
fn child_entry() {
    let Some(role) = role() else { return };
    let name = arg("NAME");
    match role.as_str() {
        "write_later" => {
            let d: UltraDict<String, u32> = UltraDict::builder()
                .name(&name)
                .create(Create::Open)
                .open()
                .unwrap();
            std::thread::sleep(Duration::from_millis(300));
            d.insert("a".into(), 1).unwrap();
            d.insert("b".into(), 2).unwrap();
            d.insert("a".into(), 3).unwrap();
        }
        "big_write" => {
            let d: UltraDict<String, u32> = UltraDict::builder()
                .name(&name)
                .create(Create::Open)
                .open()
                .unwrap();
            d.extend((0..1_000).map(|i| (format!("key-{i}"), i)))
                .unwrap(); // more than the stream
        }
        "set_level" => {
            let s = Settings::builder()
                .name(&name)
                .create(Create::Open)
                .open()
                .unwrap();
            s.set_level(7).unwrap();
        }
        other => panic!("unknown role {other}"),
    }
}

#[test]
fn wait_for_change_sleeps_until_another_process_commits() {
    let name = unique_name("wait");
    let d: UltraDict<String, u32> = UltraDict::open(&name).unwrap();
    assert!(
        !d.wait_for_change(Duration::from_millis(20)).unwrap(),
        "nothing happened yet"
    );
    let child = Spawn::test("child_entry", "write_later")
        .env("NAME", &name)
        .start();
    let cpu = thread_cpu_time();
    assert!(d.wait_for_change(Duration::from_secs(30)).unwrap());
    let cpu = thread_cpu_time() - cpu;
    assert!(
        cpu < Duration::from_millis(100),
        "waiting burned {cpu:?} of CPU"
    );
    child.wait(WATCHDOG);
    assert_eq!(d.get("a").unwrap(), Some(3));
    // Caught up: no news until the next commit.
    assert!(!d.wait_for_change(Duration::from_millis(10)).unwrap());
    drop(d);
    assert_no_segments(&name);
}

#[test]
fn a_watcher_names_the_changed_keys() {
    let name = unique_name("watcher");
    let d: UltraDict<String, u32> = UltraDict::builder()
        .name(&name)
        .buffer_size(4096)
        .open()
        .unwrap();
    let mut watcher = d.watch();
    assert_eq!(watcher.poll().unwrap(), None);
    Spawn::test("child_entry", "write_later")
        .env("NAME", &name)
        .start()
        .wait(WATCHDOG);
    assert_eq!(
        watcher.wait(Duration::from_secs(30)).unwrap(),
        Some(Change::Keys(vec!["a".to_string(), "b".to_string()]))
    );
    assert_eq!(watcher.wait(Duration::from_millis(10)).unwrap(), None);
    // A write that goes through a full dump: the records in between are gone.
    Spawn::test("child_entry", "big_write")
        .env("NAME", &name)
        .start()
        .wait(WATCHDOG);
    assert_eq!(
        watcher.wait(Duration::from_secs(30)).unwrap(),
        Some(Change::Everything)
    );
    d.remove("a").unwrap();
    assert_eq!(
        watcher.poll().unwrap(),
        Some(Change::Keys(vec!["a".to_string()]))
    );
    drop(d);
    assert_no_segments(&name);
}

#[test]
fn a_derived_state_reports_field_names() {
    let name = unique_name("watch-fields");
    let s = Settings::open(&name).unwrap();
    let mut watcher = s.watch();
    s.set_mode("fast".into()).unwrap();
    Spawn::test("child_entry", "set_level")
        .env("NAME", &name)
        .start()
        .wait(WATCHDOG);
    assert_eq!(
        watcher.wait(Duration::from_secs(30)).unwrap(),
        Some(Change::Keys(vec!["mode", "level"]))
    );
    assert!(
        s.wait_for_change(Duration::from_millis(1)).unwrap(),
        "this handle has not read yet"
    );
    assert_eq!(s.level().unwrap(), 7);
    assert!(!s.wait_for_change(Duration::from_millis(1)).unwrap());
    drop(s);
    assert_no_segments(&name);
}
