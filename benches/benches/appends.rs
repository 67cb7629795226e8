//! Concurrent appends to one store, timed per append (the store and cluster-WAL benches;
//! included with `#[path]`).

use std::time::{Duration, Instant};

use carewatch_store::{Row, Store};

/// The `p` quantile (0..=1) of `v` (sorted in place).
pub fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort_unstable();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// `writers` tasks each making `appends` appends of `rows(writer, i)`, waiting for each:
/// rows appended per second, ack p50, ack p99.
pub async fn concurrent<F>(
    store: &Store,
    writers: usize,
    appends: usize,
    rows: F,
) -> (f64, Duration, Duration)
where
    F: Fn(usize, usize) -> Vec<Row> + Clone + Send + 'static,
{
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let (store, rows) = (store.clone(), rows.clone());
        tasks.push(tokio::spawn(async move {
            let (mut lat, mut n) = (Vec::with_capacity(appends), 0);
            for i in 0..appends {
                let batch = rows(w, i);
                n += batch.len();
                let t = Instant::now();
                store.append(batch, vec![]).await.expect("append");
                lat.push(t.elapsed());
            }
            (lat, n)
        }));
    }
    let (mut all, mut n) = (Vec::new(), 0);
    for t in tasks {
        let (lat, k) = t.await.expect("join");
        all.extend(lat);
        n += k;
    }
    let secs = start.elapsed().as_secs_f64();
    (n as f64 / secs, pct(&mut all, 0.5), pct(&mut all, 0.99))
}
