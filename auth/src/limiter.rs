//! Failed-login limits per source address: a token bucket of failures. Each failure takes a
//! token; tokens come back at a steady rate; a source with no tokens left is refused — even
//! with a good secret — until one comes back. Random 256-bit tokens cannot be guessed anyway;
//! this keeps a misbehaving client or a scanner from turning every wire into a guessing oracle
//! and from filling the logs.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failed-login limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Failures a source may make in a burst.
    pub burst: u32,
    /// One failure is forgiven per this interval.
    pub refill: Duration,
    /// Sources tracked at most (the oldest are forgotten beyond it).
    pub max_sources: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            burst: 20,
            refill: Duration::from_secs(1),
            max_sources: 10_000,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Tokens left, as of `at`.
    tokens: f64,
    at: Instant,
}

/// The per-source buckets.
#[derive(Debug)]
pub struct Limiter {
    limits: Limits,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

impl Limiter {
    /// A limiter with these limits.
    pub fn new(limits: Limits) -> Self {
        Limiter {
            limits,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    fn level(&self, b: Bucket, now: Instant) -> f64 {
        let back = now.duration_since(b.at).as_secs_f64() / self.limits.refill.as_secs_f64();
        (b.tokens + back).min(f64::from(self.limits.burst))
    }

    /// `Some(wait)` while `ip` has used up its failures.
    pub fn blocked(&self, ip: IpAddr) -> Option<Duration> {
        let now = Instant::now();
        let map = self
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let b = *map.get(&ip)?;
        let level = self.level(b, now);
        (level < 1.0).then(|| self.limits.refill.mul_f64(1.0 - level))
    }

    /// Records a failed attempt from `ip`.
    pub fn failed(&self, ip: IpAddr) {
        let now = Instant::now();
        let mut map = self
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if map.len() >= self.limits.max_sources && !map.contains_key(&ip) {
            let full = f64::from(self.limits.burst);
            map.retain(|_, b| self.level(*b, now) < full);
            if map.len() >= self.limits.max_sources {
                return;
            }
        }
        let burst = f64::from(self.limits.burst);
        let b = map.entry(ip).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        let level = self.level(*b, now);
        *b = Bucket {
            tokens: (level - 1.0).max(0.0),
            at: now,
        };
        if level - 1.0 < 1.0 {
            tracing::warn!(
                "failed logins from one source exceed the limit; refusing it for a while"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_of_failures_blocks_the_source_only() {
        let l = Limiter::new(Limits {
            burst: 3,
            refill: Duration::from_secs(60),
            max_sources: 10,
        });
        let a: IpAddr = "10.0.0.1".parse().expect("ip");
        let b: IpAddr = "10.0.0.2".parse().expect("ip");
        for _ in 0..2 {
            l.failed(a);
            assert!(l.blocked(a).is_none());
        }
        l.failed(a);
        let wait = l.blocked(a).expect("blocked after the burst");
        assert!(wait <= Duration::from_secs(60));
        assert!(l.blocked(b).is_none(), "other sources are not affected");
    }

    #[test]
    fn failures_are_forgiven_over_time() {
        let l = Limiter::new(Limits {
            burst: 1,
            refill: Duration::from_millis(20),
            max_sources: 10,
        });
        let a: IpAddr = "10.0.0.1".parse().expect("ip");
        l.failed(a);
        assert!(l.blocked(a).is_some());
        std::thread::sleep(Duration::from_millis(40));
        assert!(l.blocked(a).is_none());
    }
}
