//! `ultradict`: list, inspect, watch and remove the shared dicts on this machine (or, with
//! `--redis URL`, on a Redis server), without knowing their key and value types.
//!
//! Exit codes: 0 success; 1 an unexpected error; 2 bad usage; 3 no such dict (or key); 4 the
//! object is not an ultradict (or is of another format version, or never finished being
//! created); 5 permission denied; 6 a dict of types this binary does not know (`get`, `dump`).

use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

use clap::{Parser, Subcommand};
use serde_json::{Value, json};
use ultradict::{DictInfo, Error};

#[derive(Parser)]
#[command(
    name = "ultradict",
    version,
    about = "Inspect and manage ultradict shared dicts in /dev/shm or on a Redis server"
)]
struct Cli {
    /// The directory of the dicts' objects (a dict opened with `.directory(..)`).
    #[arg(long, global = true, default_value = "/dev/shm")]
    dir: std::path::PathBuf,
    /// The dicts on this Redis server instead (`redis://host:port/db`).
    #[arg(long, global = true, conflicts_with = "redis_cluster")]
    redis: Option<String>,
    /// The dicts on this Redis Cluster instead (a master's URL; repeat for more).
    #[arg(long, global = true)]
    redis_cluster: Vec<String>,
    #[command(subcommand)]
    command: Command,
}

/// Where the dicts the command works on live.
enum Source {
    /// Shared memory, in this directory (`--dir`).
    Shm(std::path::PathBuf),
    /// A Redis server or Cluster (`--redis`, `--redis-cluster`), and where it is.
    Redis(ultradict::RedisServer, ultradict::tool::Location),
}

impl Source {
    fn location(&self) -> ultradict::tool::Location {
        match self {
            Source::Shm(dir) => ultradict::tool::Location::Shm(dir.clone()),
            Source::Redis(_, location) => location.clone(),
        }
    }
}

static SOURCE: std::sync::OnceLock<Source> = std::sync::OnceLock::new();

fn source() -> &'static Source {
    SOURCE.get_or_init(|| Source::Shm("/dev/shm".into()))
}

fn inspect(name: &str) -> ultradict::Result<DictInfo> {
    match source() {
        Source::Shm(dir) => ultradict::inspect_in(dir, name),
        Source::Redis(server, _) => server.inspect(name),
    }
}

fn list_all() -> ultradict::Result<Vec<ultradict::Listed>> {
    match source() {
        Source::Shm(dir) => ultradict::list_in(dir),
        Source::Redis(server, _) => server.list(),
    }
}

