//! TLS for HBONE, as ztunnel sets it up: TLS 1.3 only, AES-GCM suites, ALPN `h2`, no SNI,
//! no session resumption; both sides present their workload certificate and check the
//! other's against the mesh root. A server is accepted only if its certificate carries the
//! identity the control plane says the destination has; a client, if it carries a SPIFFE
//! identity of the server's trust domain (authorization then decides what it may reach).

use std::sync::Arc;

use rustls::{
    ClientConfig, DigitallySignedStruct, DistinguishedName, ServerConfig, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::CryptoProvider,
    pki_types::{CertificateDer, ServerName, UnixTime},
    server::{
        ClientHello, ResolvesServerCert, WebPkiClientVerifier,
        danger::{ClientCertVerified, ClientCertVerifier},
    },
    sign::CertifiedKey,
};
use webpki::{EndEntityCert, KeyUsage};

use super::{
    manager::Slot,
    roots::MeshRoots,
    san::{peer_identity, trust_domain, uri_sans},
};

/// HTTP/2 over TLS.
pub const ALPN_H2: &[u8] = b"h2";

/// ring, with ztunnel's suites in its order (AES-256 first). ring rather than aws-lc-rs:
/// it is already what tonic's TLS uses in this tree, needs no C toolchain, and on this
/// machine's AES-NI both run AES-GCM at line rate for the connection counts a node carries
/// (docs/security.md).
pub fn provider() -> Arc<CryptoProvider> {
    let base = rustls::crypto::ring::default_provider();
    Arc::new(CryptoProvider {
        cipher_suites: vec![
            rustls::crypto::ring::cipher_suite::TLS13_AES_256_GCM_SHA384,
            rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256,
        ],
        ..base
    })
}

/// The client side: presents `source`'s current certificate; accepts a server whose chain
/// leads to the mesh root for server use and whose leaf names one of `expected`.
pub fn client_config(
    source: Arc<CertifiedKey>,
    expected: Vec<Arc<str>>,
    roots: &MeshRoots,
) -> Result<ClientConfig, rustls::Error> {
    let provider = provider();
    let verifier =
        ExpectedIdentity { roots: Arc::clone(&roots.store), expected, provider: Arc::clone(&provider) };
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_cert_resolver(Arc::new(Fixed(source)));
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    config.enable_sni = false;
    config.resumption = rustls::client::Resumption::disabled();
    Ok(config)
}

/// The server side for one pod: presents the pod identity's current certificate (so a
/// refreshed one is used from the next handshake on) and requires a client certificate that
/// leads to the mesh root for client use.
pub fn server_config(pod: Arc<Slot>, roots: &MeshRoots) -> Result<ServerConfig, rustls::Error> {
    let provider = provider();
    let chain = WebPkiClientVerifier::builder_with_provider(Arc::clone(&roots.store), Arc::clone(&provider))
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?;
    let trust_domain = trust_domain(&pod.identity).to_owned();
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(MeshClients { chain, trust_domain }))
        .with_cert_resolver(Arc::new(Current(pod)));
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(config)
}

/// A client certificate must lead to the mesh root for client use (webpki), and name a
/// workload identity of the server's trust domain; both are checked inside the handshake, so
/// a refused client gets a TLS alert, as ztunnel's do.
#[derive(Debug)]
struct MeshClients {
    chain: Arc<dyn ClientCertVerifier>,
    trust_domain: String,
}

/// A client certificate that chains to the root but is no workload of this mesh.
#[derive(Debug, thiserror::Error)]
pub enum NotAWorkload {
    #[error("the client certificate carries no SPIFFE workload identity")]
    NoIdentity,
    #[error("the client is {0}, of another trust domain")]
    ForeignTrustDomain(String),
}

impl ClientCertVerifier for MeshClients {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.chain.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self.chain.verify_client_cert(end_entity, intermediates, now)?;
        let refuse = |why: NotAWorkload| {
            rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(Arc::new(
                why,
            ))))
        };
        let identity = peer_identity(end_entity).ok_or_else(|| refuse(NotAWorkload::NoIdentity))?;
        if trust_domain(&identity) != self.trust_domain {
            return Err(refuse(NotAWorkload::ForeignTrustDomain(identity)));
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.chain.supported_verify_schemes()
    }
}

#[derive(Debug)]
struct Fixed(Arc<CertifiedKey>);

