//! Redis servers for the tests, started by the tests themselves: `redis-server` from the
//! system's packages, on 127.0.0.1 only, on a free port, with its data in a directory of its
//! own; stopped (and the directory removed) when dropped, and killed by the kernel if the test
//! process dies first. A 3-master Redis Cluster is three such servers joined by `redis-cli`.
//!
//! A test process that needs one server for many tests uses [`shared`]; child processes learn
//! its address from the environment ([`URL_VAR`]).

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The variable that passes a server's URL to child processes.
pub const URL_VAR: &str = "ULTRADICT_TEST_REDIS_URL";

/// How long a server may take to start answering.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A redis-server process of the test's own.
#[derive(Debug)]
pub struct Server {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    args: Vec<String>,
}

/// A port nobody listens on now.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local address").port()
}

/// Starts `command` from a thread that lives as long as the process, so that the child's
/// parent-death signal (bound to the spawning thread) fires only when the process ends.
fn spawn_tied(mut command: Command) -> Child {
    use std::sync::mpsc;
    type Request = (Command, mpsc::Sender<std::io::Result<Child>>);
    static SPAWNER: OnceLock<std::sync::Mutex<mpsc::Sender<Request>>> = OnceLock::new();
    let sender = SPAWNER.get_or_init(|| {
        let (sender, requests) = mpsc::channel::<Request>();
        std::thread::spawn(move || {
            for (mut command, reply) in requests {
                let _ = reply.send(command.spawn());
            }
            // Keep this thread (the servers' parent) alive until the process ends.
            loop {
                std::thread::park();
            }
        });
        std::sync::Mutex::new(sender)
    });
    // SAFETY: prctl is async-signal-safe; the closure touches nothing else of the parent.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let (reply, result) = std::sync::mpsc::channel();
    sender
        .lock()
        .expect("spawner lock")
        .send((command, reply))
        .expect("spawner thread");
    result
        .recv()
        .expect("spawner reply")
        .expect("start redis-server (is it installed?)")
}

