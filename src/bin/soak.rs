//! Soak test: N worker processes run mixed operations on one dict for a while (updates,
//! inserts, reads, removes, nested dicts, full dumps, and leaving and joining again), and one of
//! them is SIGKILLed and restarted at random moments. At the end, no committed update may be
//! lost, and once every handle closed nothing of the dict may be left in /dev/shm, without any
//! call to `cleanup`.
//!
//! `cargo run --release --bin soak -- [--processes 8] [--seconds 60] [--kill-every-ms 250]
//! [--filler 5000]`
//!
//! The dict starts with `--filler` entries besides the workers' keys: enough of them make its
//! dump larger than its 64 KiB buffer, so that its epochs stream into their dumps' segments
//! (0 keeps every epoch in the control segment).
//!
//! Each worker reports every update it saw committed (`update` returned `Ok`) on its stdout;
//! a worker killed mid-operation may have committed one more that it could not report. So:
//! - the shared counter ends between the increments reported and that plus the kills;
//! - each worker's sequence key ends at its last reported value or one above.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ultradict::{Create, UltraDict};

type Dict = UltraDict<String, u64>;

struct Args {
    processes: usize,
    seconds: u64,
    kill_every: Duration,
    filler: u64,
    worker: Option<(usize, String, u64)>,
}

fn parse_args() -> Args {
    let mut args = Args {
        processes: 8,
        seconds: 60,
        kill_every: Duration::from_millis(250),
        filler: 5_000,
        worker: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{arg} needs a value"));
        match arg.as_str() {
            "--processes" => args.processes = value().parse().expect("--processes N"),
            "--seconds" => args.seconds = value().parse().expect("--seconds N"),
            "--kill-every-ms" => {
                args.kill_every = Duration::from_millis(value().parse().expect("ms"))
            }
            "--filler" => args.filler = value().parse().expect("--filler N"),
            "--worker" => {
                let index = value().parse().expect("index");
                let name = value();
                let until = value().parse().expect("deadline");
                args.worker = Some((index, name, until));
            }
            other => panic!("unknown argument {other}"),
        }
    }
    args
}

fn main() {
    let args = parse_args();
    match args.worker {
        Some((index, name, until)) => worker(index, &name, until),
        None => coordinate(&args),
    }
}

/// xorshift64*: enough randomness for choosing operations, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn worker(index: usize, name: &str, until_ms: u64) {
    let open = || -> Dict {
        UltraDict::builder()
            .name(name)
            .create(Create::Open)
            .open()
            .expect("attach")
    };
    let mut d = open();
    let seq_key = format!("w{index}-seq");
    let nested_key = format!("n{index}");
    let mut seq = d.get(&seq_key).expect("get").unwrap_or(0);
    let mut rng = Rng(u64::from(std::process::id()) * 0x9e37_79b9 + 1);
    let mut out = std::io::stdout().lock();
    while unix_ms() < until_ms {
        match rng.next() % 200 {
            0..80 => {
                d.update("counter", |n| n.unwrap_or(0) + 1).expect("update");
                writeln!(out, "C").expect("report");
            }
            80..140 => {
                seq += 1;
                d.insert(seq_key.clone(), seq).expect("insert");
                writeln!(out, "S {seq}").expect("report");
            }
            140..164 => {
                let _ = d.get(&format!("k{}", rng.next() % 500)).expect("get");
            }
            164..180 => drop(
                d.insert(format!("k{}", rng.next() % 500), rng.next())
                    .expect("insert"),
            ),
            180..190 => drop(d.remove(&format!("k{}", rng.next() % 500)).expect("remove")),
            190..194 => {
                // A nested dict: joined, written and left again each time.
                let child = d.nested::<String, u64>(&nested_key).expect("nested");
                child
                    .update("hits", |n| n.unwrap_or(0) + 1)
                    .expect("nested update");
            }
            194..198 => d.dump().expect("dump"),
            _ => {
                // Leave and join again (the new handle first, so the dict never empties).
                let again = open();
                drop(std::mem::replace(&mut d, again));
                writeln!(out, "J").expect("report");
            }
        }
        out.flush().expect("flush");
    }
}

/// What the coordinator knows of one worker slot.
#[derive(Default)]
struct Slot {
    reported_increments: u64,
    last_seq: u64,
    kills: u64,
}

fn spawn(index: usize, name: &str, until_ms: u64, lines: &mpsc::Sender<(usize, String)>) -> Child {
    let mut child = Command::new(std::env::current_exe().expect("exe"))
        .args(["--worker", &index.to_string(), name, &until_ms.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn worker");
    let stdout = child.stdout.take().expect("stdout");
    let lines = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if lines.send((index, line)).is_err() {
                break;
            }
        }
    });
    child
}