impl rustls::client::ResolvesClientCert for Fixed {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.0))
    }

    fn has_certs(&self) -> bool {
        true
    }
}

#[derive(Debug)]
struct Current(Arc<Slot>);

impl ResolvesServerCert for Current {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.usable().map(|cert| Arc::clone(&cert.certified))
    }
}

/// Chain to the mesh root with the server-auth usage, then the leaf's identity must be one
/// the control plane gave for the destination. The server's DNS name plays no part: HBONE
/// peers are dialled by address.
#[derive(Debug)]
struct ExpectedIdentity {
    roots: Arc<rustls::RootCertStore>,
    expected: Vec<Arc<str>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for ExpectedIdentity {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = EndEntityCert::try_from(end_entity).map_err(|e| rustls::Error::General(e.to_string()))?;
        cert.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &self.roots.roots,
            intermediates,
            now,
            KeyUsage::server_auth(),
            None,
            None,
        )
        .map_err(|e| {
            rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(Arc::new(
                e,
            ))))
        })?;
        let (_, parsed) = x509_parser::parse_x509_certificate(end_entity)
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        let presented = uri_sans(&parsed);
        if presented.iter().any(|id| self.expected.iter().any(|want| **want == **id)) {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(
                Arc::new(WrongIdentity {
                    presented,
                    expected: self.expected.iter().map(|e| e.to_string()).collect(),
                }),
            ))))
        }
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(rustls::PeerIncompatible::Tls12NotOffered))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }

    fn root_hint_subjects(&self) -> Option<&[DistinguishedName]> {
        None
    }
}

/// The server presented a valid mesh certificate for someone else.
#[derive(Debug, thiserror::Error)]
#[error("the server is {presented:?}, expected one of {expected:?}")]
pub struct WrongIdentity {
    pub presented: Vec<String>,
    pub expected: Vec<String>,
}

/// A failed handshake's reason, as a metrics label: from the rustls error inside the I/O
/// error, by type, not by its text.
pub fn handshake_reason(e: &std::io::Error) -> &'static str {
    use rustls::CertificateError as C;
    let Some(tls) = e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) else {
        return match e.kind() {
            std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset => "connection_closed",
            _ => "io_error",
        };
    };
    match tls {
        rustls::Error::InvalidCertificate(C::Other(other))
            if other.0.downcast_ref::<WrongIdentity>().is_some() =>
        {
            "wrong_identity"
        }
        rustls::Error::InvalidCertificate(C::Other(other)) => match other.0.downcast_ref::<NotAWorkload>() {
            Some(NotAWorkload::NoIdentity) => "no_spiffe_identity",
            Some(NotAWorkload::ForeignTrustDomain(_)) => "foreign_trust_domain",
            None => "bad_certificate",
        },
        rustls::Error::InvalidCertificate(C::UnknownIssuer) => "unknown_issuer",
        rustls::Error::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => "expired",
        rustls::Error::InvalidCertificate(C::NotValidYet | C::NotValidYetContext { .. }) => "not_yet_valid",
        rustls::Error::InvalidCertificate(C::InvalidPurpose | C::InvalidPurposeContext { .. }) => {
            "wrong_usage"
        }
        rustls::Error::InvalidCertificate(_) => "bad_certificate",
        rustls::Error::NoCertificatesPresented => "no_certificate",
        rustls::Error::AlertReceived(_) => "refused_by_peer",
        rustls::Error::PeerIncompatible(_) | rustls::Error::NoApplicationProtocol => "incompatible",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_failures_are_told_apart_by_type() {
        let wrap = |e: rustls::Error| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
        let wrong = WrongIdentity {
            presented: vec!["spiffe://td/ns/a/sa/x".into()],
            expected: vec!["spiffe://td/ns/a/sa/y".into()],
        };
        let other = rustls::CertificateError::Other(rustls::OtherError(Arc::new(wrong)));
        assert_eq!(handshake_reason(&wrap(rustls::Error::InvalidCertificate(other))), "wrong_identity");
        let issuer = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        assert_eq!(handshake_reason(&wrap(issuer)), "unknown_issuer");
        assert_eq!(handshake_reason(&wrap(rustls::Error::NoCertificatesPresented)), "no_certificate");
        let eof = std::io::Error::from(std::io::ErrorKind::UnexpectedEof);
        assert_eq!(handshake_reason(&eof), "connection_closed");
    }
}
