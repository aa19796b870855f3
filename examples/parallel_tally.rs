//! Several worker processes tally results into one shared dict, in parallel.
//! Run with `cargo run --example parallel_tally [workers] [numbers]`.
//!
//! Each worker classifies its own slice of the numbers by their last digit and by whether
//! they are prime, and adds its counts to shared tallies with `update`, an atomic
//! read-modify-write across processes. The coordinator checks that the tallies add up
//! exactly, and shows that a worker's bulk `extend` lands as one record.

use std::process::Command;

use ultradict::{Create, UltraDict};

const ROLE_VAR: &str = "TALLY_WORKER";

type Tallies = UltraDict<String, u64>;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if let Ok(spec) = std::env::var(ROLE_VAR) {
        return worker(&spec);
    }
    let mut args = std::env::args().skip(1);
    let workers: u64 = args.next().map_or(Ok(4), |a| a.parse())?;
    let numbers: u64 = args.next().map_or(Ok(200_000), |a| a.parse())?;
    let name = format!("tally-{}", std::process::id());
    let tallies: Tallies = UltraDict::open(&name)?;

    let chunk = numbers.div_ceil(workers);
    let children = (0..workers)
        .map(|w| {
            let (from, to) = (w * chunk, ((w + 1) * chunk).min(numbers));
            Command::new(std::env::current_exe()?)
                .env(ROLE_VAR, format!("{name} {w} {from} {to}"))
                .spawn()
        })
        .collect::<Result<Vec<_>, _>>()?;
    for mut child in children {
        let status = child.wait()?;
        if !status.success() {
            return Err(format!("a worker failed: {status}").into());
        }
    }

    let mut counts: Vec<_> = tallies
        .iter()?
        .filter(|(k, _)| k.starts_with("digit-"))
        .collect();
    counts.sort();
    let total: u64 = counts.iter().map(|(_, n)| n).sum();
    for (key, count) in &counts {
        println!("{key}: {count}");
    }
    println!(
        "primes below {numbers}: {}",
        tallies.get("primes")?.unwrap_or(0)
    );
    println!("numbers tallied: {total} of {numbers}, by {workers} processes");
    println!("{}", tallies.status());
    if total != numbers {
        return Err(format!("lost updates: {total} != {numbers}").into());
    }
    Ok(())
}

fn worker(spec: &str) -> Result<(), Box<dyn std::error::Error>> {
    let fields: Vec<&str> = spec.split(' ').collect();
    let [name, id, from, to] = fields[..] else {
        return Err(format!("bad spec {spec:?}").into());
    };
    let (from, to): (u64, u64) = (from.parse()?, to.parse()?);
    let tallies: Tallies = UltraDict::builder()
        .name(name)
        .create(Create::Open)
        .open()?;
    let mut digits = [0u64; 10];
    let mut primes = 0;
    for n in from..to {
        digits[(n % 10) as usize] += 1;
        primes += u64::from(is_prime(n));
    }
    for (digit, count) in digits.iter().enumerate() {
        tallies.update(format!("digit-{digit}").as_str(), |n| {
            n.unwrap_or(0) + count
        })?;
    }
    tallies.update("primes", |n| n.unwrap_or(0) + primes)?;
    // Per-worker details in one bulk write: one record, not one per key.
    tallies.extend([
        (format!("worker-{id}-from"), from),
        (format!("worker-{id}-to"), to),
        (format!("worker-{id}-primes"), primes),
    ])?;
    Ok(())
}

fn is_prime(n: u64) -> bool {
    n >= 2
        && (2..)
            .take_while(|d| d * d <= n)
            .all(|d| !n.is_multiple_of(d))
}
