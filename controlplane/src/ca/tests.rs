use std::{os::unix::fs::PermissionsExt as _, time::Duration};

use rcgen::{CertificateParams, KeyPair};
use x509_parser::{extensions::GeneralName, prelude::FromDer as _};

use super::*;

fn csr(key: &KeyPair, dns_san: Option<&str>) -> String {
    // Whatever names the CSR asks for, the certificate carries only the granted identity.
    let params =
        CertificateParams::new(dns_san.map(|s| vec![s.to_owned()]).unwrap_or_default()).expect("params");
    params.serialize_request(key).expect("csr").pem().expect("pem")
}

fn parsed(pem_text: &str) -> (Vec<u8>, String) {
    let der = pem::parse(pem_text).expect("pem").into_contents();
    (der, pem_text.to_owned())
}

#[test]
fn a_generated_root_is_kept_with_a_private_key_file_and_survives_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let source = CaSource::StateDir(dir.path().to_owned());
    let first = Authority::load(&source, "cluster.local").expect("first start");
    let key_file = root_dir(dir.path()).join("root-key.pem");
    let mode = std::fs::metadata(&key_file).expect("key file").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the root key must be readable by its owner only");
    let again = Authority::load(&source, "cluster.local").expect("restart");
    assert_eq!(first.root_pem(), again.root_pem(), "a restart keeps the same root");
    assert!(format!("{first:?}").contains("chain"), "Debug shows no key: {first:?}");
}

#[test]
fn a_workload_certificate_is_istios_shape() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Authority::load(&CaSource::StateDir(dir.path().to_owned()), "cluster.local").expect("ca");
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let id = SpiffeId::new("cluster.local", "shop", "cart");
    let chain = ca.issue(&csr(&key, Some("evil.example")), &id, Duration::from_secs(30)).expect("issued");
    assert_eq!(chain.len(), 2, "leaf, then the root");
    assert_eq!(chain[1], ca.root_pem());

    let (der, _) = parsed(&chain[0]);
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(&der).expect("x509");
    let san = cert.subject_alternative_name().expect("ext").expect("a SAN");
    assert!(san.critical, "an empty subject makes the SAN critical");
    let names: Vec<String> = san.value.general_names.iter().map(|n| format!("{n:?}")).collect();
    assert_eq!(san.value.general_names.len(), 1, "{names:?}");
    assert!(
        matches!(san.value.general_names[0], GeneralName::URI("spiffe://cluster.local/ns/shop/sa/cart")),
        "{names:?}"
    );
    assert!(!cert.is_ca());
    let eku = cert.extended_key_usage().expect("ext").expect("EKU").value;
    assert!(eku.server_auth && eku.client_auth);
    let life = cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp();
    assert_eq!(life, 30 + 120, "30 s asked, backdated two minutes");
    assert_eq!(
        &*cert.public_key().subject_public_key.data,
        key.public_key_raw(),
        "the CSR's key is certified"
    );
    // Signed by the root.
    let (root_der, _) = parsed(ca.root_pem());
    let (_, root) = x509_parser::certificate::X509Certificate::from_der(&root_der).expect("root");
    cert.verify_signature(Some(root.public_key())).expect("signed by the root");
}

#[test]
fn lifetimes_default_and_are_capped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Authority::load(&CaSource::StateDir(dir.path().to_owned()), "cluster.local").expect("ca");
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let id = SpiffeId::new("cluster.local", "shop", "cart");
    let life = |asked: Duration| {
        let chain = ca.issue(&csr(&key, None), &id, asked).expect("issued");
        let (der, _) = parsed(&chain[0]);
        let (_, cert) = x509_parser::certificate::X509Certificate::from_der(&der).expect("x509");
        (cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp() - 120) as u64
    };
    assert_eq!(life(Duration::ZERO), DEFAULT_LIFETIME.as_secs());
    assert_eq!(life(Duration::from_secs(365 * 24 * 3600)), MAX_LIFETIME.as_secs());
}

#[test]
fn refused_requests_say_why() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Authority::load(&CaSource::StateDir(dir.path().to_owned()), "cluster.local").expect("ca");
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let other = SpiffeId::new("example.org", "shop", "cart");
    let e = ca.issue(&csr(&key, None), &other, Duration::ZERO).expect_err("another trust domain");
    assert!(e.to_string().contains("example.org"), "{e}");
    let mut tampered = csr(&key, None).into_bytes();
    let at = tampered.len() / 2;
    tampered[at] = if tampered[at] == b'A' { b'B' } else { b'A' };
    let id = SpiffeId::new("cluster.local", "shop", "cart");
    assert!(ca.issue(&String::from_utf8(tampered).expect("utf-8"), &id, Duration::ZERO).is_err());
}

#[test]
fn istios_cacerts_layout_makes_an_intermediate() {
    // An outside root signs our intermediate: ca-cert.pem, ca-key.pem, root-cert.pem,
    // cert-chain.pem (ca-cert then root), as Istio's plug-in CA instructions make them.
    let dir = tempfile::tempdir().expect("tempdir");
    let (root_key, root_pem) = new_root("cluster.local").expect("root");
    let root_issuer = rcgen::Issuer::from_ca_cert_pem(&root_pem, &root_key).expect("issuer");
    let ca_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let mut params = CertificateParams::default();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::DigitalSignature];
    params.distinguished_name.push(rcgen::DnType::CommonName, "intermediate");
    let ca_pem = params.signed_by(&ca_key, &root_issuer).expect("intermediate").pem();
    std::fs::write(dir.path().join("ca-cert.pem"), &ca_pem).expect("write");
    std::fs::write(dir.path().join("ca-key.pem"), ca_key.serialize_pem()).expect("write");
    std::fs::write(dir.path().join("root-cert.pem"), &root_pem).expect("write");
    std::fs::write(dir.path().join("cert-chain.pem"), format!("{ca_pem}{root_pem}")).expect("write");

    let ca = Authority::load(&CaSource::CaCerts(dir.path().to_owned()), "cluster.local").expect("ca");
    assert_eq!(ca.root_pem(), root_pem);
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let chain = ca
        .issue(&csr(&key, None), &SpiffeId::new("cluster.local", "a", "b"), Duration::ZERO)
        .expect("issued");
    assert_eq!(chain.len(), 3, "leaf, intermediate, root");
    assert_eq!((chain[1].as_str(), chain[2].as_str()), (ca_pem.as_str(), root_pem.as_str()));

    // A key that is not the certificate's is refused at start, naming the file.
    std::fs::write(dir.path().join("ca-key.pem"), key.serialize_pem()).expect("write");
    let e =
        Authority::load(&CaSource::CaCerts(dir.path().to_owned()), "cluster.local").expect_err("wrong key");
    assert!(e.to_string().contains("ca-cert.pem") && e.to_string().contains("key"), "{e}");
}
