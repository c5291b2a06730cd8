//! One workload certificate: its key, generated here and kept in memory only, the CSR the
//! CA signs, and the checked chain that comes back, ready for rustls.

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use rcgen::{CertificateParams, DistinguishedName, KeyPair, SanType};
use rustls::{
    pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, UnixTime, pem::PemObject},
    sign::CertifiedKey,
};
use webpki::{EndEntityCert, KeyUsage};

use super::roots::MeshRoots;

/// A key pair and the CSR for one identity: ECDSA P-256, an empty subject and one URI SAN,
/// as ztunnel asks (the CA ignores the CSR's names and writes the identity it authorized).
pub struct Request {
    key: KeyPair,
    pub csr_pem: String,
}

impl Request {
    pub fn new(identity: &str) -> Result<Self, CertificateError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(CertificateError::Key)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        let uri = identity.try_into().map_err(CertificateError::Key)?;
        params.subject_alt_names = vec![SanType::URI(uri)];
        let csr = params.serialize_request(&key).map_err(CertificateError::Key)?;
        let csr_pem = csr.pem().map_err(CertificateError::Key)?;
        Ok(Self { key, csr_pem })
    }
}

/// A certificate the CA issued for an identity, checked against the request and the mesh
/// root. The key never leaves memory; `Debug` and the reports show the serial and dates only.
pub struct WorkloadCertificate {
    pub identity: Arc<str>,
    pub certified: Arc<CertifiedKey>,
    /// Hex, as `openssl x509 -serial` prints it.
    pub serial: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl std::fmt::Debug for WorkloadCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkloadCertificate")
            .field("identity", &self.identity)
            .field("serial", &self.serial)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CertificateError {
    #[error("making the key or the CSR: {0}")]
    Key(#[source] rcgen::Error),
    #[error("the CA returned no certificate")]
    Empty,
    #[error("the CA's certificate {index} is not PEM: {reason}")]
    Pem { index: usize, reason: String },
    #[error("the CA's leaf certificate does not parse: {0}")]
    Parse(String),
    #[error("the CA issued {got:?}, not the identity asked for ({asked})")]
    WrongIdentity { asked: String, got: Vec<String> },
    #[error("the CA's leaf certificate is not for the key in the request")]
    WrongKey,
    #[error("the CA's chain does not lead to the mesh root: {0}")]
    Untrusted(String),
}

impl WorkloadCertificate {
    /// Checks what the CA returned (`chain`: leaf first, then intermediates and roots, one
    /// PEM per element, Istio's order) and keeps what the TLS handshakes present: the leaf
    /// and any intermediates, not the root the peer already has.
    pub fn from_chain(
        identity: &str,
        request: Request,
        chain: &[String],
        roots: &MeshRoots,
    ) -> Result<Self, CertificateError> {
        let mut ders = Vec::new();
        for (index, pem) in chain.iter().enumerate() {
            for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                ders.push(cert.map_err(|e| CertificateError::Pem { index, reason: e.to_string() })?);
            }
        }
        let leaf = ders.first().ok_or(CertificateError::Empty)?;
        let (_, parsed) =
            x509_parser::parse_x509_certificate(leaf).map_err(|e| CertificateError::Parse(e.to_string()))?;
        let uris = super::san::uri_sans(&parsed);
        if uris.len() != 1 || uris[0] != identity {
            return Err(CertificateError::WrongIdentity { asked: identity.into(), got: uris });
        }
        if parsed.public_key().subject_public_key.data.as_ref() != request.key.public_key_raw() {
            return Err(CertificateError::WrongKey);
        }
        // The CA's own idea of its root (the chain's last element) is not trusted: the leaf
        // must chain to the root this agent was given.
        let presented: Vec<CertificateDer<'static>> =
            if ders.len() > 1 { ders[..ders.len() - 1].to_vec() } else { ders.clone() };
        let end_entity =
            EndEntityCert::try_from(&presented[0]).map_err(|e| CertificateError::Untrusted(e.to_string()))?;
        end_entity
            .verify_for_usage(
                webpki::ALL_VERIFICATION_ALGS,
                &roots.store.roots,
                &ders[1..],
                UnixTime::now(),
                KeyUsage::client_auth(),
                None,
                None,
            )
            .map_err(|e| CertificateError::Untrusted(e.to_string()))?;
        let validity = parsed.validity();
        let at = |t: x509_parser::time::ASN1Time| {
            SystemTime::UNIX_EPOCH + Duration::from_secs(t.timestamp().max(0) as u64)
        };
        let serial = parsed.raw_serial().iter().map(|b| format!("{b:02X}")).collect();
        let (not_before, not_after) = (at(validity.not_before), at(validity.not_after));
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(request.key.serialize_der()));
        let signing = rustls::crypto::ring::sign::any_ecdsa_type(&key)
            .map_err(|e| CertificateError::Untrusted(format!("the key: {e}")))?;
        Ok(Self {
            identity: identity.into(),
            certified: Arc::new(CertifiedKey::new(presented, signing)),
            serial,
            not_before,
            not_after,
        })
    }

