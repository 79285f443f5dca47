//! Certificates for the TLS tests: a certificate authority of the test's
//! own, and server certificates it signs for the names a test chooses.
//! Nothing is read from the machine: every test makes its own.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// A certificate authority: its certificate (PEM) and what signs with it.
pub struct Authority {
    pub pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// A server's certificate and key, both PEM, written where a server reads them.
pub struct ServerFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Authority {
    pub fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().unwrap();
        let pem = params.self_signed(&key).unwrap().pem();
        Self {
            pem,
            issuer: Issuer::new(params, key),
        }
    }

    /// Writes the authority's certificate to `dir/file` (readable by all:
    /// servers may run as another user) and returns its path.
    pub fn write(&self, dir: &Path, file: &str) -> PathBuf {
        let path = dir.join(file);
        std::fs::write(&path, &self.pem).unwrap();
        readable(&path);
        path
    }

    /// A server certificate for `names` (host names or IP addresses),
    /// signed by this authority, written under `dir` with its key.
    pub fn issue(&self, dir: &Path, names: &[&str]) -> ServerFiles {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "engram test server");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let files = ServerFiles {
            cert: dir.join("server.crt"),
            key: dir.join("server.key"),
        };
        std::fs::write(&files.cert, cert.pem()).unwrap();
        std::fs::write(&files.key, key.serialize_pem()).unwrap();
        // A throwaway key, readable by the server's user.
        readable(&files.cert);
        readable(&files.key);
        files
    }
}

/// Mode 0644: a server started as another user (PgBouncer refuses root) reads it.
pub fn readable(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).unwrap();
}
