//! The mesh's certificate authority: the root of trust and the workload certificates it
//! signs, as Istio's CA issues them (`../shared/interop/hbone.md`, section 5), so ztunnel
//! and our agent accept each other's.
//!
//! - The root is generated on first start and kept in the state directory (`files.rs`; the key
//!   file is mode 0600) or in a Kubernetes Secret shared by the replicas (`secret.rs`), or
//!   plugged in from Istio's `cacerts` layout to run as an intermediate under an existing root.
//! - A workload certificate carries exactly one URI SAN, the SPIFFE ID the caller was allowed
//!   (the CSR's own names are ignored, as istiod ignores them), is valid from two minutes ago
//!   for the lifetime asked (24 h when not, at most 90 days), and comes back with the chain in
//!   Istio's order: leaf, intermediates, root.
//!
//! Who may ask for which identity is decided by the caller of [`Authority::issue`] (node
//! authorization, in the gRPC service; nodes authenticate as `node_auth.rs` says).

mod files;
pub mod node_auth;
mod secret;
pub mod service;
pub mod token_review;

use std::{path::Path, time::Duration};

use nodemesh_conventions::SpiffeId;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use ring::rand::{SecureRandom as _, SystemRandom};
use time::OffsetDateTime;

pub use files::CaSource;
pub use node_auth::{NodeAuth, NodeAuthenticator};
pub use service::{CaCounters, CertificateService, NodeTokens};
pub use token_review::{ServiceAccount, TokenReviewSettings, TokenReviewer};

/// A workload certificate's lifetime when the request does not say.
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// The longest lifetime issued, as istiod caps it.
pub const MAX_LIFETIME: Duration = Duration::from_secs(90 * 24 * 3600);
/// How far back a certificate's validity starts, for clocks a little behind ours.
const BACKDATE: time::Duration = time::Duration::minutes(2);
/// A generated root's lifetime.
const ROOT_LIFETIME: time::Duration = time::Duration::days(10 * 365);

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("the certificate signing request: {0}")]
    Csr(#[source] rcgen::Error),
    #[error("signing: {0}")]
    Sign(#[source] rcgen::Error),
    #[error("{what}: {source}")]
    Kubernetes {
        what: String,
        #[source]
        source: kube::Error,
    },
}

/// The signing key and certificate, and the chain from it up to the root.
pub struct Authority {
    trust_domain: String,
    signing_key: KeyPair,
    /// The signing certificate, then any intermediates, then the root (PEM each).
    chain: Vec<String>,
    random: SystemRandom,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("Authority")
            .field("trust_domain", &self.trust_domain)
            .field("chain", &self.chain.len())
            .finish()
    }
}

impl Authority {
    /// The authority `source` describes: a root kept in a state directory (made on first
    /// use), or Istio's `cacerts` files.
    pub fn load(source: &CaSource, trust_domain: &str) -> Result<Self, CaError> {
        let (signing_key, chain) = files::load(source, trust_domain)?;
        Ok(Self { trust_domain: trust_domain.to_owned(), signing_key, chain, random: SystemRandom::new() })
    }

    /// The authority `source` describes, with `kube` for a root kept in a Secret (made and
    /// created on first use).
    pub async fn open(
        source: &CaSource,
        trust_domain: &str,
        kube: Option<&kube::Client>,
    ) -> Result<Self, CaError> {
        let (signing_key, chain) = match (source, kube) {
            (CaSource::Secret { namespace, name, owner }, Some(client)) => {
                secret::load_or_create(client.clone(), namespace, name, owner.as_deref(), trust_domain)
                    .await?
            }
            _ => return Self::load(source, trust_domain),
        };
        Ok(Self { trust_domain: trust_domain.to_owned(), signing_key, chain, random: SystemRandom::new() })
    }

