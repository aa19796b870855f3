//! Support for the workspace's integration tests and examples: running parts of a scenario
//! in real child processes (re-executed or forked) under a watchdog, unique dict names, and
//! checks on /dev/shm and on a process's own memory.
//!
//! Not published (a dev-dependency of the workspace's tests and of the CLI's); the library itself
//! is the `ultradict` crate.

pub mod linearizability;
pub mod redis;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// The environment variable that tells a re-executed binary which role to play.
pub const ROLE_VAR: &str = "ULTRADICT_TEST_ROLE";

/// Lines a child prints with this prefix are collected by [`Running::wait`].
pub const REPORT_PREFIX: &str = "@@ ";

/// The role this process was started for, if it is a child.
pub fn role() -> Option<String> {
    std::env::var(ROLE_VAR).ok()
}

/// A value the parent passed to this child with [`Spawn::env`].
///
/// # Panics
/// If the variable is missing: the parent and child disagree about the scenario.
pub fn arg(key: &str) -> String {
    std::env::var(format!("ULTRADICT_TEST_{key}"))
        .unwrap_or_else(|_| panic!("missing child arg {key}"))
}

/// Prints a line the parent collects.
pub fn report(line: impl std::fmt::Display) {
    println!("{REPORT_PREFIX}{line}");
}

