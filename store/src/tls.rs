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
        roots.add_parsable_certificates(extra_roots(path, name, policy)?);
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// The certificates in the extra roots file. `Required` refuses a file that cannot be read,
/// holds a section that does not parse, or holds no certificate; `BestEffort` logs a warning and
/// keeps every certificate that parsed.
fn extra_roots(
    path: &Path,
    name: &str,
    policy: ExtraRoots,
) -> Result<Vec<CertificateDer<'static>>, String> {
    let (certs, problem) = match CertificateDer::pem_file_iter(path) {
        Err(e) => (Vec::new(), Some(e.to_string())),
        Ok(sections) => {
            let (mut certs, mut problem) = (Vec::new(), None);
            for section in sections {
                match section {
                    Ok(cert) => certs.push(cert),
                    Err(e) => problem = problem.or(Some(e.to_string())),
                }
            }
            (certs, problem)
        }
    };
    let problem = problem.or_else(|| {
        certs
            .is_empty()
            .then(|| "no certificate in the file".into())
    });
    match (problem, policy) {
        (None, _) => Ok(certs),
        (Some(e), ExtraRoots::Required) => Err(format!("{name}: {e}")),
        (Some(e), ExtraRoots::BestEffort) => {
            tracing::warn!(error = %e, kept = certs.len(), "part of {name} could not be used");
            Ok(certs)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{ExtraRoots, client_config, extra_roots};

    #[test]
    fn a_missing_roots_file_is_refused_only_when_required() {
        let missing = std::path::Path::new("/nonexistent/ca.pem");
        let e = client_config(Some(missing), "sslrootcert", ExtraRoots::Required).unwrap_err();
        assert!(e.starts_with("sslrootcert: "), "{e}");
        assert!(client_config(Some(missing), "CAREWATCH_MQTT_CA", ExtraRoots::BestEffort).is_ok());
    }

    #[test]
    fn best_effort_keeps_the_sections_that_parse() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, _, _) = carewatch_fixtures::tls::ca_and_server_cert(dir.path());
        let good = std::fs::read_to_string(&ca).unwrap();
        let mixed = dir.path().join("mixed.pem");
        let broken = "-----BEGIN CERTIFICATE-----\n!!not base64!!\n-----END CERTIFICATE-----\n";
        std::fs::write(&mixed, format!("{broken}{good}")).unwrap();
        let kept = extra_roots(&mixed, "CAREWATCH_MQTT_CA", ExtraRoots::BestEffort).unwrap();
        assert_eq!(kept.len(), 1, "the CA after the broken section is kept");
        let e = extra_roots(&mixed, "sslrootcert", ExtraRoots::Required).unwrap_err();
        assert!(e.starts_with("sslrootcert: "), "{e}");
        assert_eq!(
            extra_roots(&ca, "sslrootcert", ExtraRoots::Required)
                .unwrap()
                .len(),
            1
        );
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
