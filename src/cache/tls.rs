//! TLS to the cache server (`rediss://`): which certificate authorities
//! engram trusts for it. The operator's CA file (`cache_ca_file`) when one
//! is given, as managed Redis and Dragonfly services hand out; else the
//! system's roots. Either way the server's certificate must name the host
//! of the URL.
//!
//! The crypto provider is named here (aws-lc-rs, the one the rest of the
//! build uses) rather than left to rustls's process default, which is
//! ambiguous when a dependency enables a second one.

use std::path::Path;
use std::sync::Arc;

use fred::types::config::TlsConnector;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use rustls::{ClientConfig, RootCertStore};

/// The TLS connector for a `rediss://` URL, trusting `ca_file` (PEM, one
/// or more certificates) or, without one, the system's roots. Errors say
/// which file or store failed and why, for the `cache_url` refusal.
pub(super) fn connector(ca_file: Option<&Path>) -> Result<TlsConnector, String> {
    let mut roots = RootCertStore::empty();
    match ca_file {
        Some(path) => {
            for cert in ca_certificates(path)? {
                roots
                    .add(cert)
                    .map_err(|e| format!("{}: not a usable CA certificate: {e}", path.display()))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            // A store with some unreadable entries is still a store.
            roots.add_parsable_certificates(found.certs);
            if roots.is_empty() {
                return Err(
                    "no system CA certificates found; set ENGRAM_CACHE_CA_FILE to the \
                     server's CA file (PEM)"
                        .to_owned(),
                );
            }
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConnector::from(config))
}

/// Every certificate in the PEM file at `path`; at least one.
pub(crate) fn ca_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: cannot read CA certificates: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{}: no certificate in it (expected PEM, -----BEGIN CERTIFICATE-----)",
            path.display()
        ));
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_without_certificates_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, "not a certificate\n").unwrap();
        let error = ca_certificates(&path).unwrap_err();
        assert!(
            error.contains("ca.pem") && error.contains("no certificate"),
            "{error}"
        );
        let missing = dir.path().join("missing.pem");
        let error = connector(Some(&missing)).err().unwrap();
        assert!(error.contains("missing.pem"), "{error}");
    }
}
