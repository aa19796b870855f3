//! The `ultradict` binary, run as users run it.

use std::process::{Command, Output};
use std::time::Duration;

use ultradict::{Create, UltraDict};
use ultradict_test_kit::{Spawn, arg, assert_no_segments, report, role, shm_objects, unique_name};

fn ultradict(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ultradict"))
        .args(args)
        .output()
        .expect("run ultradict")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// `ultradict ARGS` (a list) succeeds and shows `name` as not orphaned.
fn assert_listed_in_use(args: &[&str], name: &str) {
    let out = ultradict(args);
    assert!(out.status.success(), "{out:?}");
    let line = stdout(&out)
        .lines()
        .find(|l| l.starts_with(name))
        .map(str::to_owned)
        .expect("listed");
    assert!(line.ends_with("no"), "not orphaned: {line}");
}

#[test]
fn child_entry() {
    let Some(role) = role() else { return };
    let d: UltraDict<String, u64> = UltraDict::builder()
        .name(arg("NAME"))
        .create(Create::Open)
        .open()
        .unwrap();
    match role.as_str() {
        "attach_and_hang" => {
            d.insert("child".into(), 1).unwrap();
            report("attached");
            std::thread::sleep(Duration::from_secs(600));
        }
        // Takes the dict's lock, reports, and holds it until a line arrives on stdin (or
        // stdin closes, when the test ends early).
        "hold_lock" => {
            let guard = d.lock().unwrap();
            report("locked");
            let mut line = String::new();
            std::io::stdin().read_line(&mut line).unwrap();
            drop(guard);
            d.insert("released".into(), 1).unwrap();
            report("released");
        }
        other => panic!("unknown role {other}"),
    }
}

#[test]
fn list_and_status_describe_a_dict_without_its_types() {
    let name = unique_name("cli-status");
    let d: UltraDict<String, u64> = UltraDict::builder()
        .name(&name)
        .buffer_size(4096)
        .open()
        .unwrap();
    d.insert("a".into(), 1).unwrap();
    d.nested::<u32, u32>("child").unwrap().insert(1, 1).unwrap();

    assert_listed_in_use(&["list"], &name);

    let out = ultradict(&["list", "--json"]);
    let all: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let entry = all
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == name.as_str())
        .expect("in json");
    assert_eq!(entry["orphaned"], false);

    let out = ultradict(&["status", &name]);
    assert!(out.status.success());
    let text = stdout(&out);
    for needle in [
        "UltraDict<alloc::string::String, u64>",
        "epoch             0",
        "lock              free",
        "nested dicts",
        "(nested map; epoch 0, 0 live",
    ] {
        assert!(text.contains(needle), "{needle:?} in\n{text}");
    }
    let out = ultradict(&["status", &name, "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(status["name"], name.as_str());
    assert_eq!(status["buffer_size"], 4096);
    assert_eq!(status["attached"][0]["pid"], std::process::id());
    assert_eq!(status["children"].as_array().unwrap().len(), 1);
    assert_eq!(status["tree"][0]["what"], "nested map", "{status}");
    drop(d);
    assert_no_segments(&name);
}

/// Every command that only looks (`list`, `status`, `get`, `dump`) and `cleanup` run while
/// another process holds the dict's lock, in this PID namespace or another: they show the
/// holder, alive, and neither wait for it, nor write into the lock, nor remove the dict. (The
/// commands map control blocks read-only: they once died of SIGSEGV stamping a held lock.)
#[test]
fn commands_run_beside_a_lock_held_by_another_process() {
    for other_namespace in [false, true] {
        let name = unique_name("cli-held");
        let d: UltraDict<String, u64> = UltraDict::open(&name).unwrap();
        d.insert("a".into(), 1).unwrap();
        let spawn = if other_namespace {
            Spawn::test_in_pid_namespace("child_entry", "hold_lock")
        } else {
            Spawn::test("child_entry", "hold_lock")
        };
        let mut child = spawn.env("NAME", &name).start();
        child.wait_for_report("locked", Duration::from_secs(60));
        // `inspect` writes nothing (a handle's `status()` would stamp when the lock was first
        // seen held, which the commands must cope without).
        let holder = ultradict::inspect(&name)
            .unwrap()
            .lock_holder
            .expect("held by the child");
        assert!(holder.since.is_none(), "{holder:?}");
        assert_eq!(holder.same_pid_namespace, !other_namespace, "{holder:?}");
        if !other_namespace {
            assert_eq!(holder.pid, child.pid());
        }

        let out = ultradict(&["list"]);
        assert!(out.status.success(), "{out:?}");
        let listed = stdout(&out);
        let line = listed
            .lines()
            .find(|l| l.starts_with(&name))
            .expect("listed");
        let columns: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(
            columns[4],
            holder.pid.to_string(),
            "the LOCK column: {line}"
        );
        assert_eq!(columns[5], "no", "not orphaned: {line}");

        let out = ultradict(&["status", &name]);
        assert!(out.status.success(), "{out:?}");
        let text = stdout(&out);
        assert!(text.contains(&format!("held by {holder}")), "{text}");
        assert!(!text.contains("dead"), "{text}");
        let out = ultradict(&["status", &name, "--json"]);
        let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        assert_eq!(status["lock_holder"]["pid"], holder.pid, "{status}");
        assert_eq!(status["lock_holder"]["alive"], true, "{status}");

        let out = ultradict(&["get", &name, "a"]);
        assert!(out.status.success(), "{out:?}");
        assert_eq!(stdout(&out).trim(), "1");
        let out = ultradict(&["dump", &name]);
        assert!(out.status.success(), "{out:?}");
        assert_eq!(stdout(&out), "\"a\" => 1\n");

        let out = ultradict(&["cleanup"]);
        assert!(out.status.success(), "{out:?}");
        assert!(!stdout(&out).contains(&name), "{}", stdout(&out));
        // The lock is still the child's, as it took it: it lets it go and writes.
        assert_eq!(d.status().lock_holder.map(|h| h.pid), Some(holder.pid));
        child.send("go");
        child.wait_for_report("released", Duration::from_secs(60));
        let (exit, output) = child.finish(Duration::from_secs(60));
        assert!(exit.success(), "{output}");
        assert_eq!(d.get("released").unwrap(), Some(1));
        assert_eq!(d.status().lock_recoveries, 0, "nobody robbed the lock");
        drop(d);
        assert_no_segments(&name);
    }
}

#[test]
fn errors_have_documented_exit_codes() {
    let missing = unique_name("cli-missing");
    let out = ultradict(&["status", &missing]);
    assert_eq!(out.status.code(), Some(3), "unknown name");
    assert!(String::from_utf8_lossy(&out.stderr).contains("no dict named"));
    assert_eq!(
        ultradict(&["status", "../etc"]).status.code(),
        Some(2),
        "invalid name"
    );
    assert_eq!(
        ultradict(&["frobnicate"]).status.code(),
        Some(2),
        "bad usage"
    );

    let foreign = unique_name("cli-foreign");
    std::fs::write(format!("/dev/shm/ultradict.{foreign}"), vec![7u8; 16_384]).unwrap();
    let out = ultradict(&["status", &foreign]);
    assert_eq!(out.status.code(), Some(4), "foreign segment");
    assert!(String::from_utf8_lossy(&out.stderr).contains("not an ultradict segment"));
    assert_eq!(
        ultradict(&["unlink", &foreign]).status.code(),
        Some(4),
        "unlink refuses foreign objects"
    );
    std::fs::remove_file(format!("/dev/shm/ultradict.{foreign}")).unwrap();
}

#[test]
fn watch_prints_a_line_per_interval() {
    let name = unique_name("cli-watch");
    let d: UltraDict<u32, u32> = UltraDict::open(&name).unwrap();
    let writer = std::thread::spawn({
        let name = name.clone();
        move || {
            let d: UltraDict<u32, u32> = UltraDict::open(&name).unwrap();
            for i in 0..200 {
                d.insert(i, i).unwrap();
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    });
    let out = ultradict(&["watch", &name, "--interval-ms", "50", "--count", "3"]);
    writer.join().unwrap();
    assert!(out.status.success());
    let text = stdout(&out);
    assert_eq!(text.lines().count(), 4, "a header and 3 lines:\n{text}");
    assert!(text.trim_start().starts_with("SECONDS"), "{text}");
    drop(d);
    assert_no_segments(&name);
}

#[test]
fn unlink_removes_a_dict_with_its_nested_dicts() {
    let name = unique_name("cli-unlink");
    let d: UltraDict<String, u64> = UltraDict::builder()
        .name(&name)
        .lifetime(ultradict::Lifetime::Persistent)
        .open()
        .unwrap();
    let jobs = d.nested::<String, u64>("jobs").unwrap();
    jobs.insert("x".into(), 1).unwrap();
    // A nested dict's contents, under the name `status` shows for it (it was `InvalidName`).
    let out = ultradict(&["dump", jobs.name()]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(stdout(&out), "\"x\" => 1\n");
    drop(jobs);
    d.dump().unwrap();
    drop(d);
    assert!(shm_objects(&name).len() >= 4, "{:?}", shm_objects(&name));
    let out = ultradict(&["unlink", &name]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_no_segments(&name);
    // The status and output in full if not: this once ended by a signal (not reproduced).
    let again = ultradict(&["unlink", &name]);
    assert_eq!(again.status.code(), Some(3), "{again:?}");
}

#[test]
fn cleanup_removes_dicts_whose_processes_all_died() {
    let name = unique_name("cli-orphan");
    let d: UltraDict<String, u64> = UltraDict::open(&name).unwrap();
    d.nested::<u32, u32>("inner").unwrap().insert(1, 1).unwrap();
    let mut child = Spawn::test("child_entry", "attach_and_hang")
        .env("NAME", &name)
        .start();
    child.wait_for_report("attached", Duration::from_secs(60));
    drop(d); // the child is now the only process attached
    child.kill(); // SIGKILL: it never detaches
    assert!(
        !shm_objects(&name).is_empty(),
        "the dead child kept the dict"
    );
    let listed = stdout(&ultradict(&["list"]));
    let line = listed
        .lines()
        .find(|l| l.starts_with(&name))
        .expect("listed");
    assert!(line.ends_with("yes"), "orphaned: {line}");

    let out = ultradict(&["cleanup", "--dry-run"]);
    assert!(
        stdout(&out).contains(&format!("would remove {name}")),
        "{}",
        stdout(&out)
    );
    assert!(!shm_objects(&name).is_empty(), "a dry run removes nothing");

    let out = ultradict(&["cleanup"]);
    assert!(out.status.success());
    assert!(
        stdout(&out).contains(&format!("removed {name}")),
        "{}",
        stdout(&out)
    );
    assert_no_segments(&name);
}

#[test]
fn cleanup_keeps_persistent_dicts_whose_processes_died() {
    let name = unique_name("cli-persistent");
    let d: UltraDict<String, u64> = UltraDict::builder()
        .name(&name)
        .lifetime(ultradict::Lifetime::Persistent)
        .open()
        .unwrap();
    let mut child = Spawn::test("child_entry", "attach_and_hang")
        .env("NAME", &name)
        .start();
    child.wait_for_report("attached", Duration::from_secs(60));
    drop(d);
    child.kill();
    let out = ultradict(&["cleanup"]);
    assert!(!stdout(&out).contains(&name), "{}", stdout(&out));
    let again: UltraDict<String, u64> = UltraDict::builder()
        .name(&name)
        .create(Create::Open)
        .open()
        .unwrap();
    assert_eq!(
        again.get("child").unwrap(),
        Some(1),
        "the data outlived its processes"
    );
    drop(again);
    let out = ultradict(&["unlink", &name]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_no_segments(&name);
}

#[test]
fn the_same_commands_work_on_a_redis_server() {
    let server = ultradict_test_kit::redis::Server::start();
    let url = server.url();
    let name = unique_name("cli-redis");
    let d: UltraDict<String, u64> = UltraDict::builder().name(&name).redis(&url).open().unwrap();
    d.insert("a".into(), 1).unwrap();
    d.nested::<u32, u32>("child").unwrap().insert(1, 1).unwrap();
    let lock = d.lock().unwrap();

    assert_listed_in_use(&["--redis", &url, "list"], &name);

    let out = ultradict(&["--redis", &url, "status", &name]);
    let text = stdout(&out);
    assert!(
        text.contains("UltraDict<alloc::string::String, u64>"),
        "{text}"
    );
    assert!(
        text.contains(&format!("pid {}", std::process::id())),
        "{text}"
    );
    assert!(text.contains("nested map"), "the tree: {text}");
    assert!(text.contains("held by pid"), "the lock: {text}");
    drop(lock);

    let out = ultradict(&["--redis", &url, "status", &name, "--json"]);
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(info["attached_count"], 1, "{info}");
    assert_eq!(info["tree"][0]["what"], "nested map", "{info}");

    let out = ultradict(&["--redis", &url, "status", "no-such-dict"]);
    assert_eq!(out.status.code(), Some(3));
    server.cli(&["SET", "ultradict:{odd}:odd:meta", "x"]);
    let out = ultradict(&["--redis", &url, "status", "odd"]);
    assert_eq!(out.status.code(), Some(4));

    // A persistent dict is never orphaned; a last-close one whose clients are all gone is.
    let out = ultradict(&["--redis", &url, "cleanup", "--dry-run"]);
    assert!(
        stdout(&out).contains("no orphaned dicts"),
        "{}",
        stdout(&out)
    );
    let out = ultradict(&["--redis", &url, "unlink", &name]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        ultradict_test_kit::redis::leftovers(
            &ultradict_test_kit::redis::Backend::Redis(url.clone()),
            &name
        ),
        Vec::<String>::new()
    );
    let out = ultradict(&["--redis", "redis://127.0.0.1:1/", "list"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("127.0.0.1:1"),
        "{out:?}"
    );
}

#[test]
fn get_and_dump_show_maps_of_standard_types_on_both_backends() {
    let server = ultradict_test_kit::redis::Server::start();
    let url = server.url();
    for redis in [false, true] {
        let name = unique_name("cli-show");
        let mut builder = UltraDict::<String, Vec<u64>>::builder().name(&name);
        if redis {
            builder = builder.redis(&url);
        }
        let d = builder.open().unwrap();
        d.insert("b".into(), vec![2, 3]).unwrap();
        d.insert("a".into(), vec![1]).unwrap();
        let mut args: Vec<&str> = if redis { vec!["--redis", &url] } else { vec![] };
        let run = |extra: &[&str]| {
            let mut all = args.clone();
            all.extend_from_slice(extra);
            ultradict(&all)
        };

        let out = run(&["dump", &name]);
        assert!(out.status.success(), "{out:?}");
        assert_eq!(stdout(&out), "\"a\" => [1]\n\"b\" => [2, 3]\n");
        let out = run(&["dump", &name, "--json"]);
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        assert_eq!(json, serde_json::json!({ "a": [1], "b": [2, 3] }));
        let out = run(&["get", &name, "b"]);
        assert_eq!(stdout(&out).trim(), "[2, 3]");
        let out = run(&["get", &name, "zzz"]);
        assert_eq!(out.status.code(), Some(3), "{out:?}");
        // Looking does not count as the last close: the dict is still there, and still ours.
        assert_eq!(d.get("a").unwrap(), Some(vec![1]));
        d.sync().unwrap();

        // A map of types the binary does not know: a message saying how to build a tool.
        let odd = unique_name("cli-odd");
        let mut builder = UltraDict::<(u8, u8), String>::builder().name(&odd);
        if redis {
            builder = builder.redis(&url);
        }
        let other = builder.open().unwrap();
        other.insert((1, 2), "x".into()).unwrap();
        let out = run(&["dump", &odd]);
        assert_eq!(out.status.code(), Some(6), "{out:?}");
        let message = String::from_utf8_lossy(&out.stderr);
        assert!(
            message.contains("ultradict::tool::Tool::new().with_std_types().map::<(u8, u8), alloc::string::String>().main()"),
            "{message}"
        );
        args.clear();
        drop(other);
        drop(d);
        if !redis {
            assert_no_segments(&name);
        }
    }
}

/// `ultradict dump` attached (stopped by SIGSTOP while it reads) when the dict's only user
/// closes it: the close removes the dict, since a tool looking does not count as a user. The
/// close used to find the tool alive and leave the dict to it, and the tool, which never
/// removes what it looks at, left it behind.
#[test]
fn a_dict_closed_while_a_tool_looks_at_it_goes_with_the_close() {
    let name = unique_name("cli-looking");
    let d: UltraDict<u64, u64> = UltraDict::builder().name(&name).open().unwrap();
    d.extend((0..1_000_000).map(|k| (k, k))).unwrap();
    // Stop a tool while it is attached: it reads a million entries, so it is attached for a
    // while; another try if it slipped through.
    let mut stopped = None;
    for _ in 0..20 {
        let tool = Command::new(env!("CARGO_BIN_EXE_ultradict"))
            .args(["dump", &name])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let pid = tool.id();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if d.status().attached_pids.contains(&pid) {
                // SAFETY: kill has no memory effects; the tool is our child.
                unsafe { libc::kill(pid as i32, libc::SIGSTOP) };
                break;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        if d.status().attached_pids.contains(&pid) {
            stopped = Some(tool);
            break;
        }
        // SAFETY: as above.
        unsafe { libc::kill(pid as i32, libc::SIGCONT) };
        tool.wait_with_output().unwrap();
    }
    let tool = stopped.expect("a tool stopped while attached");
    d.close().unwrap();
    let left = shm_objects(&name);
    // SAFETY: as above.
    unsafe { libc::kill(tool.id() as i32, libc::SIGCONT) };
    assert_eq!(left, Vec::<String>::new());
    let out = tool.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).lines().count(),
        1_000_000
    );
    assert_no_segments(&name);
}
