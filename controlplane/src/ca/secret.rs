//! The root kept in a Kubernetes Secret, so every control-plane replica signs with the same
//! root and a restart (or a new pod on another node) keeps it.
//!
//! The Secret is read at start. When it is absent the replica generates a root, as the state
//! directory does, and creates the Secret (type Opaque, `root-cert.pem` and `root-key.pem`,
//! the state directory's names). A Secret in Istio's `cacerts` layout (`ca-cert.pem`,
//! `ca-key.pem`, `root-cert.pem`, `cert-chain.pem`) is used as it is, as an intermediate. Replicas starting together race to create it: the API server
//! lets exactly one create succeed, and a loser (409 AlreadyExists) reads the winner's back
//! and uses that one, dropping the root it made. Nothing is ever overwritten.
//!
//! A Secret made here names an owner, the control plane's ServiceAccount, when one is given:
//! the Secret is created by a replica, not by Helm, so Helm would not delete it, but the
//! cluster's garbage collector deletes an object once its owner is gone. Uninstalling the
//! release deletes the ServiceAccount and so the root. A Secret someone else made (Istio's
//! `cacerts`, or a root kept across installs on purpose) is never given an owner.

use std::collections::BTreeMap;

use k8s_openapi::{
    ByteString,
    api::core::v1::{Secret, ServiceAccount},
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference},
};
use kube::{Api, Client, api::PostParams};
use rcgen::KeyPair;

use super::{
    CaError,
    files::{CA_KEY, ROOT_CERT, ROOT_KEY, istio_cacerts, parse_key, root_chain},
    new_root,
};

/// The signing key and the chain (the root alone) from the Secret `namespace/name`, made and
/// created when absent (owned by the ServiceAccount `owner` of the same namespace, if named).
pub(super) async fn load_or_create(
    client: Client,
    namespace: &str,
    name: &str,
    owner: Option<&str>,
    trust_domain: &str,
) -> Result<(KeyPair, Vec<String>), CaError> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let what = format!("the Secret {namespace}/{name}");
    let failed = |source| CaError::Kubernetes { what: what.clone(), source };
    if let Some(secret) = secrets.get_opt(name).await.map_err(failed)? {
        tracing::info!(secret = %format!("{namespace}/{name}"), "using the mesh's root from its Secret");
        return from_secret(&secret, &what);
    }
    let owner = match owner {
        Some(account) => Some(owner_reference(client, namespace, account).await?),
        None => None,
    };
    let (key, cert) = new_root(trust_domain)?;
    let mut secret = new_secret(namespace, name, &key, &cert);
    secret.metadata.owner_references = owner.map(|o| vec![o]);
    match secrets.create(&PostParams::default(), &secret).await {
        Ok(_) => {
            tracing::info!(secret = %format!("{namespace}/{name}"), "generated the mesh's root and created its Secret");
            let chain = root_chain(&cert, &key, &what)?;
            Ok((key, chain))
        }
        Err(kube::Error::Api(status)) if status.is_already_exists() => {
            // Another replica created it between our read and our create: theirs is the root.
            tracing::info!(secret = %format!("{namespace}/{name}"), "another replica created the root's Secret first: using it");
            from_secret(&secrets.get(name).await.map_err(failed)?, &what)
        }
        Err(e) => Err(failed(e)),
    }
}

/// A reference to the ServiceAccount `namespace/account`, which must exist (its uid is what
/// the garbage collector matches).
async fn owner_reference(client: Client, namespace: &str, account: &str) -> Result<OwnerReference, CaError> {
    let what = format!("the CA Secret's owner, the ServiceAccount {namespace}/{account}");
    let accounts: Api<ServiceAccount> = Api::namespaced(client, namespace);
    let found =
        accounts.get(account).await.map_err(|source| CaError::Kubernetes { what: what.clone(), source })?;
    let uid = found.metadata.uid.ok_or_else(|| CaError::Invalid(format!("{what}: has no metadata.uid")))?;
    Ok(OwnerReference {
        api_version: "v1".to_owned(),
        kind: "ServiceAccount".to_owned(),
        name: account.to_owned(),
        uid,
        ..Default::default()
    })
}