    pub fn expired(&self, now: SystemTime) -> bool {
        now >= self.not_after
    }

    /// When to ask for the next one: about half way through what is left of its life from
    /// `issued` (when it arrived, or its not-before if later), ± 5% so that the identities
    /// of a node that started together do not all ask at once.
    pub fn refresh_at(&self, issued: SystemTime, jitter: f64) -> SystemTime {
        let start = issued.max(self.not_before);
        let life = self.not_after.duration_since(start).unwrap_or_default();
        let share = 0.5 + 0.05 * jitter.clamp(-1.0, 1.0);
        start + life.mul_f64(share).max(Duration::from_secs(1))
    }
}

#[cfg(test)]
mod tests {
    use rcgen::{
        BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
        SanType,
    };

    use super::*;

    const ID: &str = "spiffe://cluster.local/ns/shop/sa/cart";

    /// A root CA: its PEM and an issuer for it.
    fn ca() -> (String, Issuer<'static, KeyPair>) {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).expect("root");
        (cert.pem(), Issuer::new(params, key))
    }

    /// What a CA would return for `request`'s key, naming `identity`.
    fn issue(issuer: &Issuer<'_, KeyPair>, key: &impl rcgen::PublicKeyData, identity: &str) -> String {
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::URI(identity.try_into().expect("uri"))];
        params.extended_key_usages =
            vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.signed_by(key, issuer).expect("leaf").pem()
    }

    #[test]
    fn a_chain_is_used_only_for_the_identity_and_key_asked_for_under_the_mesh_root() {
        let (root_pem, issuer) = ca();
        let roots = MeshRoots::parse(&root_pem, "root").expect("roots");

        let request = Request::new(ID).expect("csr");
        let leaf = issue(&issuer, &request.key, ID);
        let cert =
            WorkloadCertificate::from_chain(ID, request, &[leaf, root_pem.clone()], &roots).expect("valid");
        assert_eq!(&*cert.identity, ID);
        assert!(!cert.serial.is_empty() && cert.not_after > SystemTime::now());
        // The root is not presented: the leaf alone (no intermediates here).
        assert_eq!(cert.certified.cert.len(), 1);

        let request = Request::new(ID).expect("csr");
        let other = issue(&issuer, &request.key, "spiffe://cluster.local/ns/shop/sa/admin");
        let e = WorkloadCertificate::from_chain(ID, request, &[other], &roots).expect_err("wrong identity");
        assert!(matches!(e, CertificateError::WrongIdentity { .. }), "{e}");

        let request = Request::new(ID).expect("csr");
        let stranger = KeyPair::generate().expect("key");
        let e = WorkloadCertificate::from_chain(ID, request, &[issue(&issuer, &stranger, ID)], &roots)
            .expect_err("wrong key");
        assert!(matches!(e, CertificateError::WrongKey), "{e}");

        let (_, rogue) = ca();
        let request = Request::new(ID).expect("csr");
        let leaf = issue(&rogue, &request.key, ID);
        let e = WorkloadCertificate::from_chain(ID, request, &[leaf], &roots).expect_err("another root");
        assert!(matches!(e, CertificateError::Untrusted(_)), "{e}");
    }

    #[test]
    fn refresh_comes_at_about_half_of_what_is_left() {
        let (root_pem, issuer) = ca();
        let roots = MeshRoots::parse(&root_pem, "root").expect("roots");
        let request = Request::new(ID).expect("csr");
        let leaf = issue(&issuer, &request.key, ID);
        let cert = WorkloadCertificate::from_chain(ID, request, &[leaf], &roots).expect("valid");
        let now = SystemTime::now();
        let left = cert.not_after.duration_since(now).expect("future");
        for (jitter, share) in [(-1.0, 0.45), (0.0, 0.5), (1.0, 0.55)] {
            let at = cert.refresh_at(now, jitter).duration_since(now).expect("later");
            assert!(
                (at.as_secs_f64() - left.as_secs_f64() * share).abs() < 2.0,
                "{jitter}: {at:?} of {left:?}"
            );
        }
    }
}
