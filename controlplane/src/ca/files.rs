//! Where the authority's keys and certificates come from, and where a generated root is
//! kept. The key file is written with mode 0600, through a temporary file renamed into place,
//! so a crash never leaves half a key, and a restart reads the same root back.

use std::{
    fs,
    io::Write as _,
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
};

use rcgen::KeyPair;
use x509_parser::{pem::Pem, prelude::FromDer as _};

use super::{CaError, new_root, root_dir};

/// Where the signing key and certificates come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CaSource {
    /// A root of our own, generated on first start under `<state dir>/ca/`.
    StateDir(PathBuf),
    /// Istio's `cacerts` layout: `ca-cert.pem` and `ca-key.pem` sign; `cert-chain.pem` leads
    /// from `ca-cert.pem` to `root-cert.pem`.
    CaCerts(PathBuf),
    /// A root of our own kept in a Kubernetes Secret, generated and created when absent and
    /// shared by every replica (`secret.rs`; needs the Kubernetes source). A Secret created
    /// here is owned by the ServiceAccount `owner` (in the same namespace) when one is named,
    /// so the cluster's garbage collector deletes it with that account: with the Helm
    /// release, nothing is left behind.
    Secret { namespace: String, name: String, owner: Option<String> },
}

pub(super) const ROOT_CERT: &str = "root-cert.pem";
pub(super) const ROOT_KEY: &str = "root-key.pem";
/// Istio's `cacerts` names (beside `root-cert.pem`).
pub(super) const CA_CERT: &str = "ca-cert.pem";
pub(super) const CA_KEY: &str = "ca-key.pem";
const CERT_CHAIN: &str = "cert-chain.pem";

/// The signing key, and the chain from the signing certificate up to the root.
pub(super) fn load(source: &CaSource, trust_domain: &str) -> Result<(KeyPair, Vec<String>), CaError> {
    match source {
        CaSource::StateDir(state) => own_root(&root_dir(state), trust_domain),
        CaSource::CaCerts(dir) => cacerts(dir),
        CaSource::Secret { namespace, name, .. } => Err(CaError::Invalid(format!(
            "the Secret {namespace}/{name} holds the root: the CA needs the Kubernetes source"
        ))),
    }
}