    /// The root certificate every workload trusts (PEM).
    pub fn root_pem(&self) -> &str {
        self.chain.last().map_or("", String::as_str)
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// Signs `csr_pem` for `identity`, valid for `lifetime` (zero: the default). Returns the
    /// chain in Istio's order: the new certificate, the intermediates, the root.
    pub fn issue(
        &self,
        csr_pem: &str,
        identity: &SpiffeId,
        lifetime: Duration,
    ) -> Result<Vec<String>, CaError> {
        if identity.trust_domain != self.trust_domain {
            return Err(CaError::Invalid(format!(
                "{identity} is not in this mesh's trust domain {}",
                self.trust_domain
            )));
        }
        // Parsing checks the CSR's own signature: the caller holds the key.
        let csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(CaError::Csr)?;
        let lifetime = if lifetime.is_zero() { DEFAULT_LIFETIME } else { lifetime.min(MAX_LIFETIME) };
        // An empty subject (from `leaf_params`) makes the SAN extension critical, as Istio's
        // certificates have it.
        let mut params = self.leaf_params(lifetime)?;
        let uri = identity.to_string().try_into().map_err(CaError::Sign)?;
        params.subject_alt_names = vec![SanType::URI(uri)];
        params.extended_key_usages =
            vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let leaf = self.sign(&params, &csr.public_key)?;
        let mut chain = Vec::with_capacity(self.chain.len() + 1);
        chain.push(leaf.pem());
        chain.extend(self.chain.iter().cloned());
        Ok(chain)
    }

    /// A serving certificate for the control plane itself (the TLS port): DNS names and
    /// addresses as SANs, server authentication only. Returns the chain (PEM, leaf first) and
    /// the new key (PEM), which stays in memory.
    pub fn issue_server(&self, names: &[String], lifetime: Duration) -> Result<(String, String), CaError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(CaError::Sign)?;
        let mut params = self.leaf_params(lifetime)?;
        params.distinguished_name.push(DnType::CommonName, "nodemesh control plane");
        for name in names {
            params.subject_alt_names.push(match name.parse::<std::net::IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(name.clone().try_into().map_err(CaError::Sign)?),
            });
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = self.sign(&params, &key)?;
        let chain: String = std::iter::once(cert.pem()).chain(self.chain.iter().cloned()).collect();
        Ok((chain, key.serialize_pem()))
    }

    /// What every certificate this CA signs has: validity from two minutes ago for
    /// `lifetime`, a random serial, an empty subject, a TLS end's key usages, and the issuer's
    /// key identifier.
    fn leaf_params(&self, lifetime: Duration) -> Result<CertificateParams, CaError> {
        let mut params = CertificateParams::default();
        let now = OffsetDateTime::now_utc();
        params.not_before = now - BACKDATE;
        params.not_after =
            now + time::Duration::try_from(lifetime).map_err(|e| CaError::Invalid(e.to_string()))?;
        params.serial_number = Some(self.serial()?);
        params.distinguished_name = DistinguishedName::new();
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.use_authority_key_identifier_extension = true;
        Ok(params)
    }

    fn sign(
        &self,
        params: &CertificateParams,
        public_key: &impl rcgen::PublicKeyData,
    ) -> Result<rcgen::Certificate, CaError> {
        let issuer = Issuer::from_ca_cert_pem(&self.chain[0], &self.signing_key).map_err(CaError::Sign)?;
        params.signed_by(public_key, &issuer).map_err(CaError::Sign)
    }

    /// A random positive 128-bit serial number.
    fn serial(&self) -> Result<SerialNumber, CaError> {
        let mut bytes = [0u8; 16];
        self.random
            .fill(&mut bytes)
            .map_err(|_| CaError::Invalid("no randomness for a serial number".into()))?;
        bytes[0] &= 0x7f;
        Ok(SerialNumber::from_slice(&bytes))
    }
}

/// A self-signed root for `trust_domain`, and its key.
fn new_root(trust_domain: &str) -> Result<(KeyPair, String), CaError> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(CaError::Sign)?;
    let mut params = CertificateParams::default();
    let now = OffsetDateTime::now_utc();
    params.not_before = now - BACKDATE;
    params.not_after = now + ROOT_LIFETIME;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages =
        vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, trust_domain);
    name.push(DnType::CommonName, "nodemesh root CA");
    params.distinguished_name = name;
    let cert = params.self_signed(&key).map_err(CaError::Sign)?;
    Ok((key, cert.pem()))
}

/// Where a generated root is kept, under the control plane's state directory.
pub fn root_dir(state_dir: &Path) -> std::path::PathBuf {
    state_dir.join("ca")
}

#[cfg(test)]
mod tests;
