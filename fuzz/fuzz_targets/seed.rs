//! Writes well-formed seeds into the fuzzers' corpus directories:
//! `cargo +nightly run --manifest-path fuzz/Cargo.toml --bin seed` (from the workspace root).

fn main() -> std::io::Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let seeds = [
        ("stream_decoder", ultradict::fuzzing::sample_stream()),
        ("dump_loader", ultradict::fuzzing::sample_dump()),
    ];
    for (target, (bytes, epoch)) in seeds {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir)?;
        // The targets read the epoch from the first byte.
        let mut input = vec![epoch as u8];
        input.extend_from_slice(&bytes);
        std::fs::write(dir.join("seed"), input)?;
    }
    Ok(())
}
