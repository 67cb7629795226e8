//! Cluster mode's PostgreSQL connections over TLS, against a real server that rejects plain
//! TCP (`hostssl` only): the audit trail, the registry and the alert leases — three callers of
//! the one `pg_connect::connect` — connect when the server's certificate verifies against the
//! URL's `sslrootcert` (libpq's name), and refuse a certificate nobody vouched for in every mode
//! that uses TLS, `prefer` (the default) included.

use carewatch_fixtures::postgres::Postgres;
use carewatch_store::lease::{self, Leases};
use carewatch_store::registry::Registry;
use carewatch_store::shared_audit::SharedAudit;

#[test]
fn cluster_connections_use_verified_tls_and_refuse_an_untrusted_server() {
    let (pg, ca) = Postgres::start_tls();
    let base = format!("postgres://carewatch@127.0.0.1:{}/postgres", pg.port);
    let root = ca.to_str().expect("utf8");
    // The server refuses plain connections, so every success below went over TLS.
    let plain = SharedAudit::open(&format!("{base}?sslmode=disable")).expect_err("plain TCP");
    assert!(plain.to_string().contains("SQLSTATE 28000"), "{plain}");

    let trusted = format!("{base}?sslmode=require&sslrootcert={root}");
    let audit = SharedAudit::open(&trusted).expect("audit trail over TLS");
    audit.append("one line").expect("append");
    let (_registry, admin) = Registry::open_postgres(&trusted).expect("registry over TLS");
    assert!(
        admin.is_some(),
        "a first admin credential on an empty registry"
    );
    let leases = Leases::start(&trusted, lease::Config::new("n1")).expect("leases over TLS");
    drop(leases);
    // libpq's verify-full is accepted (verification is always done), and so is the default mode.
    SharedAudit::open(&format!("{base}?sslmode=verify-full&sslrootcert={root}"))
        .expect("verify-full");
    SharedAudit::open(&format!("{base}?sslrootcert={root}")).expect("prefer");
    // The server counts our connections among its encrypted ones.
    let encrypted = pg.psql(
        "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
         WHERE s.ssl AND a.usename = 'carewatch' AND a.pid <> pg_backend_pid()",
    );
    assert!(
        encrypted[0].parse::<u32>().expect("count") >= 2,
        "{encrypted:?}"
    );

    // Without the CA the certificate does not verify: refused, whatever the mode.
    for mode in ["require", "prefer", "verify-full"] {
        let e = SharedAudit::open(&format!("{base}?sslmode={mode}")).expect_err(mode);
        assert!(
            e.to_string().contains("TLS handshake failed"),
            "{mode}: {e}"
        );
    }
    // A root file that cannot be read is named as such, not taken as "no extra roots".
    let e = SharedAudit::open(&format!(
        "{base}?sslmode=require&sslrootcert=/nonexistent.pem"
    ))
    .expect_err("missing root file");
    assert!(e.to_string().contains("sslrootcert"), "{e}");
}
