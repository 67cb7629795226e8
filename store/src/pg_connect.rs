//! Opening a PostgreSQL connection (cluster mode's registry, leases, commit lock, remote WAL,
//! shared history and audit): one place, so every connection gets the same timeout and TLS.
//!
//! TLS: unless the URL says `sslmode=disable`, the client offers TLS (rustls) and, when the
//! server takes it, **always verifies** the server's certificate and host name — as libpq's
//! `verify-full`, whatever the mode says (libpq's `prefer` and `require` would accept any
//! certificate; a man in the middle of the registry or the WAL is not something to allow
//! silently). Trusted roots: the system's, plus the PEM file named by the URL's `sslrootcert`
//! (as in libpq URLs) or, without one, `PGSSLROOTCERT`. `sslmode=require` refuses a server
//! that does not speak TLS; `prefer` (the default) falls back to plain TCP only when the server
//! refuses TLS outright. libpq's `verify-ca` and `verify-full` are taken as `require` (the
//! verification is always done). Only the URL form (`postgres://…?…`) is rewritten; a
//! `key=value` string is passed to rust-postgres as it is.

use postgres::{Client, NoTls, config::SslMode};

use crate::tls::{ExtraRoots, client_config};
use crate::{Error, Result};

/// Splits libpq's `sslrootcert` out of a URL's query and maps `sslmode=verify-*` to `require`
/// (rust-postgres knows neither); returns the URL rust-postgres parses and the root file.
pub(crate) fn split_url(url: &str) -> (String, Option<String>) {
    let Some((base, query)) = url.split_once('?') else {
        return (url.to_owned(), None);
    };
    let mut root = None;
    let mut kept = Vec::new();
    for kv in query.split('&').filter(|kv| !kv.is_empty()) {
        match kv.split_once('=') {
            Some(("sslrootcert", v)) => {
                root = Some(
                    url::form_urlencoded::parse(format!("v={v}").as_bytes())
                        .next()
                        .map_or_else(|| v.to_owned(), |(_, v)| v.into_owned()),
                );
            }
            Some(("sslmode", "verify-ca" | "verify-full")) => kept.push("sslmode=require"),
            _ => kept.push(kv),
        }
    }
    if kept.is_empty() {
        (base.to_owned(), root)
    } else {
        (format!("{base}?{}", kept.join("&")), root)
    }
}

/// Connects, giving up after 10 s unless the URL says otherwise (`connect_timeout`): an
/// unreachable server fails the caller rather than hanging it for minutes. `what` names the
/// connection's purpose in the error (never the URL: it may carry a password).
pub(crate) fn connect(url: &str, what: &str) -> Result<Client> {
    let pg = |e| crate::pg_error(what, e);
    let (url, root) = split_url(url);
    let mut c: postgres::Config = url.parse().map_err(pg)?;
    if c.get_connect_timeout().is_none() {
        c.connect_timeout(std::time::Duration::from_secs(10));
    }
    if c.get_ssl_mode() == SslMode::Disable {
        return c.connect(NoTls).map_err(pg);
    }
    let root = root.or_else(|| std::env::var("PGSSLROOTCERT").ok());
    let root = root.as_deref().map(std::path::Path::new);
    let tls = client_config(root, "sslrootcert", ExtraRoots::Required)
        .map_err(|m| Error::Io(format!("{what}: postgres: {m}")))?;
    c.connect(tokio_postgres_rustls::MakeRustlsConnect::new(tls))
        .map_err(pg)
}

#[cfg(test)]
mod tests {
    use super::split_url;

    #[test]
    fn libpq_tls_options_are_taken_out_of_the_url() {
        assert_eq!(
            split_url("postgres://a@h/db"),
            ("postgres://a@h/db".into(), None)
        );
        assert_eq!(
            split_url("postgres://a@h/db?sslmode=verify-full&sslrootcert=%2Fetc%2Fca%20x.pem"),
            (
                "postgres://a@h/db?sslmode=require".into(),
                Some("/etc/ca x.pem".into())
            )
        );
        assert_eq!(
            split_url("postgres://a@h/db?sslrootcert=/ca.pem&connect_timeout=3"),
            (
                "postgres://a@h/db?connect_timeout=3".into(),
                Some("/ca.pem".into())
            )
        );
        assert_eq!(
            split_url("postgres://a@h/db?sslmode=disable"),
            ("postgres://a@h/db?sslmode=disable".into(), None)
        );
    }
}
