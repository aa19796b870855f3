//! Opening, naming, checking and removing dicts, and the map API's behaviour, through the
//! public API. Where another process matters, a child re-executes this binary.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;

use ultradict::{Create, Error, Lifetime, UltraDict};
use ultradict_test_kit::{
    Spawn, arg, assert_no_segments, locked_increments, report, role, shm_objects, unique_name,
};

const WATCHDOG: Duration = Duration::from_secs(60);

#[test]
fn child_entry() {
    let Some(role) = role() else { return };
    let name = arg("NAME");
    match role.as_str() {
        "open_as_strings" => {
            let err = UltraDict::<u64, String>::builder()
                .name(&name)
                .create(Create::Open)
                .open()
                .unwrap_err();
            report(err);
        }
        "dump_state" => {
            let d: UltraDict<u32, String> = UltraDict::builder()
                .name(&name)
                .create(Create::Open)
                .open()
                .unwrap();
            let mut entries: Vec<_> = d.iter().unwrap().collect();
            entries.sort();
            report(format!("{entries:?} epoch {}", d.status().epoch));
        }
        "attach_and_hold" => {
            let d: UltraDict<u32, u32> = UltraDict::builder()
                .name(&name)
                .create(Create::Open)
                .open()
                .unwrap();
            d.insert(2, 2).unwrap();
            report("attached");
            // Wait for the parent to close its handle, then close ours.
            while d.get(&1000).unwrap().is_none() {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        "fill_shm" => {
            // Runs with a 1 MiB tmpfs over /dev/shm: fill it until a write cannot get space.
            let d: UltraDict<u32, String> = UltraDict::builder()
                .name(&name)
                .buffer_size(64 << 10)
                .open()
                .unwrap();
            let mut committed = 0u32;
            let err = loop {
                match d.insert(committed, "v".repeat(20_000)) {
                    Ok(_) => committed += 1,
                    Err(err) => break err,
                }
                assert!(committed < 1_000, "a 1 MiB /dev/shm never filled up");
            };
            assert!(matches!(err, Error::OutOfSpace { .. }), "{err:?}");
            // Nothing was lost and nothing half-made is visible.
            assert_eq!(d.len().unwrap(), committed as usize);
            assert_eq!(d.get(&committed).unwrap(), None);
            for key in 0..committed {
                assert_eq!(d.get(&key).unwrap().map(|v| v.len()), Some(20_000));
            }
            let fresh: UltraDict<u32, String> = UltraDict::open(&name).unwrap();
            assert_eq!(fresh.len().unwrap(), committed as usize);
            // Freeing space makes writes work again.
            d.clear().unwrap();
            d.insert(0, "small".into()).unwrap();
            report(format!("committed {committed} then: {err}"));
        }
        "fill_shm_under_a_stream" => {
            // Runs with a 1 MiB tmpfs over /dev/shm. A dump with a stream of its own, whose
            // space is reserved only as records reach it; then /dev/shm filled by something
            // else: the write that needs stream space fails, and nothing is lost.
            let d: UltraDict<u32, String> = UltraDict::builder()
                .name(&name)
                .buffer_size(64 << 10)
                .open()
                .unwrap();
            d.extend((0..100).map(|key| (key, "v".repeat(1_000))))
                .unwrap();
            d.dump().unwrap();
            let stream = d.status().buffer_size;
            assert!(
                stream > 64 << 10,
                "the dump has a stream of its own: {stream} bytes"
            );
            let filler = "/dev/shm/filler";
            let mut file = std::fs::File::create(filler).unwrap();
            let chunk = vec![1u8; 4096];
            while std::io::Write::write_all(&mut file, &chunk).is_ok() {}
            drop(file);
            let err = d.insert(1_000, "new".into()).unwrap_err();
            assert!(matches!(err, Error::OutOfSpace { .. }), "{err:?}");
            assert_eq!(d.get(&1_000).unwrap(), None);
            assert_eq!(d.len().unwrap(), 100);
            let fresh: UltraDict<u32, String> = UltraDict::open(&name).unwrap();
            assert_eq!(fresh.len().unwrap(), 100);
            assert_eq!(fresh.get(&99).unwrap().map(|v| v.len()), Some(1_000));
            // Space again: the same write goes through, into the same stream.
            std::fs::remove_file(filler).unwrap();
            let epoch = d.status().epoch;
            d.insert(1_000, "new".into()).unwrap();
            assert_eq!(d.status().epoch, epoch);
            assert_eq!(fresh.get(&1_000).unwrap().as_deref(), Some("new"));
            report(format!("stream of {stream} bytes, then: {err}"));
        }
        "attach_and_wait" => {
            let _d = UltraDict::<u32, u32>::builder()
                .name(&name)
                .create(Create::Open)
                .open()
                .unwrap();
            report("attached");
            std::thread::sleep(Duration::from_secs(600));
        }
        "intruder" => {
            // Runs as `nobody`: may neither attach nor remove another user's dict.
            let open = UltraDict::<u32, u32>::builder()
                .name(&name)
                .create(Create::Open)
                .open();
            report(format!(
                "open: {}",
                open.map(|_| "attached".to_string())
                    .unwrap_or_else(|e| format!("{e:?}"))
            ));
            let either = UltraDict::<u32, u32>::open(&name);
            report(format!(
                "open_or_create: {}",
                either
                    .map(|_| "attached".to_string())
                    .unwrap_or_else(|e| format!("{e:?}"))
            ));
            let unlink = UltraDict::<u32, u32>::unlink_by_name(&name);
            report(format!("unlink: {unlink:?}"));
        }
        other => panic!("unknown role {other}"),
    }
}

#[test]
fn another_user_cannot_attach_or_remove() {
    use std::os::unix::process::CommandExt;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        println!("skipped: needs root to start a child as `nobody`");
        return;
    }
    let name = unique_name("intruder");
    let d = UltraDict::<u32, u32>::open(&name).unwrap();
    d.insert(1, 1).unwrap();
    let exe = std::env::current_exe().unwrap();
    let output = std::process::Command::new(exe)
        .args(["--exact", "child_entry", "--nocapture", "--test-threads=1"])
        .env(ultradict_test_kit::ROLE_VAR, "intruder")
        .env("ULTRADICT_TEST_NAME", &name)
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{out}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(out.contains("open: PermissionDenied"), "{out}");
    assert!(out.contains("open_or_create: PermissionDenied"), "{out}");
    assert!(out.contains("unlink: Err(PermissionDenied"), "{out}");
    assert_eq!(d.get(&1).unwrap(), Some(1));
    drop(d);
    assert_no_segments(&name);
}

/// Runs this test binary's `role` in a private mount namespace with a 1 MiB tmpfs over
/// /dev/shm, and returns its reports; `None` (the test then passes without checking) where
/// that cannot be set up (not root, or no `unshare`).
fn with_a_tiny_dev_shm(role: &str, name: &str) -> Option<Vec<String>> {
    let probe = std::process::Command::new("unshare")
        .args(["-m", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /dev/shm"])
        .status();
    if !probe.is_ok_and(|status| status.success()) {
        println!("skipped: cannot mount a private tmpfs over /dev/shm (not root?)");
        return None;
    }
    let wrapper = [
        "unshare",
        "-m",
        "sh",
        "-c",
        "mount -t tmpfs -o size=1m tmpfs /dev/shm && exec \"$@\"",
        "sh",
    ];
    let reports = Spawn::test_under(&wrapper, "child_entry", role)
        .env("NAME", name)
        .start()
        .wait(WATCHDOG);
    println!("{reports:?}");
    // The child's /dev/shm was private: nothing of it is here.
    assert_no_segments(name);
    Some(reports)
}

#[test]
fn a_full_dev_shm_is_an_error_and_loses_nothing() {
    let name = unique_name("fullshm");
    let Some(reports) = with_a_tiny_dev_shm("fill_shm", &name) else {
        return;
    };
    assert!(reports[0].starts_with("committed "), "{reports:?}");
    assert!(reports[0].contains("no space in /dev/shm"), "{reports:?}");
}

#[test]
fn a_full_dev_shm_under_a_dumps_stream_is_an_error_and_loses_nothing() {
    let name = unique_name("fullstream");
    let Some(reports) = with_a_tiny_dev_shm("fill_shm_under_a_stream", &name) else {
        return;
    };
    assert!(reports[0].starts_with("stream of "), "{reports:?}");
    assert!(reports[0].contains("no space in /dev/shm"), "{reports:?}");
}

#[test]
fn create_and_open_semantics() {
    let name = unique_name("create");
    let missing = UltraDict::<u32, u32>::builder()
        .name(&name)
        .create(Create::Open)
        .open();
    assert!(
        matches!(missing, Err(Error::NotFound { .. })),
        "{missing:?}"
    );

    let first = UltraDict::<u32, u32>::builder()
        .name(&name)
        .create(Create::New)
        .open()
        .unwrap();
    first.insert(1, 10).unwrap();
    let again = UltraDict::<u32, u32>::builder()
        .name(&name)
        .create(Create::New)
        .open();
    assert!(
        matches!(again, Err(Error::AlreadyExists { .. })),
        "{again:?}"
    );

    let opened = UltraDict::<u32, u32>::builder()
        .name(&name)
        .create(Create::Open)
        .open()
        .unwrap();
    let either = UltraDict::<u32, u32>::open(&name).unwrap();
    assert_eq!(opened.get(&1).unwrap(), Some(10));
    assert_eq!(either.get(&1).unwrap(), Some(10));
    drop((first, opened, either));
    assert_no_segments(&name);
}

#[test]
fn unnamed_dicts_get_unique_names() {
    let a = UltraDict::<u32, u32>::builder().open().unwrap();
    let b = UltraDict::<u32, u32>::builder().open().unwrap();
    assert_ne!(a.name(), b.name());
    let shared = UltraDict::<u32, u32>::open(a.name()).unwrap();
    a.insert(1, 1).unwrap();
    assert_eq!(shared.get(&1).unwrap(), Some(1));
    let names = (a.name().to_owned(), b.name().to_owned());
    drop((a, b, shared));
    assert_no_segments(&names.0);
    assert_no_segments(&names.1);
}

#[test]
fn bad_names_are_errors_not_paths() {
    let too_long = "x".repeat(ultradict::MAX_NAME_LEN + 1);
    for bad in [
        "../x",
        "",
        "a/b",
        "/etc",
        ".hidden",
        "two words",
        "a~b",
        too_long.as_str(),
    ] {
        let result = UltraDict::<u32, u32>::open(bad);
        assert!(
            matches!(result, Err(Error::InvalidName { .. })),
            "{bad:?} gave {result:?}"
        );
        assert!(matches!(
            UltraDict::<u32, u32>::unlink_by_name(bad),
            Err(Error::InvalidName { .. })
        ));
    }
}

#[test]
fn other_types_cannot_attach_and_the_error_names_both() {
    let name = unique_name("types");
    let d = UltraDict::<u64, u64>::open(&name).unwrap();
    let reports = Spawn::test("child_entry", "open_as_strings")
        .env("NAME", &name)
        .start()
        .wait(WATCHDOG);
    let message = &reports[0];
    assert!(message.contains("UltraDict<u64, u64>"), "{message}");
    assert!(
        message.contains("UltraDict<u64, alloc::string::String>"),
        "{message}"
    );
    // In this process too, as a typed error.
    match UltraDict::<u64, String>::open(&name) {
        Err(Error::SchemaMismatch {
            expected, found, ..
        }) => {
            assert_eq!(found, "UltraDict<u64, u64>");
            assert_eq!(expected, "UltraDict<u64, alloc::string::String>");
        }
        other => panic!("expected a schema mismatch, got {other:?}"),
    }
    drop(d);
    assert_no_segments(&name);
}

#[test]
fn a_foreign_object_under_the_name_is_an_error() {
    let name = unique_name("foreign");
    let path = format!("/dev/shm/ultradict.{name}");
    std::fs::write(&path, vec![0xAB; 20_000]).unwrap();
    let result = UltraDict::<u32, u32>::open(&name);
    assert!(matches!(result, Err(Error::Foreign { .. })), "{result:?}");
    // Too small to be a control block, and never initialized.
    std::fs::write(&path, b"hello").unwrap();
    let result = UltraDict::<u32, u32>::builder()
        .name(&name)
        .open_timeout(Duration::from_millis(50))
        .open();
    assert!(matches!(result, Err(Error::Foreign { .. })), "{result:?}");
    // Empty: creators build a dict under a private name, so this is not one of ours either.
    std::fs::write(&path, b"").unwrap();
    let result = UltraDict::<u32, u32>::builder()
        .name(&name)
        .open_timeout(Duration::from_millis(50))
        .open();
    assert!(matches!(result, Err(Error::Foreign { .. })), "{result:?}");
    // The file is untouched by the failed opens; unlink_by_name removes it.
    assert!(std::path::Path::new(&path).exists());
    UltraDict::<u32, u32>::unlink_by_name(&name).unwrap();
    assert_no_segments(&name);
}

#[test]
fn the_creators_parameters_win_and_explicit_differences_are_errors() {
    let name = unique_name("params");
    let creator = UltraDict::<u32, u32>::builder()
        .name(&name)
        .buffer_size(4096)
        .full_dump_size(1 << 20)
        .open()
        .unwrap();
    let implicit = UltraDict::<u32, u32>::open(&name).unwrap();
    assert_eq!(implicit.status().buffer_size, 4096);
    assert_eq!(implicit.status().full_dump_size, Some(1 << 20));
    let wrong_buffer = UltraDict::<u32, u32>::builder()
        .name(&name)
        .buffer_size(8192)
        .open();
    assert!(
        matches!(
            &wrong_buffer,
            Err(Error::ParameterMismatch {
                parameter: "buffer_size",
                ..
            })
        ),
        "{wrong_buffer:?}"
    );
    let wrong_dump = UltraDict::<u32, u32>::builder()
        .name(&name)
        .full_dump_size(4096)
        .open();
    assert!(matches!(
        &wrong_dump,
        Err(Error::ParameterMismatch {
            parameter: "full_dump_size",
            ..
        })
    ));
    let wrong_lifetime = UltraDict::<u32, u32>::builder()
        .name(&name)
        .lifetime(Lifetime::Persistent)
        .open();
    assert!(matches!(
        &wrong_lifetime,
        Err(Error::ParameterMismatch {
            parameter: "lifetime",
            ..
        })
    ));
    let same = UltraDict::<u32, u32>::builder()
        .name(&name)
        .buffer_size(4096)
        .open();
    assert!(same.is_ok());
    let bad = UltraDict::<u32, u32>::builder().buffer_size(10).open();
    assert!(matches!(
        bad,
        Err(Error::InvalidOption {
            option: "buffer_size",
            ..
        })
    ));
    drop((creator, implicit, same));
    assert_no_segments(&name);
}

#[test]
fn a_dump_too_large_for_its_fixed_capacity_changes_nothing_anywhere() {
    let name = unique_name("capacity");
    let d = UltraDict::<u32, String>::builder()
        .name(&name)
        .buffer_size(1024)
        .full_dump_size(8192)
        .open()
        .unwrap();
    d.insert(1, "one".into()).unwrap();
    d.insert(2, "two".into()).unwrap();
    let before = Spawn::test("child_entry", "dump_state")
        .env("NAME", &name)
        .start()
        .wait(WATCHDOG);
    let status_before = d.status();
    let result = d.insert(3, "x".repeat(20_000));
    assert!(
        matches!(result, Err(Error::DumpTooSmall { capacity: 8192, .. })),
        "{result:?}"
    );
    // Nothing changed, here or in another process, and no dump segment was left behind.
    assert_eq!(d.get(&3).unwrap(), None);
    assert_eq!(d.len().unwrap(), 2);
    assert_eq!(d.status().epoch, status_before.epoch);
    assert_eq!(d.status().committed_offset, status_before.committed_offset);
    let after = Spawn::test("child_entry", "dump_state")
        .env("NAME", &name)
        .start()
        .wait(WATCHDOG);
    assert_eq!(before, after);
    assert_eq!(shm_objects(&name), vec![format!("ultradict.{name}")]);
    // A value that fits still goes through.
    d.insert(3, "three".into()).unwrap();
    assert_eq!(d.get(&3).unwrap().as_deref(), Some("three"));
    drop(d);
    assert_no_segments(&name);
}

#[test]
fn last_close_removes_every_segment() {
    let name = unique_name("lastclose");
    let d = UltraDict::<u32, u32>::builder()
        .name(&name)
        .buffer_size(256)
        .open()
        .unwrap();
    for i in 0..100 {
        d.insert(i, i).unwrap(); // through several dumps
    }
    assert!(d.status().epoch > 0);
    let mut child = Spawn::test("child_entry", "attach_and_hold")
        .env("NAME", &name)
        .start();
    child.wait_for_report("attached", WATCHDOG);
    let status = d.status();
    assert_eq!(status.attached_pids.len(), 2, "{status}");
    d.insert(1000, 0).unwrap();
    let contents = d.close().unwrap();
    assert_eq!(contents.len(), 101);
    assert!(
        !shm_objects(&name).is_empty(),
        "the child still has it open"
    );
    child.wait(WATCHDOG);
    assert_no_segments(&name);
}

#[test]
fn persistent_dicts_stay_until_unlinked() {
    let name = unique_name("persistent");
    let d = UltraDict::<u32, u32>::builder()
        .name(&name)
        .lifetime(Lifetime::Persistent)
        .open()
        .unwrap();
    d.insert(1, 1).unwrap();
    d.dump().unwrap();
    d.insert(2, 2).unwrap();
    drop(d);
    assert_eq!(shm_objects(&name).len(), 2, "control and dump stay");
    let again = UltraDict::<u32, u32>::open(&name).unwrap();
    assert_eq!(again.get(&1).unwrap(), Some(1));
    assert_eq!(again.get(&2).unwrap(), Some(2));
    drop(again);
    UltraDict::<u32, u32>::unlink_by_name(&name).unwrap();
    assert_no_segments(&name);
}

#[test]
fn creator_lifetime_removes_the_dict_when_the_creator_closes() {
    let name = unique_name("creator");
    let creator = UltraDict::<u32, u32>::builder()
        .name(&name)
        .lifetime(Lifetime::Creator)
        .open()
        .unwrap();
    let other = UltraDict::<u32, u32>::open(&name).unwrap();
    drop(creator);
    assert_no_segments(&name);
    // The remaining handle keeps working on its mapping.
    other.insert(1, 1).unwrap();
    assert_eq!(other.get(&1).unwrap(), Some(1));
}

#[test]
fn segments_are_private_to_their_owner() {
    let name = unique_name("mode");
    let d = UltraDict::<u32, u32>::open(&name).unwrap();
    d.insert(1, 1).unwrap();
    d.dump().unwrap();
    for object in shm_objects(&name) {
        let mode = std::fs::metadata(format!("/dev/shm/{object}"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{object}");
    }
    drop(d);
    assert_no_segments(&name);
}

#[test]
fn behaves_like_a_hashmap() {
    let name = unique_name("hashmap");
    let d = UltraDict::<String, u64>::builder()
        .name(&name)
        .buffer_size(512)
        .open()
        .unwrap();
    let other = UltraDict::<String, u64>::open(&name).unwrap();
    let mut model = HashMap::new();
    for round in 0..400u64 {
        let key = format!("k{}", round % 37);
        match round % 7 {
            0..=2 => assert_eq!(
                d.insert(key.clone(), round).unwrap(),
                model.insert(key, round)
            ),
            3 => assert_eq!(d.remove(&key).unwrap(), model.remove(&key)),
            4 => {
                let new = d.update(&key, |v| v.unwrap_or(0) + 1000).unwrap();
                let expected = model.get(&key).copied().unwrap_or(0) + 1000;
                model.insert(key, expected);
                assert_eq!(new, expected);
            }
            5 => {
                let got = d.get_or_insert_with(key.clone(), || round).unwrap();
                assert_eq!(got, *model.entry(key).or_insert(round));
            }
            _ => {
                let batch: Vec<_> = (0..5)
                    .map(|i| (format!("b{}", (round + i) % 11), round + i))
                    .collect();
                model.extend(batch.clone());
                d.extend(batch).unwrap();
            }
        }
        if round == 200 {
            d.clear().unwrap();
            model.clear();
        }
        assert_eq!(other.len().unwrap(), model.len());
        assert_eq!(other.is_empty().unwrap(), model.is_empty());
    }
    assert_eq!(other.to_hashmap().unwrap(), model);
    let mut keys = other.keys().unwrap();
    keys.sort();
    let mut model_keys: Vec<_> = model.keys().cloned().collect();
    model_keys.sort();
    assert_eq!(keys, model_keys);
    assert_eq!(
        other.values().unwrap().iter().sum::<u64>(),
        model.values().sum::<u64>()
    );
    assert!(other.contains_key("k1").unwrap() == model.contains_key("k1"));
    assert!(d.status().epoch > 3, "meant to cross dumps: {}", d.status());
    // A forced reload rebuilds the same view.
    other.load(true).unwrap();
    assert_eq!(other.to_hashmap().unwrap(), model);
    drop((d, other));
    assert_no_segments(&name);
}

#[test]
fn status_reports_the_shared_state() {
    let name = unique_name("status");
    let d = UltraDict::<u32, u32>::builder()
        .name(&name)
        .buffer_size(4096)
        .open()
        .unwrap();
    d.insert(1, 1).unwrap();
    let status = d.status();
    assert_eq!(status.name, name);
    assert_eq!(status.epoch, 0);
    assert!(status.buffer_used > 0);
    assert_eq!(status.records, 1);
    assert_eq!(status.attached_pids, vec![std::process::id()]);
    assert!(status.lock_holder.is_none());
    {
        let _guard = d.lock().unwrap();
        let held = d.status().lock_holder.expect("held");
        assert_eq!(held.pid, std::process::id());
        assert!(held.since.is_some());
    }
    d.dump().unwrap();
    let status = d.status();
    assert_eq!((status.epoch, status.dumps, status.buffer_used), (1, 1, 0));
    let text = status.to_string();
    for needle in [
        name.as_str(),
        "epoch",
        "UltraDict<u32, u32>",
        "lock              free",
        "dump",
    ] {
        assert!(text.contains(needle), "{needle:?} missing from\n{text}");
    }
    drop(d);
    assert_no_segments(&name);
}

#[test]
fn threads_share_a_handle_and_its_lock() {
    let name = unique_name("threads");
    let d = Arc::new(UltraDict::<u32, u64>::open(&name).unwrap());
    locked_increments(&d, 4, 2_000);
    assert_eq!(d.get(&0).unwrap(), Some(8_000));
    drop(d);
    assert_no_segments(&name);
}

#[test]
fn lock_errors_carry_the_holder() {
    let name = unique_name("lockerr");
    let d = Arc::new(UltraDict::<u32, u32>::open(&name).unwrap());
    let guard = d.lock().unwrap();
    let other = Arc::clone(&d);
    std::thread::spawn(move || {
        let pid = std::process::id();
        match other.try_lock() {
            Err(Error::WouldBlock { holder_pid, .. }) => assert_eq!(holder_pid, pid),
            result => panic!("expected WouldBlock, got {result:?}"),
        }
        match other.lock_timeout(Duration::from_millis(30)) {
            Err(Error::LockTimeout {
                holder_pid, waited, ..
            }) => {
                assert_eq!(holder_pid, pid);
                assert!(waited >= Duration::from_millis(30));
            }
            result => panic!("expected LockTimeout, got {result:?}"),
        }
    })
    .join()
    .unwrap();
    // Another handle in the holding thread would deadlock: it is an error instead.
    let second = UltraDict::<u32, u32>::open(&name).unwrap();
    assert!(matches!(
        second.try_lock(),
        Err(Error::LockedByOtherHandle { .. })
    ));
    drop(guard);
    drop(second.try_lock().unwrap());
    drop((d, second));
    assert_no_segments(&name);
}

#[test]
fn closures_may_use_the_dict_they_update() {
    let name = unique_name("reentrant");
    let d = UltraDict::<String, u64>::open(&name).unwrap();
    d.insert("step".into(), 5).unwrap();
    let total = d
        .update("total", |t| {
            // Reads and writes from inside the critical section do not deadlock.
            let step = d.get("step").unwrap().unwrap_or(0);
            d.insert("seen".into(), 1).unwrap();
            t.unwrap_or(0) + step
        })
        .unwrap();
    assert_eq!(total, 5);
    let made = d
        .get_or_insert_with("lazy".into(), || d.get("step").unwrap().unwrap() * 2)
        .unwrap();
    assert_eq!(made, 10);
    assert_eq!(d.get("seen").unwrap(), Some(1));
    drop(d);
    assert_no_segments(&name);
}

/// Every process maps the archive part of a dump read-only, so that its own stray writes
/// fault instead of corrupting what every reader validated: a small dict's dump, which has no
/// stream of its own (it was mapped writable), and a large one's, whose stream part stays
/// writable for the writers.
#[test]
fn dumps_are_mapped_read_only_but_for_their_stream() {
    for entries in [10u32, 5_000] {
        let name = unique_name("read-only-dump");
        let d = UltraDict::<u32, u32>::builder()
            .name(&name)
            .buffer_size(4096)
            .open()
            .unwrap();
        d.extend((0..entries).map(|k| (k, k))).unwrap();
        d.dump().unwrap();
        let reader = UltraDict::<u32, u32>::open(&name).unwrap();
        assert_eq!(reader.get(&1).unwrap(), Some(1));
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let dump = format!("ultradict.{name}~dump");
        // address, permissions, offset, device, inode, path
        let mappings: Vec<Vec<&str>> = maps
            .lines()
            .filter(|line| line.contains(&dump))
            .map(|line| line.split_whitespace().collect())
            .collect();
        assert!(!mappings.is_empty(), "{maps}");
        for fields in &mappings {
            if u64::from_str_radix(fields[2], 16).unwrap() == 0 {
                assert!(!fields[1].contains('w'), "{entries}: {fields:?}");
            }
        }
        let stream_writable = mappings.iter().any(|fields| fields[1].contains('w'));
        assert_eq!(stream_writable, entries > 10, "{entries}: {mappings:?}");
        drop((d, reader));
        assert_no_segments(&name);
    }
}

/// `Duration::MAX` is a timeout that never runs out, wherever a timeout is taken: it used to
/// panic on adding it to the clock.
#[test]
fn duration_max_waits_forever_without_panicking() {
    use std::time::Duration;
    let name = unique_name("duration-max");
    let d = UltraDict::<u32, u32>::builder()
        .name(&name)
        .open_timeout(Duration::MAX)
        .open()
        .unwrap();
    let e = UltraDict::<u32, u32>::builder()
        .name(&name)
        .open_timeout(Duration::MAX)
        .open()
        .unwrap();
    std::thread::scope(|scope| {
        let guard = d.lock().unwrap();
        let waiter = scope.spawn(|| {
            assert!(e.wait_for_change(Duration::MAX).unwrap());
            // Contended: the other thread still holds the lock for a while.
            drop(e.lock_timeout(Duration::MAX).unwrap());
        });
        std::thread::sleep(Duration::from_millis(50));
        d.insert(1, 1).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        drop(guard);
        waiter.join().unwrap();
    });
    drop((d, e));
    assert_no_segments(&name);
}

/// What an `update`'s closure writes comes before the update, even when it writes the same
/// key or forces full dumps (a new epoch) in between, and other threads of the process keep
/// reading meanwhile; a second handle sees the update's value last.
#[test]
fn an_update_comes_after_what_its_closure_wrote() {
    let name = unique_name("update-after");
    let d = UltraDict::<u32, u64>::builder()
        .name(&name)
        .buffer_size(512)
        .open()
        .unwrap();
    let other = UltraDict::<u32, u64>::open(&name).unwrap();
    d.insert(0, 7).unwrap();
    let stop = std::sync::atomic::AtomicBool::new(false);
    // Stops the reader however the rounds end (a failed assertion too).
    struct Stop<'a>(&'a std::sync::atomic::AtomicBool);
    impl Drop for Stop<'_> {
        fn drop(&mut self) {
            self.0.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }
    std::thread::scope(|scope| {
        // Another thread of this process reads (and catches up) throughout.
        let reader = scope.spawn(|| {
            let mut reads = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                assert!(other.get(&0).unwrap().is_some());
                reads += 1;
            }
            reads
        });
        let stopping = Stop(&stop);
        for round in 0..50u64 {
            let epoch = d.status().epoch;
            let new = d
                .update(&0, |seen| {
                    // Overwritten by the update, and enough records to need a full dump.
                    d.insert(0, 1_000_000).unwrap();
                    for i in 0..200 {
                        d.insert(1 + i % 39, round).unwrap();
                    }
                    seen.unwrap() + 1
                })
                .unwrap();
            assert_eq!(new, 8 + round);
            assert!(
                d.status().epoch > epoch,
                "the closure's writes needed a dump"
            );
            assert_eq!(d.get(&0).unwrap(), Some(8 + round));
            assert_eq!(other.get(&0).unwrap(), Some(8 + round));
            assert_eq!(other.get(&39).unwrap(), Some(round));
        }
        drop(stopping);
        assert!(reader.join().unwrap() > 0);
    });
    drop((d, other));
    assert_no_segments(&name);
}

#[test]
fn a_removed_dict_never_touches_its_successor() {
    let name = unique_name("successor");
    let old = UltraDict::<u32, u32>::builder()
        .name(&name)
        .buffer_size(256)
        .open()
        .unwrap();
    old.insert(1, 1).unwrap();
    old.unlink().unwrap();
    // A new dict under the same name, while the old handle keeps reading its own mapping.
    let new = UltraDict::<u32, u32>::builder()
        .name(&name)
        .buffer_size(256)
        .open()
        .unwrap();
    let mut refused = 0;
    for i in 0..50 {
        new.insert(i, 100 + i).unwrap(); // through many dumps
        // The old handle may append to its stream, but creates nothing in /dev/shm: once it
        // would need a dump, it is told its dict was removed.
        match old.insert(i + 10, i) {
            Ok(_) => {}
            Err(Error::Removed { name: removed }) => {
                assert_eq!(removed, name);
                refused += 1;
            }
            Err(other) => panic!("{other:?}"),
        }
    }
    assert!(refused > 0, "a 256-byte stream needs dumps");
    assert!(old.status().removed);
    assert_eq!(old.get(&1).unwrap(), Some(1), "old handles keep reading");
    let reader = UltraDict::<u32, u32>::open(&name).unwrap();
    assert_eq!(reader.get(&10).unwrap(), Some(110));
    assert_eq!(
        shm_objects(&name).len(),
        2,
        "the new dict's control segment and dump, nothing of the old one"
    );
    // The old instance's last handle leaves: the new dict keeps all its objects.
    drop(old);
    reader.load(true).unwrap();
    assert_eq!(reader.get(&10).unwrap(), Some(110));
    assert_eq!(
        UltraDict::<u32, u32>::open(&name).unwrap().len().unwrap(),
        50
    );
    drop((new, reader));
    assert_no_segments(&name);
}

#[test]
fn a_dead_process_is_reaped_by_the_next_opener() {
    let name = unique_name("reap");
    let d = UltraDict::<u32, u32>::open(&name).unwrap();
    let mut child = Spawn::test("child_entry", "attach_and_wait")
        .env("NAME", &name)
        .start();
    child.wait_for_report("attached", WATCHDOG);
    let child_pid = child.pid();
    assert!(d.status().attached_pids.contains(&child_pid));
    child.kill(); // SIGKILL: it never detaches
    let next = UltraDict::<u32, u32>::open(&name).unwrap();
    let pids = next.status().attached_pids;
    assert!(!pids.contains(&child_pid), "{pids:?}");
    assert_eq!(pids.len(), 2, "this process's two handles");
    // Its slot is freed: the last close still removes the dict.
    drop((d, next));
    assert_no_segments(&name);
}
