//! The mesh root: the CA certificate(s) every workload certificate, and the control plane's
//! serving certificate, must chain to. Given to the agent as a file at start (as ztunnel's
//! `CA_ROOT_CA`); never learned from the network, so a control plane cannot hand the agent a
//! new root along with certificates it signed.

use std::{path::Path, sync::Arc};

use rustls::RootCertStore;
use rustls::pki_types::{CertificateDer, pem::PemObject};

#[derive(Debug)]
pub struct MeshRoots {
    /// As read, for tonic's TLS settings.
    pub pem: String,
    pub store: Arc<RootCertStore>,
}

#[derive(Debug, thiserror::Error)]
pub enum RootsError {
    #[error("the mesh root {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the mesh root {path} holds no PEM certificate")]
    Empty { path: String },
    #[error("the mesh root {path}: certificate {index}: {reason}")]
    Invalid { path: String, index: usize, reason: String },
}

impl MeshRoots {
    pub fn load(path: &Path) -> Result<Self, RootsError> {
        let shown = path.display().to_string();
        let pem = std::fs::read_to_string(path)
            .map_err(|source| RootsError::Read { path: shown.clone(), source })?;
        Self::parse(&pem, &shown)
    }

    pub fn parse(pem: &str, origin: &str) -> Result<Self, RootsError> {
        let mut store = RootCertStore::empty();
        let mut count = 0;
        for (index, cert) in CertificateDer::pem_slice_iter(pem.as_bytes()).enumerate() {
            let invalid = |reason: String| RootsError::Invalid { path: origin.into(), index, reason };
            let cert = cert.map_err(|e| invalid(e.to_string()))?;
            store.add(cert).map_err(|e| invalid(e.to_string()))?;
            count += 1;
        }
        if count == 0 {
            return Err(RootsError::Empty { path: origin.into() });
        }
        Ok(Self { pem: pem.to_owned(), store: Arc::new(store) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_or_empty_root_is_a_clear_error() {
        let e = MeshRoots::load(Path::new("/nonexistent/root-cert.pem")).expect_err("missing");
        assert!(e.to_string().starts_with("the mesh root /nonexistent/root-cert.pem:"), "{e}");
        let e = MeshRoots::parse("not a certificate\n", "root.pem").expect_err("empty");
        assert_eq!(e.to_string(), "the mesh root root.pem holds no PEM certificate");
        let garbage = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        let e = MeshRoots::parse(garbage, "root.pem").expect_err("garbage");
        assert!(e.to_string().contains("certificate 0"), "{e}");
    }
}
