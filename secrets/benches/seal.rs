//! What a secret costs: encrypt, and parse plus decrypt (a read of a stored value), for a 40-byte token and a
//! 64 KiB plaintext, and building a ring from its configuration.
//!
//! `cargo bench -p secrets --bench seal` (env: SECRETS_BENCH_RUNS, default 5). Prints the median of the runs.

use std::hint::black_box;
use std::time::{Duration, Instant};

use secrets::{generate_key, Binding, Ciphertext, KeyRing, Secret, MAX_PLAINTEXT_BYTES};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Median time per call of `f`, over `runs` runs of `iterations` calls.
fn time(runs: usize, iterations: u32, mut f: impl FnMut()) -> Duration {
    median(
        (0..runs)
            .map(|_| {
                let t = Instant::now();
                for _ in 0..iterations {
                    f();
                }
                t.elapsed() / iterations
            })
            .collect(),
    )
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::args().any(|a| a == "--list") {
        return Ok(());
    }
    let runs = std::env::var("SECRETS_BENCH_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(5).max(1);
    let keys = format!("{},{}", generate_key()?.expose(), generate_key()?.expose());
    let ring = KeyRing::parse(&keys)?;
    let binding = Binding::new("acme", "blueprint", "web-app", "anthropic_api_key");

    let per_call = time(runs, 2_000, || {
        black_box(KeyRing::parse(black_box(&keys)).ok());
    });
    println!("KeyRing::parse, 2 keys: {per_call:.2?}");

    for (name, plaintext, iterations) in [
        ("40-byte token", "sk-ant-api03-0123456789abcdefghijklmnopq".to_owned(), 100_000),
        ("64 KiB", "a".repeat(MAX_PLAINTEXT_BYTES), 500),
    ] {
        let secret = Secret::new(plaintext);
        let stored = ring.encrypt(&secret, &binding)?.encode();
        let encrypt = time(runs, iterations, || {
            black_box(ring.encrypt(black_box(&secret), &binding).ok());
        });
        let encrypt_encode = time(runs, iterations, || {
            black_box(ring.encrypt(black_box(&secret), &binding).map(|c| c.encode()).ok());
        });
        let parse_decrypt = time(runs, iterations, || {
            black_box(Ciphertext::parse(black_box(&stored)).ok().and_then(|c| ring.decrypt(&c, &binding).ok()));
        });
        let mb_s = |d: Duration| secret.len() as f64 / d.as_secs_f64() / 1e6;
        println!(
            "{name} ({} characters stored): encrypt {encrypt:.2?} ({:.0} MB/s), encrypt + encode {encrypt_encode:.2?}, parse + decrypt {parse_decrypt:.2?} ({:.0} MB/s)",
            stored.len(),
            mb_s(encrypt),
            mb_s(parse_decrypt)
        );
    }
    Ok(())
}