/// Sends one command with `redis-cli` and returns its output.
pub fn cli(port: u16, args: &[&str]) -> String {
    let output = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .expect("run redis-cli (is it installed?)");
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

impl Server {
    /// A server that keeps nothing on disk.
    pub fn start() -> Server {
        Self::start_with(&["--save", "", "--appendonly", "no"])
    }

    /// A server that acknowledges a write only once it is in its append-only file (so that
    /// a restart keeps every acknowledged write).
    pub fn start_durable() -> Server {
        Self::start_with(&[
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
        ])
    }

    /// A server with extra arguments.
    pub fn start_with(extra: &[&str]) -> Server {
        let port = free_port();
        let dir =
            std::env::temp_dir().join(format!("ultradict-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("server directory");
        let mut server = Server {
            child: None,
            port,
            dir,
            args: extra.iter().map(|s| (*s).to_owned()).collect(),
        };
        server.launch();
        server
    }

    fn launch(&mut self) {
        let mut command = Command::new("redis-server");
        command
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args([
                "--protected-mode",
                "yes",
                "--daemonize",
                "no",
                "--logfile",
                "",
            ])
            .arg("--dir")
            .arg(&self.dir)
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        self.child = Some(spawn_tied(command));
        let deadline = Instant::now() + START_TIMEOUT;
        while cli(self.port, &["PING"]) != "PONG" {
            assert!(
                Instant::now() < deadline,
                "redis-server on {} did not start",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The server's URL.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// The server's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Sends the server a signal (e.g. `SIGSTOP`, `SIGCONT`).
    pub fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill has no memory effects; the pid is our own child's.
        unsafe { libc::kill(self.pid() as libc::pid_t, signal) };
    }

    /// Kills the server (SIGKILL) and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and directory (after [`kill`](Self::kill)).
    pub fn restart(&mut self) {
        self.kill();
        self.launch();
    }

    /// Runs a command with `redis-cli` on this server.
    pub fn cli(&self, args: &[&str]) -> String {
        cli(self.port, args)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The server this test process (and the children it starts) share: the one named by
/// [`URL_VAR`] if set (a child of a test), else one started on first use. Its URL.
pub fn shared() -> String {
    static SHARED: OnceLock<(String, Option<Server>)> = OnceLock::new();
    SHARED
        .get_or_init(|| match std::env::var(URL_VAR) {
            Ok(url) => (url, None),
            Err(_) => {
                let server = Server::start();
                // A static is never dropped: its directory goes now (a server that keeps
                // nothing on disk does not need it once started; it dies with this process).
                let _ = std::fs::remove_dir_all(&server.dir);
                // SAFETY: set once, before any child is started; no other thread of the
                // test reads the environment while OnceLock initializes (it blocks them).
                unsafe { std::env::set_var(URL_VAR, server.url()) };
                (server.url(), Some(server))
            }
        })
        .0
        .clone()
}

/// A Redis Cluster of three masters (no replicas) on 127.0.0.1.
#[derive(Debug)]
pub struct Cluster {
    servers: Vec<Server>,
}

impl Cluster {
    /// Starts three cluster-enabled servers and joins them, waiting until the cluster is ok.
    pub fn start() -> Cluster {
        let servers: Vec<Server> = (0..3)
            .map(|_| {
                Server::start_with(&[
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--cluster-enabled",
                    "yes",
                    "--cluster-node-timeout",
                    "2000",
                ])
            })
            .collect();
        let nodes: Vec<String> = servers
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port()))
            .collect();
        let output = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&nodes)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli --cluster create");
        assert!(output.status.success(), "cluster create failed: {output:?}");
        let deadline = Instant::now() + START_TIMEOUT;
        for server in &servers {
            while !server
                .cli(&["CLUSTER", "INFO"])
                .contains("cluster_state:ok")
            {
                assert!(Instant::now() < deadline, "the cluster did not become ok");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Cluster { servers }
    }

    /// The masters' URLs.
    pub fn urls(&self) -> Vec<String> {
        self.servers.iter().map(Server::url).collect()
    }

    /// The masters.
    pub fn servers(&self) -> &[Server] {
        &self.servers
    }
}

/// Where a conformance test's dicts live: the same test code runs on each.
#[derive(Clone, Debug)]
pub enum Backend {
    /// Shared memory (/dev/shm).
    Shm,
    /// A Redis server at this URL.
    Redis(String),
    /// A Redis Cluster with these seed nodes.
    Cluster(Vec<String>),
}

/// The variable that passes a backend to child processes.
pub const BACKEND_VAR: &str = "ULTRADICT_TEST_BACKEND";

impl Backend {
    /// The process's shared Redis server (see [`shared`]).
    pub fn redis() -> Backend {
        Backend::Redis(shared())
    }

    /// The backend as one line of text, for a child's environment.
    pub fn to_env(&self) -> String {
        match self {
            Backend::Shm => "shm".to_owned(),
            Backend::Redis(url) => format!("redis {url}"),
            Backend::Cluster(urls) => format!("cluster {}", urls.join(" ")),
        }
    }

    /// The backend a parent passed with [`to_env`](Self::to_env) in [`BACKEND_VAR`].
    ///
    /// # Panics
    /// If the variable is missing or malformed.
    pub fn from_env() -> Backend {
        let text = std::env::var(BACKEND_VAR).expect("backend variable");
        let mut words = text.split(' ');
        match words.next() {
            Some("shm") => Backend::Shm,
            Some("redis") => Backend::Redis(words.next().expect("url").to_owned()),
            Some("cluster") => Backend::Cluster(words.map(str::to_owned).collect()),
            _ => panic!("bad backend {text:?}"),
        }
    }

    /// A child of this test binary (its test `child_entry`) playing `role` on this backend
    /// with the dict `name` (read there with `arg("NAME")` and [`Backend::from_env`]).
    pub fn spawn(&self, role: &str, name: &str) -> crate::Spawn {
        crate::Spawn::test("child_entry", role)
            .raw_env(BACKEND_VAR, self.to_env())
            .env("NAME", name)
    }

    /// Whether the dicts live on a server.
    pub fn is_remote(&self) -> bool {
        !matches!(self, Backend::Shm)
    }
}

/// A builder that can be pointed at a [`Backend`].
pub trait OnBackend: Sized {
    /// The builder, with its dict on `backend`.
    fn on(self, backend: &Backend) -> Self;
}

impl<K: ultradict::Key, V: ultradict::Value> OnBackend for ultradict::Builder<K, V> {
    fn on(self, backend: &Backend) -> Self {
        match backend {
            Backend::Shm => self,
            Backend::Redis(url) => self.redis(url),
            Backend::Cluster(urls) => self.redis_cluster(urls),
        }
    }
}

impl<T: ultradict::SharedDict> OnBackend for ultradict::StructBuilder<T> {
    fn on(self, backend: &Backend) -> Self {
        match backend {
            Backend::Shm => self,
            Backend::Redis(url) => self.redis(url),
            Backend::Cluster(urls) => self.redis_cluster(urls),
        }
    }
}

/// What is left of the dict `name` (and the dicts nested in it) on `backend`: objects in
/// /dev/shm, or keys on the server(s).
pub fn leftovers(backend: &Backend, name: &str) -> Vec<String> {
    let root = name.split('~').next().unwrap_or(name);
    let pattern = format!("ultradict:{{{root}}}:{name}*");
    let ports = |urls: &[String]| -> Vec<u16> {
        urls.iter()
            .filter_map(|url| {
                url.trim_end_matches('/')
                    .rsplit(':')
                    .next()?
                    .split('/')
                    .next()?
                    .parse()
                    .ok()
            })
            .collect()
    };
    let ports = match backend {
        Backend::Shm => return crate::shm_objects(name),
        Backend::Redis(url) => ports(std::slice::from_ref(url)),
        Backend::Cluster(urls) => ports(urls),
    };
    let mut keys: Vec<String> = ports
        .into_iter()
        .flat_map(|port| {
            cli(port, &["--scan", "--pattern", &pattern])
                .lines()
                .map(str::to_owned)
                .filter(|line| !line.is_empty())
                .collect::<Vec<_>>()
        })
        .collect();
    keys.sort();
    keys
}