#[derive(Subcommand)]
enum Command {
    /// Every ultradict in /dev/shm (or on the server): size, epoch, live processes, lock
    /// holder, orphaned or not.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// What `status()` shows for one dict.
    Status {
        /// The dict's name.
        name: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// A live view of a dict's update rate, epochs, dumps and processes, until Ctrl-C.
    Watch {
        /// The dict's name.
        name: String,
        /// Time between two lines.
        #[arg(long, default_value_t = 1000)]
        interval_ms: u64,
        /// Stop after this many lines (default: never).
        #[arg(long)]
        count: Option<u64>,
    },
    /// The value under KEY in a map of standard types (see `ultradict::tool` to build this
    /// command for your own types).
    Get {
        /// The dict's name.
        name: String,
        /// The key, as JSON or plain text (a string key).
        key: String,
        /// Print JSON instead of Debug.
        #[arg(long)]
        json: bool,
    },
    /// Every entry of a map of standard types, sorted by key.
    Dump {
        /// The dict's name.
        name: String,
        /// Print JSON instead of Debug.
        #[arg(long)]
        json: bool,
    },
    /// Remove a dict and its nested dicts.
    Unlink {
        /// The dict's name.
        name: String,
    },
    /// Remove every orphaned dict (all its processes died).
    Cleanup {
        /// Only say what would be removed.
        #[arg(long)]
        dry_run: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let source = match (cli.redis, cli.redis_cluster.is_empty()) {
        (Some(url), _) => Source::Redis(
            ultradict::RedisServer::new(url.clone()),
            ultradict::tool::Location::Redis(url),
        ),
        (None, false) => Source::Redis(
            ultradict::RedisServer::cluster(cli.redis_cluster.clone()),
            ultradict::tool::Location::RedisCluster(cli.redis_cluster),
        ),
        (None, true) => Source::Shm(cli.dir),
    };
    let _ = SOURCE.set(source);
    let result = match cli.command {
        Command::List { json } => list(json),
        Command::Status { name, json } => status(&name, json),
        Command::Watch {
            name,
            interval_ms,
            count,
        } => watch(&name, Duration::from_millis(interval_ms), count),
        command @ (Command::Get { .. } | Command::Dump { .. }) => return show(&command),
        Command::Unlink { name } => unlink(&name),
        Command::Cleanup { dry_run } => cleanup(dry_run),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("ultradict: {err}");
            ExitCode::from(exit_code(&err))
        }
    }
}

/// `get` and `dump`, through the library's tool with the standard types.
fn show(command: &Command) -> ExitCode {
    let tool = ultradict::tool::Tool::new().with_std_types();
    let location = source().location();
    let format = |json: bool| {
        if json {
            ultradict::tool::Format::Json
        } else {
            ultradict::tool::Format::Debug
        }
    };
    let shown = match command {
        Command::Get { name, key, json } => tool.get(&location, name, key, format(*json)),
        Command::Dump { name, json } => tool.dump(&location, name, format(*json)),
        _ => return ExitCode::from(2),
    };
    match shown {
        Ok(text) => {
            print!("{text}");
            if !text.ends_with('\n') {
                println!();
            }
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("ultradict: {err}");
            ExitCode::from(err.exit_code())
        }
    }
}

/// The documented exit code of an error.
fn exit_code(err: &Error) -> u8 {
    match err {
        Error::NotFound { .. } => 3,
        Error::Foreign { .. } | Error::VersionMismatch { .. } | Error::NotReady { .. } => 4,
        Error::PermissionDenied { .. } => 5,
        Error::InvalidName { .. } => 2,
        _ => 1,
    }
}

fn list(as_json: bool) -> ultradict::Result<()> {
    let listed = list_all()?;
    if as_json {
        let entries: Vec<Value> = listed
            .iter()
            .map(|l| match &l.info {
                Ok(info) => info_json(info),
                Err(err) => json!({ "name": l.name, "error": err.to_string() }),
            })
            .collect();
        println!("{}", Value::Array(entries));
        return Ok(());
    }
    println!(
        "{:<32} {:>10} {:>6} {:>6} {:>10} {:>8}",
        "NAME", "BYTES", "EPOCH", "LIVE", "LOCK", "ORPHANED"
    );
    for l in &listed {
        match &l.info {
            Ok(info) => println!(
                "{:<32} {:>10} {:>6} {:>6} {:>10} {:>8}",
                info.name,
                info.bytes(),
                info.epoch,
                info.live_pids().len(),
                info.lock_holder
                    .as_ref()
                    .map_or("-".to_owned(), |h| h.pid.to_string()),
                if info.orphaned() { "yes" } else { "no" }
            ),
            Err(err) => println!("{:<32} unreadable: {err}", l.name),
        }
    }
    Ok(())
}

fn status(name: &str, as_json: bool) -> ultradict::Result<()> {
    let info = inspect(name)?;
    if as_json {
        println!("{}", info_json(&info));
    } else {
        print_status(&info);
    }
    Ok(())
}

fn print_status(info: &DictInfo) {
    println!("dict              {}", info.name);
    println!("schema            {}", info.schema);
    for (object, len) in &info.segments {
        println!(
            "segment           {}/{object} ({len} bytes)",
            info.directory
        );
    }
    println!(
        "stream            {} of {} bytes used",
        info.buffer_used, info.buffer_size
    );
    match info.full_dump_size {
        Some(size) => println!("dump capacity     {size} bytes (fixed)"),
        None => println!("dump capacity     grows as needed"),
    }
    println!("epoch             {}", info.epoch);
    println!(
        "records, dumps    {}, {} (current dump {} bytes)",
        info.records, info.dumps, info.dump_bytes
    );
    println!("lifetime          {:?}", info.lifetime);
    let attached: Vec<String> = info
        .attached
        .iter()
        .map(|a| {
            let mut shown = a.pid.to_string();
            if let Some(host) = &a.host {
                shown = format!("{host} pid {shown}");
            } else if !a.same_pid_namespace {
                shown.push_str(" (other PID namespace)");
            }
            if !a.alive {
                shown.push_str(" (dead)");
            }
            shown
        })
        .collect();
    println!(
        "attached          {} live [{}]",
        info.attached_count,
        attached.join(", ")
    );
    println!("sleepers          {}", info.sleepers);
    match (&info.lock_holder, info.lock_holder_alive) {
        (Some(holder), alive) => {
            let held = holder.since.and_then(|s| s.elapsed().ok());
            let dead = if alive == Some(false) {
                " (dead: the next acquire recovers it)"
            } else {
                ""
            };
            match held {
                Some(held) => {
                    println!("lock              held by {holder} for at least {held:?}{dead}")
                }
                None => println!("lock              held by {holder}{dead}"),
            }
        }
        (None, _) => println!("lock              free"),
    }
    if info.removing {
        println!("removing          yes (its remover died: cleanup or the next open finishes it)");
    }
    println!("lock recoveries   {}", info.lock_recoveries);
    if !info.nested.is_empty() {
        println!("nested dicts");
        print_tree(info, 1);
    }
    println!(
        "orphaned          {}",
        if info.orphaned() { "yes" } else { "no" }
    );
}

/// Prints `info`'s nested dicts, and theirs, indented by `depth`.
fn print_tree(info: &DictInfo, depth: usize) {
    for child in &info.nested {
        let what = child.what.as_deref().unwrap_or("not in the register");
        let inner = inspect(&child.name);
        let summary = match &inner {
            Ok(inner) => format!(
                "epoch {}, {} live, {} bytes",
                inner.epoch,
                inner.attached_count,
                inner.bytes()
            ),
            Err(err) => format!("unreadable: {err}"),
        };
        println!("{}{}  ({what}; {summary})", "  ".repeat(depth), child.name);
        if let Ok(inner) = inner {
            print_tree(&inner, depth + 1);
        }
    }
}

/// `info`'s nested dicts, and theirs, as JSON.
fn tree_json(info: &DictInfo) -> Vec<Value> {
    info.nested
        .iter()
        .map(|child| {
            let inner = inspect(&child.name).ok();
            json!({
                "name": child.name,
                "what": child.what,
                "nested": inner.as_ref().map(tree_json).unwrap_or_default(),
            })
        })
        .collect()
}

fn info_json(info: &DictInfo) -> Value {
    let since = |t: SystemTime| {
        t.duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs_f64() as u64)
    };
    json!({
        "name": info.name,
        "schema": info.schema,
        "segments": info.segments.iter().map(|(o, l)| json!({ "name": o, "bytes": l })).collect::<Vec<_>>(),
        "bytes": info.bytes(),
        "buffer_size": info.buffer_size,
        "buffer_used": info.buffer_used,
        "full_dump_size": info.full_dump_size,
        "epoch": info.epoch,
        "records": info.records,
        "dumps": info.dumps,
        "dump_bytes": info.dump_bytes,
        "lifetime": format!("{:?}", info.lifetime),
        "attached": info.attached.iter().map(|a| json!({
            "pid": a.pid,
            "same_pid_namespace": a.same_pid_namespace,
            "alive": a.alive,
            "sleepers": a.sleepers,
            "host": a.host,
        })).collect::<Vec<_>>(),
        "attached_count": info.attached_count,
        "sleepers": info.sleepers,
        "removing": info.removing,
        "lock_holder": info.lock_holder.as_ref().map(|h| json!({
            "pid": h.pid,
            "same_pid_namespace": h.same_pid_namespace,
            "since_unix_s": h.since.map(since),
            "host": h.host,
            "alive": info.lock_holder_alive,
        })),
        "lock_recoveries": info.lock_recoveries,
        "children": info.children,
        "tree": tree_json(info),
        "orphaned": info.orphaned(),
    })
}

