//! What a certificate says about who holds it: its URI SANs, and the SPIFFE workload identity
//! among them, as ztunnel reads them. A leaf: both the certificate checks and the TLS
//! verifiers use it.

use rustls::pki_types::CertificateDer;
use x509_parser::{certificate::X509Certificate, extensions::GeneralName};

/// The URI SANs of a certificate.
pub fn uri_sans(cert: &X509Certificate<'_>) -> Vec<String> {
    let Ok(Some(san)) = cert.subject_alternative_name() else { return Vec::new() };
    san.value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::URI(uri) => Some((*uri).to_owned()),
            _ => None,
        })
        .collect()
}

/// The identity a peer's leaf certificate carries: its first URI SAN, when that is a SPIFFE
/// workload identity (ztunnel's rule).
pub fn peer_identity(leaf: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(leaf).ok()?;
    let first = uri_sans(&parsed).into_iter().next()?;
    first.parse::<nodemesh_conventions::identity::SpiffeId>().ok().map(|_| first)
}

/// `spiffe://<trust domain>/...` → the trust domain.
pub fn trust_domain(identity: &str) -> &str {
    identity.strip_prefix("spiffe://").and_then(|rest| rest.split('/').next()).unwrap_or("")
}