fn coordinate(args: &Args) {
    let name = format!("soak-{}", std::process::id());
    let d: Dict = UltraDict::builder()
        .name(&name)
        .buffer_size(64 << 10)
        .open()
        .expect("create");
    d.extend((0..args.filler).map(|i| (format!("filler-{i}"), i)))
        .expect("filler");
    let started = Instant::now();
    let until_ms = unix_ms() + args.seconds * 1000;
    let (sender, lines) = mpsc::channel();
    let mut children: Vec<Child> = (0..args.processes)
        .map(|i| spawn(i, &name, until_ms, &sender))
        .collect();
    let mut slots: Vec<Slot> = (0..args.processes).map(|_| Slot::default()).collect();
    let mut rng = Rng(u64::from(std::process::id()) | 1);
    let mut next_kill = Instant::now() + args.kill_every;
    let mut kills = 0u64;
    let mut ops = 0u64;
    let mut rejoins = 0u64;
    let mut drain = |slots: &mut Vec<Slot>, ops: &mut u64, line: (usize, String)| {
        let (index, text) = line;
        *ops += 1;
        if text == "J" {
            rejoins += 1;
        } else if text == "C" {
            slots[index].reported_increments += 1;
        } else if let Some(seq) = text.strip_prefix("S ") {
            slots[index].last_seq = seq.parse().expect("seq");
        }
    };
    while unix_ms() < until_ms {
        while let Ok(line) = lines.recv_timeout(Duration::from_millis(5)) {
            drain(&mut slots, &mut ops, line);
            if Instant::now() >= next_kill {
                break;
            }
        }
        if Instant::now() >= next_kill && unix_ms() + 200 < until_ms {
            let victim = (rng.next() % args.processes as u64) as usize;
            let _ = children[victim].kill();
            let _ = children[victim].wait();
            // Let its reader thread pass on what it reported before dying.
            std::thread::sleep(Duration::from_millis(20));
            while let Ok(line) = lines.try_recv() {
                drain(&mut slots, &mut ops, line);
            }
            slots[victim].kills += 1;
            kills += 1;
            children[victim] = spawn(victim, &name, until_ms, &sender);
            next_kill = Instant::now() + args.kill_every;
        }
    }
    for mut child in children {
        let status = child.wait().expect("wait");
        assert!(status.success(), "a worker failed: {status}");
    }
    drop(sender);
    for line in lines.iter() {
        drain(&mut slots, &mut ops, line);
    }

    // Verify with a fresh handle, as any new process would see it.
    let check: Dict = UltraDict::builder()
        .name(&name)
        .create(Create::Open)
        .open()
        .expect("attach");
    let all: HashMap<String, u64> = check.to_hashmap().expect("contents");
    let reported: u64 = slots.iter().map(|s| s.reported_increments).sum();
    let counter = all.get("counter").copied().unwrap_or(0);
    let mut lost = 0u64;
    if counter < reported || counter > reported + kills {
        eprintln!("counter {counter}, reported increments {reported}, kills {kills}");
        lost += reported.saturating_sub(counter);
    }
    for (index, slot) in slots.iter().enumerate() {
        let value = all.get(&format!("w{index}-seq")).copied().unwrap_or(0);
        if value < slot.last_seq || value > slot.last_seq + slot.kills {
            eprintln!(
                "worker {index}: seq {value}, last reported {}, kills {}",
                slot.last_seq, slot.kills
            );
            lost += slot.last_seq.saturating_sub(value).max(1);
        }
    }
    let status = check.status();
    let nested = ultradict::inspect(&name).map_or(0, |info| info.children.len());
    drop(check);
    d.close().expect("close");
    // Every handle is closed: the last close removed everything, nobody called cleanup.
    let left = ultradict::list()
        .expect("list")
        .iter()
        .filter(|l| l.name == name)
        .count();
    println!(
        "soak: {} processes, {:.1} s, {ops} committed operations reported, {kills} SIGKILLs, \
         {rejoins} leave-and-join, {} epochs, {} lock recoveries, {nested} nested dicts, \
         counter {counter} (reported {reported}), lost {lost}, dicts left after the last close \
         {left}",
        args.processes,
        started.elapsed().as_secs_f64(),
        status.epoch,
        status.lock_recoveries,
    );
    if lost > 0 || left > 0 {
        std::process::exit(1);
    }
}
