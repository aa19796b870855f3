//! Live configuration for async services: one process holds a derived `Config` and changes it;
//! worker processes, each a tokio runtime, await the changes (no thread blocked per waiter, no
//! polling) and apply them. Run with `cargo run --example config_reload`.

use std::process::Command;
use std::time::Duration;

use ultradict::{Change, Create, SharedDict};

#[derive(SharedDict, Debug, Default)]
struct Config {
    version: u64,
    log_level: String,
    rate_limit: u32,
}

const WORKERS: usize = 3;
const NAME_VAR: &str = "CONFIG_RELOAD_NAME";
const LAST_VERSION: u64 = 3;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if let Ok(name) = std::env::var(NAME_VAR) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        return runtime.block_on(worker(&name));
    }
    let name = format!("config-reload-{}", std::process::id());
    let config = Config::open(&name)?;
    config.set_log_level("info".into())?;
    let workers = (0..WORKERS)
        .map(|_| {
            Command::new(std::env::current_exe()?)
                .env(NAME_VAR, &name)
                .spawn()
        })
        .collect::<Result<Vec<_>, _>>()?;
    // Roll out three versions, a little apart.
    for (version, level, limit) in [(1, "info", 100), (2, "debug", 200), (3, "warn", 50)] {
        std::thread::sleep(Duration::from_millis(30));
        // One critical section: a worker never sees a version with another's settings.
        let _guard = config.lock()?;
        config.set_log_level(level.into())?;
        config.set_rate_limit(limit)?;
        config.set_version(version)?;
        println!("[admin {}] published v{version}", std::process::id());
    }
    for mut worker in workers {
        if !worker.wait()?.success() {
            return Err("a worker failed".into());
        }
    }
    config.close()?;
    Ok(())
}

/// Applies every configuration it sees until the last version, awaiting the changes.
async fn worker(name: &str) -> Result<(), Box<dyn std::error::Error>> {
    let config = Config::builder().name(name).create(Create::Open).open()?;
    let mut watcher = config.watch();
    loop {
        let (version, level, limit) = {
            let _guard = config.lock()?;
            (config.version()?, config.log_level()?, config.rate_limit()?)
        };
        println!(
            "[worker {}] applied v{version}: log level {level}, rate limit {limit}/s",
            std::process::id()
        );
        if version >= LAST_VERSION {
            return Ok(());
        }
        // Wakes when the admin commits; tells which fields changed (or that everything may have).
        match tokio::time::timeout(Duration::from_secs(30), watcher.changed()).await {
            Ok(change) => {
                if let Change::Keys(fields) = change? {
                    println!("[worker {}] changed: {fields:?}", std::process::id());
                }
            }
            Err(_) => return Err("no change within 30 s".into()),
        }
    }
}
