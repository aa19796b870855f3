//! One process writes a configuration struct; many read it, typed and checked at compile
//! time. Run with `cargo run --example shared_config`.
//!
//! The writer publishes a new version of the configuration; each reader process waits for
//! it and prints what it sees. Reads take no lock: with nothing new, a getter costs one atomic
//! load and a lookup in shared memory.

use std::process::Command;
use std::time::{Duration, Instant};

use ultradict::{Create, SharedDict};

#[derive(SharedDict, Debug, Default)]
struct Limits {
    max_connections: u32,
    timeout_ms: u64,
}

#[derive(SharedDict, Debug, Default)]
struct Config {
    version: u32,
    service_name: String,
    allowed_hosts: Vec<String>,
    #[ultradict(nested)]
    limits: Limits,
}

const READERS: usize = 3;
const NAME_VAR: &str = "SHARED_CONFIG_NAME";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if let Ok(name) = std::env::var(NAME_VAR) {
        return reader(&name);
    }
    let name = format!("shared-config-{}", std::process::id());
    let config = Config::open(&name)?;
    let readers = (0..READERS)
        .map(|_| {
            Command::new(std::env::current_exe()?)
                .env(NAME_VAR, &name)
                .spawn()
        })
        .collect::<Result<Vec<_>, _>>()?;

    // Publish version 2: the readers wait for it.
    config.replace(Config {
        version: 2,
        service_name: "billing".into(),
        allowed_hosts: vec!["10.0.0.1".into(), "10.0.0.2".into()],
        limits: Limits {
            max_connections: 512,
            timeout_ms: 2_500,
        },
    })?;
    println!("[writer {}] published version 2", std::process::id());

    for mut reader in readers {
        if !reader.wait()?.success() {
            return Err("a reader failed".into());
        }
    }
    config.close()?;
    Ok(())
}

fn reader(name: &str) -> Result<(), Box<dyn std::error::Error>> {
    let config = Config::builder().name(name).create(Create::Open).open()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while config.version()? < 2 {
        if Instant::now() > deadline {
            return Err("version 2 never arrived".into());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    // Typed getters: a misspelled field or a wrong type does not compile.
    let hosts: Vec<String> = config.allowed_hosts()?;
    let timeout_ms: u64 = config.limits().timeout_ms()?;
    println!(
        "[reader {}] {} v{}: hosts {:?}, max {} connections, timeout {} ms",
        std::process::id(),
        config.service_name()?,
        config.version()?,
        hosts,
        config.limits().max_connections()?,
        timeout_ms
    );
    Ok(())
}