fn watch(name: &str, interval: Duration, count: Option<u64>) -> ultradict::Result<()> {
    let mut last = inspect(name)?;
    let mut last_at = Instant::now();
    println!(
        "{:>8} {:>12} {:>8} {:>8} {:>10} {:>6} {:>10}",
        "SECONDS", "UPDATES/S", "EPOCH", "DUMPS", "RECORDS", "LIVE", "LOCK"
    );
    let started = Instant::now();
    let mut lines = 0;
    while count.is_none_or(|count| lines < count) {
        std::thread::sleep(interval);
        let now = inspect(name)?;
        let elapsed = last_at.elapsed().as_secs_f64().max(1e-9);
        let updates = (now.records + now.dumps).saturating_sub(last.records + last.dumps);
        println!(
            "{:>8.1} {:>12.0} {:>8} {:>8} {:>10} {:>6} {:>10}",
            started.elapsed().as_secs_f64(),
            updates as f64 / elapsed,
            now.epoch,
            now.dumps,
            now.records,
            now.live_pids().len(),
            now.lock_holder
                .as_ref()
                .map_or("-".to_owned(), |h| h.pid.to_string()),
        );
        last = now;
        last_at = Instant::now();
        lines += 1;
    }
    Ok(())
}

fn unlink(name: &str) -> ultradict::Result<()> {
    let dir = match source() {
        Source::Shm(dir) => dir,
        Source::Redis(server, _) => {
            if !server.unlink(name)? {
                return Err(Error::NotFound {
                    name: name.to_owned(),
                });
            }
            println!("removed {name}");
            return Ok(());
        }
    };
    // Refuse objects that are not ours; a dict whose control segment is gone but whose
    // dumps remain is still removed.
    match inspect(name) {
        Ok(_) | Err(Error::NotReady { .. }) => {}
        Err(Error::NotFound { .. }) if !leftovers(name)? => {
            return Err(Error::NotFound {
                name: name.to_owned(),
            });
        }
        Err(Error::NotFound { .. }) => {}
        Err(err) => return Err(err),
    }
    ultradict::UltraDict::<u8, u8>::unlink_by_name_in(dir, name)?;
    println!("removed {name}");
    Ok(())
}

fn leftovers(name: &str) -> ultradict::Result<bool> {
    Ok(list_all()?.iter().any(|l| l.name == name))
}

fn cleanup(dry_run: bool) -> ultradict::Result<()> {
    let removed = match source() {
        Source::Shm(dir) => ultradict::cleanup_in(dir, dry_run)?,
        Source::Redis(server, _) => server.cleanup(dry_run)?,
    };
    let verb = if dry_run { "would remove" } else { "removed" };
    for name in &removed {
        println!("{verb} {name}");
    }
    if removed.is_empty() {
        println!("no orphaned dicts");
    }
    Ok(())
}
