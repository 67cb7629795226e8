//! The TLS client settings every outgoing connection uses (PostgreSQL in cluster mode, the MQTT
//! broker over `mqtts://`): rustls with ring, TLS 1.2 or later, the system's trusted roots plus
//! one PEM file of extra roots for a private CA.

use std::path::Path;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

/// What to do when the extra roots file cannot be used (unreadable, not PEM, no certificate).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExtraRoots {
    /// Refuse: the caller named a file it relies on (libpq's `sslrootcert`).
    Required,
    /// Log a warning and go on with the system's roots (the connection may still verify).
    BestEffort,
}

/// The client settings; `extra` is a PEM file of further trusted roots, `name` what the file is
/// called in errors and warnings (e.g. `sslrootcert`).
pub fn client_config(
    extra: Option<&Path>,
    name: &str,
    policy: ExtraRoots,
) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    if let Some(path) = extra {
        match read_pem(path) {
            Ok(certs) if !certs.is_empty() => {
                roots.add_parsable_certificates(certs);
            }
            result => {
                let e = result
                    .err()
                    .unwrap_or_else(|| "no certificate in the file".into());
                match policy {
                    ExtraRoots::Required => return Err(format!("{name}: {e}")),
                    ExtraRoots::BestEffort => tracing::warn!(error = %e, "cannot read {name}"),
                }
            }
        }
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

fn read_pem(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    CertificateDer::pem_file_iter(path)
        .map_err(|e| e.to_string())?
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::{ExtraRoots, client_config};

    #[test]
    fn a_missing_roots_file_is_refused_only_when_required() {
        let missing = std::path::Path::new("/nonexistent/ca.pem");
        let e = client_config(Some(missing), "sslrootcert", ExtraRoots::Required).unwrap_err();
        assert!(e.starts_with("sslrootcert: "), "{e}");
        assert!(client_config(Some(missing), "CAREWATCH_MQTT_CA", ExtraRoots::BestEffort).is_ok());
    }

    #[test]
    fn a_file_without_a_certificate_is_refused_when_required() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let e = client_config(Some(&empty), "sslrootcert", ExtraRoots::Required).unwrap_err();
        assert_eq!(e, "sslrootcert: no certificate in the file");
        assert!(client_config(None, "sslrootcert", ExtraRoots::Required).is_ok());
    }
}