fn new_secret(namespace: &str, name: &str, key: &KeyPair, cert: &str) -> Secret {
    let data = BTreeMap::from([
        (ROOT_CERT.to_owned(), ByteString(cert.as_bytes().to_vec())),
        (ROOT_KEY.to_owned(), ByteString(key.serialize_pem().into_bytes())),
    ]);
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(namespace.to_owned()),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/managed-by".to_owned(),
                "nodemesh".to_owned(),
            )])),
            ..Default::default()
        },
        type_: Some("Opaque".to_owned()),
        data: Some(data),
        ..Default::default()
    }
}

/// The key and chain a Secret holds, checked as the files are: our own root
/// (`root-cert.pem`, `root-key.pem`), or Istio's `cacerts` layout (`ca-key.pem` present: an
/// intermediate, so an Istio `cacerts` Secret can be named as it is).
fn from_secret(secret: &Secret, what: &str) -> Result<(KeyPair, Vec<String>), CaError> {
    let text = |key: &str| -> Result<Option<String>, CaError> {
        let Some(bytes) = secret.data.as_ref().and_then(|d| d.get(key)) else { return Ok(None) };
        String::from_utf8(bytes.0.clone())
            .map(Some)
            .map_err(|_| CaError::Invalid(format!("{what}: {key} is not PEM")))
    };
    if text(CA_KEY)?.is_some() {
        return istio_cacerts(&text, &|key: &str| format!("{what} {key}"));
    }
    let field = |key: &str| text(key)?.ok_or_else(|| CaError::Invalid(format!("{what}: no {key}")));
    let key = parse_key(&field(ROOT_KEY)?, &format!("{what} {ROOT_KEY}"))?;
    let chain = root_chain(&field(ROOT_CERT)?, &key, &format!("{what} {ROOT_CERT}"))?;
    Ok((key, chain))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_made_here_reads_back_and_a_mismatched_one_is_refused() {
        let (key, cert) = new_root("cluster.local").expect("root");
        let secret = new_secret("nodemesh", "nodemesh-ca", &key, &cert);
        assert_eq!(secret.type_.as_deref(), Some("Opaque"));
        let (read_key, chain) = from_secret(&secret, "s").expect("reads back");
        assert_eq!(chain, vec![cert.clone()]);
        assert_eq!(read_key.public_key_raw(), key.public_key_raw());

        let (other_key, _) = new_root("cluster.local").expect("root");
        let mixed = new_secret("nodemesh", "nodemesh-ca", &other_key, &cert);
        let e = from_secret(&mixed, "the Secret nodemesh/nodemesh-ca").expect_err("not its key");
        assert!(e.to_string().contains("the key is not this certificate's"), "{e}");
        let mut empty = secret;
        empty.data = None;
        assert!(from_secret(&empty, "s").expect_err("empty").to_string().contains("no root-key.pem"));
    }

    #[test]
    fn an_istio_cacerts_secret_makes_an_intermediate() {
        let (root_key, root_pem) = new_root("cluster.local").expect("root");
        let root_issuer = rcgen::Issuer::from_ca_cert_pem(&root_pem, &root_key).expect("issuer");
        let ca_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let mut params = rcgen::CertificateParams::default();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages =
            vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::DigitalSignature];
        let ca_pem = params.signed_by(&ca_key, &root_issuer).expect("intermediate").pem();
        let data = |with_chain: bool| {
            let mut data = BTreeMap::from([
                ("ca-cert.pem".to_owned(), ByteString(ca_pem.clone().into_bytes())),
                ("ca-key.pem".to_owned(), ByteString(ca_key.serialize_pem().into_bytes())),
                ("root-cert.pem".to_owned(), ByteString(root_pem.clone().into_bytes())),
            ]);
            if with_chain {
                data.insert("cert-chain.pem".into(), ByteString(format!("{ca_pem}{root_pem}").into_bytes()));
            }
            Secret { data: Some(data), ..Default::default() }
        };
        for with_chain in [true, false] {
            let (key, chain) = from_secret(&data(with_chain), "s").expect("istio's layout");
            assert_eq!(chain, vec![ca_pem.clone(), root_pem.clone()], "intermediate, then root");
            assert_eq!(key.public_key_raw(), ca_key.public_key_raw());
        }
        let mut no_root = data(true);
        no_root.data.as_mut().expect("data").remove("root-cert.pem");
        let e = from_secret(&no_root, "the Secret istio-system/cacerts").expect_err("no root");
        assert!(e.to_string().contains("root-cert.pem: not found"), "{e}");
    }
}