fn own_root(dir: &Path, trust_domain: &str) -> Result<(KeyPair, Vec<String>), CaError> {
    let (cert_path, key_path) = (dir.join(ROOT_CERT), dir.join(ROOT_KEY));
    if !key_path.exists() {
        let (key, cert) = new_root(trust_domain)?;
        fs::create_dir_all(dir).map_err(io("creating", dir))?;
        write_atomically(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
        write_atomically(&cert_path, cert.as_bytes(), 0o644)?;
        tracing::info!(dir = %dir.display(), "generated the mesh's root certificate");
    }
    let key = read_key(&key_path)?;
    let cert = read(&cert_path)?;
    let chain = root_chain(&cert, &key, &cert_path.display())?;
    Ok((key, chain))
}

/// The chain of a root of our own: `cert` is one CA certificate, and `key` is its key.
/// `origin` says where they came from, in errors.
pub(super) fn root_chain(
    cert: &str,
    key: &KeyPair,
    origin: &dyn std::fmt::Display,
) -> Result<Vec<String>, CaError> {
    let chain = split_pem(cert, origin)?;
    let [root] = chain.as_slice() else {
        return Err(CaError::Invalid(format!("{origin}: one certificate expected, found {}", chain.len())));
    };
    check_signer(root, key, origin)?;
    Ok(chain)
}

fn cacerts(dir: &Path) -> Result<(KeyPair, Vec<String>), CaError> {
    let read_file = |name: &str| {
        let path = dir.join(name);
        if path.exists() { read(&path).map(Some) } else { Ok(None) }
    };
    istio_cacerts(&read_file, &|name: &str| dir.join(name).display().to_string())
}

/// Istio's `cacerts` layout, wherever it is kept: `read` gives a file's text (None when
/// absent), `origin` names it in errors.
pub(super) fn istio_cacerts(
    read: &dyn Fn(&str) -> Result<Option<String>, CaError>,
    origin: &dyn Fn(&str) -> String,
) -> Result<(KeyPair, Vec<String>), CaError> {
    let required =
        |name: &str| read(name)?.ok_or_else(|| CaError::Invalid(format!("{}: not found", origin(name))));
    let ca_cert = one_cert(&required(CA_CERT)?, &origin(CA_CERT))?;
    let key = parse_key(&required(CA_KEY)?, &origin(CA_KEY))?;
    check_signer(&ca_cert, &key, &origin(CA_CERT))?;
    let root = one_cert(&required(ROOT_CERT)?, &origin(ROOT_CERT))?;
    let mut chain = match read(CERT_CHAIN)? {
        Some(text) => split_pem(&text, &origin(CERT_CHAIN))?,
        None => Vec::new(),
    };
    // Istio's file starts with ca-cert.pem and ends with the root; accept one without either.
    if chain.first() != Some(&ca_cert) {
        chain.insert(0, ca_cert);
    }
    if chain.last() != Some(&root) {
        chain.push(root);
    }
    Ok((key, chain))
}

fn one_cert(text: &str, origin: &str) -> Result<String, CaError> {
    let certs = split_pem(text, &origin)?;
    match <[String; 1]>::try_from(certs) {
        Ok([cert]) => Ok(cert),
        Err(certs) => {
            Err(CaError::Invalid(format!("{origin}: one certificate expected, found {}", certs.len())))
        }
    }
}

/// Each certificate in a PEM file, re-encoded one per string.
fn split_pem(text: &str, origin: &dyn std::fmt::Display) -> Result<Vec<String>, CaError> {
    let mut out = Vec::new();
    for pem in Pem::iter_from_buffer(text.as_bytes()) {
        let pem = pem.map_err(|e| CaError::Invalid(format!("{origin}: {e}")))?;
        if pem.label != "CERTIFICATE" {
            return Err(CaError::Invalid(format!("{origin}: a {} where certificates belong", pem.label)));
        }
        pem.parse_x509().map_err(|e| CaError::Invalid(format!("{origin}: {e}")))?;
        out.push(rcgen_pem("CERTIFICATE", &pem.contents));
    }
    if out.is_empty() {
        return Err(CaError::Invalid(format!("{origin}: no certificate")));
    }
    Ok(out)
}

/// PEM with LF line endings, as rcgen writes its own (and as the files usually are).
fn rcgen_pem(label: &str, der: &[u8]) -> String {
    let config = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
    pem::encode_config(&pem::Pem::new(label, der.to_vec()), config)
}

/// The certificate is a CA's and `key` is its key.
fn check_signer(cert_pem: &str, key: &KeyPair, origin: &dyn std::fmt::Display) -> Result<(), CaError> {
    let invalid = |why: String| CaError::Invalid(format!("{origin}: {why}"));
    let der = pem::parse(cert_pem).map_err(|e| invalid(e.to_string()))?;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der.contents())
        .map_err(|e| invalid(e.to_string()))?;
    if !cert.is_ca() {
        return Err(invalid("not a CA certificate".into()));
    }
    if &*cert.public_key().subject_public_key.data != key.public_key_raw() {
        return Err(invalid("the key is not this certificate's".into()));
    }
    Ok(())
}

fn read(path: &Path) -> Result<String, CaError> {
    fs::read_to_string(path).map_err(io("reading", path))
}

/// A key from PEM; `origin` says where it came from, in errors.
pub(super) fn parse_key(text: &str, origin: &dyn std::fmt::Display) -> Result<KeyPair, CaError> {
    KeyPair::from_pem(text).map_err(|e| CaError::Invalid(format!("{origin}: {e}")))
}

fn read_key(path: &Path) -> Result<KeyPair, CaError> {
    KeyPair::from_pem(&read(path)?).map_err(|e| CaError::Invalid(format!("{}: {e}", path.display())))
}

fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> Result<(), CaError> {
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io("creating", &tmp))?;
    file.write_all(bytes).and_then(|()| file.sync_all()).map_err(io("writing", &tmp))?;
    fs::rename(&tmp, path).map_err(io("renaming into", path))
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> CaError + 'a {
    move |source| CaError::Io { what, path: path.display().to_string(), source }
}
