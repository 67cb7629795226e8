//! Limits: per query, per login attempt, per HTTP connection — over their defaults, validated.

use std::time::Duration;

use anyhow::{Result, bail};

use super::{AuthConfig, HttpConfig, QueryConfig};

/// `[auth]`'s failed-login limits over the defaults, validated.
pub(super) fn login(a: &AuthConfig) -> Result<carewatch_auth::limiter::Limits> {
    let mut l = carewatch_auth::limiter::Limits::default();
    if let Some(b) = a.failed_login_burst {
        if b == 0 {
            bail!("auth.failed_login_burst must be at least 1");
        }
        l.burst = b;
    }
    if let Some(s) = a.failed_login_refill_secs {
        if !(0.001..=86_400.0).contains(&s) {
            bail!("auth.failed_login_refill_secs must be between 0.001 and 86400");
        }
        l.refill = Duration::from_secs_f64(s);
    }
    Ok(l)
}

/// `[http]` over the defaults (at least one connection, timeouts of at least a second).
pub(super) fn http(h: &HttpConfig) -> carewatch_ingest::server::Limits {
    let mut l = carewatch_ingest::server::Limits::default();
    if let Some(n) = h.max_connections {
        l.max_connections = n.max(1);
    }
    let secs = |v: Option<u64>, d: Duration| v.map_or(d, |s| Duration::from_secs(s.max(1)));
    l.header_read_timeout = secs(h.header_read_timeout_secs, l.header_read_timeout);
    l.idle_timeout = secs(h.idle_timeout_secs, l.idle_timeout);
    l.shutdown_deadline = secs(h.shutdown_deadline_secs, l.shutdown_deadline);
    l
}

/// `[query]` over the defaults, validated.
pub(super) fn query(q: &QueryConfig) -> Result<carewatch_query::QueryLimits> {
    let mut l = carewatch_query::QueryLimits::default();
    if let Some(t) = q.timeout_secs {
        if !(0.1..=86_400.0).contains(&t) {
            bail!("query.timeout_secs must be between 0.1 and 86400");
        }
        l.timeout = Duration::from_secs_f64(t);
    }
    if let Some(m) = q.memory_mb {
        if m < 16 {
            bail!("query.memory_mb must be at least 16");
        }
        l.memory_bytes = m.saturating_mul(1 << 20);
    }
    if let Some(r) = q.max_rows {
        if r == 0 {
            bail!("query.max_rows must be at least 1");
        }
        l.max_rows = r;
    }
    for (v, name, slot) in [
        (
            q.analyst_concurrency,
            "analyst_concurrency",
            &mut l.analyst_concurrency,
        ),
        (
            q.admin_concurrency,
            "admin_concurrency",
            &mut l.admin_concurrency,
        ),
    ] {
        if let Some(n) = v {
            if n == 0 {
                bail!("query.{name} must be at least 1");
            }
            *slot = n;
        }
    }
    Ok(l)
}
