//! Verification speed against `sha256sum` over the same file, measured in the same run.
//!
//! `cargo bench -p audit --bench verify` (env: AUDIT_BENCH_EVENTS, default 200000; AUDIT_BENCH_PAYLOAD, default 400
//! bytes of payload per event). Writes a synthetic export to a temporary file, warms the page cache, then runs
//! `sha256sum FILE` and `audit::verify` over the file three times each, alternating, and prints the figures.

#[path = "../tests/common/mod.rs"]
mod common;

use std::fs::File;
use std::io::{BufReader, BufWriter, Read};
use std::process::Command;
use std::time::{Duration, Instant};

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::args().any(|a| a == "--list") {
        return Ok(());
    }
    let events = env_or("AUDIT_BENCH_EVENTS", 200_000);
    let payload = env_or("AUDIT_BENCH_PAYLOAD", 400) as usize;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("export.ndjson");
    let key = common::test_key();

    let started = Instant::now();
    let last =
        common::write_export(BufWriter::with_capacity(1 << 20, File::create(&path)?), &key, 42, events, 1000, payload)?;
    let size = std::fs::metadata(&path)?.len();
    let mut rng = common::Rng::new(7);
    let sample: Vec<usize> = (1..=1000)
        .map(|i| audit::canonical_json(&common::synthetic_event(&mut rng, i, payload).payload).map_or(0, |p| p.len()))
        .collect();
    let avg_payload = sample.iter().sum::<usize>() / sample.len();
    println!(
        "export: {events} events, checkpoint every 1000 and a final one, {:.1} MB ({} bytes/line, payload {avg_payload} bytes on average), written in {:.2?}",
        size as f64 / 1e6,
        size / events.max(1),
        started.elapsed()
    );

    // Warm the page cache.
    let mut sink = vec![0u8; 1 << 20];
    let mut f = File::open(&path)?;
    while f.read(&mut sink)? > 0 {}

    let mut sha = Vec::new();
    let mut ours = Vec::new();
    let runs = env_or("AUDIT_BENCH_RUNS", 3) as usize;
    for run in 1..=runs {
        let t = Instant::now();
        let out = Command::new("sha256sum").arg(&path).output()?;
        let d = t.elapsed();
        if !out.status.success() {
            return Err(format!("sha256sum failed: {}", String::from_utf8_lossy(&out.stderr)).into());
        }
        sha.push(d);

        let t = Instant::now();
        let reader = BufReader::with_capacity(1 << 20, File::open(&path)?);
        let report = audit::verify(reader, key.public_key(), Some(&last), |_| {})?;
        let d = t.elapsed();
        assert_eq!(report.events_verified, events);
        ours.push(d);
        println!("run {run}: sha256sum {:.3?}, verify {:.3?}", sha[run - 1], d);
    }
    let mbps = |d: Duration| size as f64 / 1e6 / d.as_secs_f64();
    let eps = |d: Duration| events as f64 / d.as_secs_f64();
    let (s_best, v_best) =
        (*sha.iter().min().unwrap_or(&Duration::ZERO), *ours.iter().min().unwrap_or(&Duration::ZERO));
    let (s, v) = (median(sha), median(ours));
    println!("nproc: {}", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
    println!("sha256sum      : {:>8.1} MB/s  {:>10.0} events/s  (median of {runs})", mbps(s), eps(s));
    println!("audit::verify  : {:>8.1} MB/s  {:>10.0} events/s  (median of {runs})", mbps(v), eps(v));
    println!("best of {runs}: sha256sum {:.1} MB/s, verify {:.1} MB/s", mbps(s_best), mbps(v_best));
    println!(
        "ratio verify/sha256sum: {:.2}x median, {:.2}x best (target >= 0.5x)",
        s.as_secs_f64() / v.as_secs_f64(),
        s_best.as_secs_f64() / v_best.as_secs_f64()
    );
    Ok(())
}