/// A dict name no other test (or run) uses: tag, process id and a counter.
pub fn unique_name(tag: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    format!(
        "t-{tag}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Every object in /dev/shm that belongs to the dict `name` (its control segment, dumps and
/// nested children).
pub fn shm_objects(name: &str) -> Vec<String> {
    let control = format!("ultradict.{name}");
    let mut found: Vec<String> = std::fs::read_dir("/dev/shm")
        .map(|dir| {
            dir.filter_map(|entry| entry.ok()?.file_name().into_string().ok())
                .filter(|object| {
                    object
                        .strip_prefix(&control)
                        .is_some_and(|rest| rest.is_empty() || rest.starts_with('~'))
                })
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found
}

/// Fails the test if any segment of `name` is left in /dev/shm.
///
/// # Panics
/// When segments remain.
pub fn assert_no_segments(name: &str) {
    let left = shm_objects(name);
    assert!(
        left.is_empty(),
        "segments of {name} left in /dev/shm: {left:?}"
    );
}

/// Anonymous resident memory of this process in KiB (`RssAnon`): its own memory, not the
/// shared pages it maps.
pub fn rss_anon_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("RssAnon:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Runs `threads` threads that each add 1 to key 0 of `dict` `count` times, reading and
/// writing inside one critical section through the re-entrant lock; waits for them.
///
/// # Panics
/// If an operation fails.
pub fn locked_increments(
    dict: &std::sync::Arc<ultradict::UltraDict<u32, u64>>,
    threads: usize,
    count: u64,
) {
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let dict = std::sync::Arc::clone(dict);
            std::thread::spawn(move || {
                for _ in 0..count {
                    let _guard = dict.lock().unwrap();
                    let value = dict.get(&0).unwrap().unwrap_or(0);
                    dict.insert(0, value + 1).unwrap();
                }
            })
        })
        .collect();
    for handle in handles {
        handle.join().unwrap();
    }
}

/// A child process to start: this same executable, told to play `role`.
#[derive(Debug)]
pub struct Spawn {
    command: Command,
}

impl Spawn {
    /// Re-executes the current test binary, running only the test `entry` (which should
    /// dispatch on [`role`]).
    pub fn test(entry: &str, role: &str) -> Self {
        let exe = std::env::current_exe().expect("current_exe");
        let mut command = Command::new(exe);
        command.args(["--exact", entry, "--nocapture", "--test-threads=1"]);
        command.env(ROLE_VAR, role);
        Spawn { command }
    }

    /// Like [`Spawn::test`], but started through `wrapper` (a command and its arguments that
    /// ends by executing the program it is given, e.g. `unshare -m sh -c '...; exec "$@"' sh`).
    pub fn test_under(wrapper: &[&str], entry: &str, role: &str) -> Self {
        let exe = std::env::current_exe().expect("current_exe");
        let mut command = Command::new(wrapper[0]);
        command.args(&wrapper[1..]).arg(exe);
        command.args(["--exact", entry, "--nocapture", "--test-threads=1"]);
        command.env(ROLE_VAR, role);
        Spawn { command }
    }

    /// Like [`Spawn::test`], but in a PID namespace of its own (`unshare --pid`, root only):
    /// the child sees other pids than this process, as a process in a container does, and
    /// shares /dev/shm with it. Killing the child kills the process inside too.
    pub fn test_in_pid_namespace(entry: &str, role: &str) -> Self {
        Self::test_under(
            &["unshare", "--pid", "--kill-child", "--mount-proc"],
            entry,
            role,
        )
    }

    /// Re-executes the current (example) binary with `role`.
    pub fn current(role: &str) -> Self {
        let exe = std::env::current_exe().expect("current_exe");
        let mut command = Command::new(exe);
        command.env(ROLE_VAR, role);
        Spawn { command }
    }

    /// Passes `value` to the child, read there with [`arg`].
    pub fn env(mut self, key: &str, value: impl std::fmt::Display) -> Self {
        self.command
            .env(format!("ULTRADICT_TEST_{key}"), value.to_string());
        self
    }

    /// Sets an environment variable of the child as it is (e.g. the crash points of
    /// ultradict's `fault-injection` feature).
    pub fn raw_env(mut self, key: &str, value: impl std::fmt::Display) -> Self {
        self.command.env(key, value.to_string());
        self
    }

    /// Starts the child with its stdout captured.
    ///
    /// # Panics
    /// If the process cannot be started.
    pub fn start(mut self) -> Running {
        let mut child = self
            .command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn child");
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("stdout captured");
        let (sender, lines) = std::sync::mpsc::channel();
        // One reader thread per child forwards every line, so waits can time out even when
        // the child hangs without printing, and no line is lost between waits.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        Running {
            child,
            stdin,
            lines,
            output: String::new(),
        }
    }
}

/// Starts every child, then waits for all of them under the watchdog; returns their reports.
///
/// # Panics
/// As [`Running::wait`].
pub fn run_all(children: impl IntoIterator<Item = Spawn>, timeout: Duration) -> Vec<Vec<String>> {
    let running: Vec<Running> = children.into_iter().map(Spawn::start).collect();
    running
        .into_iter()
        .map(|child| child.wait(timeout))
        .collect()
}

/// A started child.
#[derive(Debug)]
pub struct Running {
    child: Child,
    stdin: Option<std::process::ChildStdin>,
    lines: Receiver<String>,
    output: String,
}

impl Running {
    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Reads the child's output until a report starting with `prefix`, or the timeout passes.
    ///
    /// # Panics
    /// On timeout, or when the child ends before reporting.
    pub fn wait_for_report(&mut self, prefix: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.output.push_str(&line);
                    self.output.push('\n');
                    if let Some(report) = report_in(&line)
                        && report.starts_with(prefix)
                    {
                        return report.to_owned();
                    }
                }
                Err(RecvTimeoutError::Disconnected) => {
                    panic!(
                        "child {} ended before reporting {prefix:?}:\n{}",
                        self.pid(),
                        self.output
                    )
                }
                Err(RecvTimeoutError::Timeout) => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    panic!(
                        "child {} did not report {prefix:?} within {timeout:?}",
                        self.pid()
                    )
                }
            }
        }
    }

    /// Sends one line to the child's standard input, without waiting for an answer.
    ///
    /// # Panics
    /// If the child has closed its input.
    pub fn send(&mut self, line: &str) {
        use std::io::Write;
        let stdin = self.stdin.as_mut().expect("stdin piped");
        writeln!(stdin, "{line}").expect("write to child");
        stdin.flush().expect("flush");
    }

    /// Sends one line to the child's standard input and waits for its next report (the
    /// child answers each request with one [`report`]).
    ///
    /// # Panics
    /// If the child does not answer within `timeout` or has closed its input.
    pub fn request(&mut self, line: &str, timeout: Duration) -> String {
        self.send(line);
        self.wait_for_report("", timeout)
    }

    /// Sends SIGKILL and reaps the child.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGKILL, reaps the child, and returns the reports it made before it died.
    pub fn kill_and_collect(mut self) -> Vec<String> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.output.push_str(&line);
            self.output.push('\n');
        }
        self.output
            .lines()
            .filter_map(report_in)
            .map(str::to_owned)
            .collect()
    }

    /// Waits for the child under a watchdog and returns all its reports.
    ///
    /// # Panics
    /// If the child runs past `timeout` (it is killed: a hang fails the test instead of CI)
    /// or exits unsuccessfully.
    pub fn wait(mut self, timeout: Duration) -> Vec<String> {
        let (status, output) = self.finish(timeout);
        assert!(
            status.success(),
            "child {} failed ({status}); output:\n{output}",
            self.pid()
        );
        output
            .lines()
            .filter_map(report_in)
            .map(str::to_owned)
            .collect()
    }

    /// Waits for the child under a watchdog; returns its status and its whole stdout.
    ///
    /// # Panics
    /// If the child runs past `timeout`.
    pub fn finish(&mut self, timeout: Duration) -> (ExitStatus, String) {
        let deadline = Instant::now() + timeout;
        loop {
            while let Ok(line) = self.lines.try_recv() {
                self.output.push_str(&line);
                self.output.push('\n');
            }
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                // The pipe closes when the child exits: drain what is left.
                while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
                    self.output.push_str(&line);
                    self.output.push('\n');
                }
                return (status, std::mem::take(&mut self.output));
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "watchdog: child {} ran past {timeout:?} and was killed",
                    self.pid()
                );
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

