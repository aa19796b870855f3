//! Two processes, one dict. Run with `cargo run --example quickstart`.
//!
//! The first process creates the dict and starts a second process of this same program; each
//! writes, each reads what the other wrote, and both print what they see.

use std::process::Command;
use std::time::{Duration, Instant};

use ultradict::{Create, UltraDict};

/// The second process learns the dict's name from this variable.
const DICT_VAR: &str = "QUICKSTART_DICT";

type Shared = UltraDict<String, String>;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    match std::env::var(DICT_VAR) {
        Ok(name) => second(&name),
        Err(_) => first(),
    }
}

fn first() -> Result<(), Box<dyn std::error::Error>> {
    let pid = std::process::id();
    let name = format!("quickstart-{pid}");
    let dict: Shared = UltraDict::open(&name)?;
    dict.insert("greeting".into(), format!("hello from process {pid}"))?;
    println!("[{pid}] created dict {name:?} and wrote a greeting");

    let mut second = Command::new(std::env::current_exe()?)
        .env(DICT_VAR, &name)
        .spawn()?;
    let reply = wait_for(&dict, "reply")?;
    println!("[{pid}] sees the reply: {reply:?}");
    dict.insert("ack".into(), "got it".into())?;

    let status = second.wait()?;
    let visits = dict.get("visits")?.unwrap_or_default();
    println!("[{pid}] second process exited ({status}); visits = {visits}");
    println!("[{pid}] final contents: {:?}", sorted(dict.to_hashmap()?));
    println!("{}", dict.status());
    // The last handle to close removes the dict from /dev/shm.
    dict.close()?;
    Ok(())
}

fn second(name: &str) -> Result<(), Box<dyn std::error::Error>> {
    let pid = std::process::id();
    let dict: Shared = UltraDict::builder()
        .name(name)
        .create(Create::Open)
        .open()?;
    println!(
        "[{pid}] attached; the greeting says: {:?}",
        dict.get("greeting")?
    );
    dict.insert("reply".into(), format!("hi back from process {pid}"))?;
    // An atomic read-modify-write: safe however many processes do it at once.
    dict.update("visits", |n| {
        (n.map_or(0, |n| n.parse().unwrap_or(0)) + 1).to_string()
    })?;
    let ack = wait_for(&dict, "ack")?;
    println!("[{pid}] sees the acknowledgement: {ack:?}");
    Ok(())
}

/// Polls `key` until another process sets it (the dict has no blocking wait yet).
fn wait_for(dict: &Shared, key: &str) -> Result<String, Box<dyn std::error::Error>> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(value) = dict.get(key)? {
            return Ok(value);
        }
        if Instant::now() > deadline {
            return Err(format!("nobody wrote {key:?} within 30 s").into());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn sorted(map: std::collections::HashMap<String, String>) -> Vec<(String, String)> {
    let mut entries: Vec<_> = map.into_iter().collect();
    entries.sort();
    entries
}
