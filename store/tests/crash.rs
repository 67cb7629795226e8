//! Crash test: a real store process appends from concurrent writers while we record every
//! acknowledged reading, is killed with SIGKILL at random points many times, restarts, and
//! at the end every acknowledged reading is present exactly once.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_store-crash-writer");

#[test]
fn every_acknowledged_reading_survives_sigkill_exactly_once() {
    let dir = tempfile::tempdir().expect("tmp");
    let data = dir.path().to_str().expect("utf8").to_owned();
    let mut acked: HashSet<(String, i64)> = HashSet::new();
    // A simple deterministic generator for kill delays (no rand dependency needed).
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    let rounds = 12;
    for round in 0..rounds {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let delay = Duration::from_millis(150 + seed % 450);
        // Each round writes a fresh id range so acks never collide across rounds.
        let start = (round as i64) * 10_000_000;
        let mut child = Command::new(BIN)
            .args([&data, "4", &start.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn writer");
        let stdout = child.stdout.take().expect("stdout");
        let (first_tx, first_rx) = std::sync::mpsc::channel::<()>();
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let mut it = line.split_whitespace();
                if let (Some("ack"), Some(d), Some(t)) = (it.next(), it.next(), it.next())
                    && let Ok(t) = t.parse::<i64>()
                {
                    if got.is_empty() {
                        let _ = first_tx.send(());
                    }
                    got.push((d.to_owned(), t));
                }
            }
            got
        });
        // The kill delay counts from the first ack: opening the store (replaying the WAL,
        // reading the Delta logs) takes longer on a loaded machine than the delay itself.
        if first_rx.recv_timeout(Duration::from_secs(120)).is_err() {
            let _ = child.kill();
            panic!("round {round}: the writer acknowledged nothing in 120 s");
        }
        let t0 = Instant::now();
        while t0.elapsed() < delay {
            std::thread::sleep(Duration::from_millis(10));
            if let Ok(Some(status)) = child.try_wait() {
                panic!("writer exited early: {status}");
            }
        }
        child.kill().expect("SIGKILL"); // std's kill is SIGKILL on Unix
        let _ = child.wait();
        let got = reader.join().expect("reader");
        assert!(!got.is_empty(), "round {round}: no acks in {delay:?}");
        acked.extend(got);
    }
    let out = Command::new(BIN)
        .args(["--dump", &data])
        .output()
        .expect("dump");
    assert!(
        out.status.success(),
        "dump failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut counts: HashMap<(String, i64), usize> = HashMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let mut it = line.split_whitespace();
        if let (Some(d), Some(t)) = (it.next(), it.next()) {
            *counts
                .entry((d.to_owned(), t.parse().expect("micros")))
                .or_default() += 1;
        }
    }
    let missing: Vec<_> = acked
        .iter()
        .filter(|k| !counts.contains_key(*k))
        .take(5)
        .collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged readings lost, e.g. {missing:?}",
        acked.iter().filter(|k| !counts.contains_key(*k)).count()
    );
    let dupes: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).take(5).collect();
    assert!(dupes.is_empty(), "duplicates: {dupes:?}");
    eprintln!(
        "{} acknowledged readings over {rounds} SIGKILLs, all present exactly once ({} stored)",
        acked.len(),
        counts.len()
    );
}