/// CPU time (user and system) the calling thread has used.
pub fn thread_cpu_time() -> Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out-pointer for clock_gettime.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

/// Forks; the child runs `body` and exits with its return value without running destructors
/// or atexit handlers of the parent's state. Returns the child's pid.
///
/// Use in tests that run one per process (cargo nextest), since forking a multi-threaded
/// process copies only the calling thread.
pub fn fork(body: impl FnOnce() -> i32) -> libc::pid_t {
    // SAFETY: the child only runs `body` and then `_exit`s; it never returns into the test
    // harness, so no state the fork left inconsistent in other threads is used after `body`.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)).unwrap_or(101);
        // SAFETY: `_exit` ends the child at once, as a forked child must.
        unsafe { libc::_exit(code) };
    }
    pid
}

/// Waits for a forked child under a watchdog and returns its exit code.
///
/// # Panics
/// If the child runs past `timeout` (it is killed) or dies from a signal.
pub fn wait_forked(pid: libc::pid_t, timeout: Duration) -> i32 {
    let deadline = Instant::now() + timeout;
    loop {
        let mut status = 0;
        // SAFETY: plain waitpid on our own child with a valid out-pointer.
        let done = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if done == pid {
            assert!(
                libc::WIFEXITED(status),
                "forked child {pid} died from a signal"
            );
            return libc::WEXITSTATUS(status);
        }
        if Instant::now() >= deadline {
            // SAFETY: signalling and reaping our own child.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, &mut status, 0);
            }
            panic!("watchdog: forked child {pid} ran past {timeout:?} and was killed");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The report in a line of a child's output. The test harness may have printed the test's
/// name before it on the same line.
fn report_in(line: &str) -> Option<&str> {
    line.find(REPORT_PREFIX)
        .map(|at| &line[at + REPORT_PREFIX.len()..])
}
