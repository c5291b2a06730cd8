//! `istio.v1.auth.IstioCertificateService/CreateCertificate`, with node authorization.
//!
//! A caller authenticates as a node with a bearer token (`authorization: Bearer <token>`): its
//! bootstrap token, checked against the node token directory (see [`NodeTokens`]), or on
//! Kubernetes its service-account token, checked by TokenReview (`token_review.rs`). It names the
//! identity it wants in the request's metadata (`ImpersonatedIdentity`, as ztunnel sends it in
//! shared mode). It gets a certificate only when the control plane places a captured pod of
//! that namespace and service account on that node; anything else is PERMISSION_DENIED naming
//! the identity and the node, and counted.

use std::{
    fs,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};

use nodemesh_conventions::SpiffeId;
use nodemesh_proto::{
    istio::v1::auth::{IstioCertificateRequest, IstioCertificateResponse, istio_certificate_service_server},
    prost_types::value::Kind,
    tonic::{self, Request, Response, Status},
};
use tokio::sync::watch;

use super::{Authority, node_auth::NodeAuthenticator, token_review::Refused};
use crate::world::World;

/// Where the node bootstrap tokens are: one file per node, named after the node, holding its
/// token. Read on every request, so a token is rotated by renaming a new file into place.
#[derive(Clone, Debug)]
pub struct NodeTokens {
    dir: PathBuf,
}

/// A token shorter than this is refused as a mistake (32 bytes of hex, say, is 64).
const MIN_TOKEN: usize = 32;

impl NodeTokens {
    pub fn new(dir: PathBuf) -> Self {
        Self { dir }
    }

    /// The node whose token `presented` is.
    pub(super) fn node_of(&self, presented: &str) -> Option<String> {
        let entries = fs::read_dir(&self.dir).ok()?;
        let mut found = None;
        // Every file is compared, in constant time each, so the time taken says nothing
        // about which node (or how much of a token) matched.
        for entry in entries.flatten() {
            let Ok(token) = fs::read_to_string(entry.path()) else { continue };
            let token = token.trim();
            if token.len() >= MIN_TOKEN && equal(token.as_bytes(), presented.as_bytes()) {
                found = entry.file_name().to_str().map(str::to_owned);
            }
        }
        found
    }
}

fn equal(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Requests answered and refused, for `/status` and logs.
#[derive(Debug, Default)]
pub struct CaCounters {
    pub issued: AtomicU64,
    pub unauthenticated: AtomicU64,
    pub denied: AtomicU64,
    pub invalid: AtomicU64,
}

pub struct CertificateService {
    authority: Arc<Authority>,
    world: watch::Receiver<Arc<World>>,
    nodes: NodeAuthenticator,
    /// The lifetime issued when the request does not ask for one.
    default_lifetime: Duration,
    pub counters: Arc<CaCounters>,
}

impl CertificateService {
    pub fn new(
        authority: Arc<Authority>,
        world: watch::Receiver<Arc<World>>,
        nodes: impl Into<NodeAuthenticator>,
        default_lifetime: Duration,
    ) -> Self {
        Self { authority, world, nodes: nodes.into(), default_lifetime, counters: Arc::default() }
    }

    /// Counts into `counters` (shared with `/status`).
    pub fn with_counters(mut self, counters: Arc<CaCounters>) -> Self {
        self.counters = counters;
        self
    }

    async fn authorize(
        &self,
        request: &Request<IstioCertificateRequest>,
    ) -> Result<(String, SpiffeId), Status> {
        let token = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| {
                self.counters.unauthenticated.fetch_add(1, Relaxed);
                Status::unauthenticated("no bearer token: a node authenticates with its token")
            })?;
        let node = self.nodes.node_of(token.trim()).await.map_err(|refused| match refused {
            Refused::Unauthenticated(why) => {
                self.counters.unauthenticated.fetch_add(1, Relaxed);
                tracing::warn!(%why, "certificate refused: the caller is no node");
                Status::unauthenticated(why)
            }
            // Not the caller's fault: it should retry, not give up on its token.
            Refused::Unavailable(why) => {
                tracing::warn!(%why, "certificate refused: cannot authenticate the caller now");
                Status::unavailable(why)
            }
        })?;
        let wanted = impersonated(request.get_ref()).ok_or_else(|| {
            self.counters.invalid.fetch_add(1, Relaxed);
            Status::invalid_argument(
                "metadata.ImpersonatedIdentity: required (the workload identity the node asks for)",
            )
        })?;
        let identity: SpiffeId =
            wanted.parse().map_err(|e: nodemesh_conventions::identity::NotAnIdentity| {
                self.counters.invalid.fetch_add(1, Relaxed);
                Status::invalid_argument(format!("metadata.ImpersonatedIdentity: {e}"))
            })?;
        let hosted = identity.trust_domain == self.authority.trust_domain()
            && self.world.borrow().hosts_identity(&node, &identity.namespace, &identity.service_account);
        if !hosted {
            self.counters.denied.fetch_add(1, Relaxed);
            tracing::warn!(%identity, %node, "certificate refused: no pod of that identity on the node");
            return Err(Status::permission_denied(format!(
                "node {node} hosts no pod with identity {identity}"
            )));
        }
        Ok((node, identity))
    }
}

/// `metadata.ImpersonatedIdentity`, when it is a string.
fn impersonated(request: &IstioCertificateRequest) -> Option<&str> {
    match request.metadata.as_ref()?.fields.get("ImpersonatedIdentity")?.kind.as_ref()? {
        Kind::StringValue(s) => Some(s),
        _ => None,
    }
}

#[tonic::async_trait]
impl istio_certificate_service_server::IstioCertificateService for CertificateService {
    async fn create_certificate(
        &self,
        request: Request<IstioCertificateRequest>,
    ) -> Result<Response<IstioCertificateResponse>, Status> {
        let (node, identity) = self.authorize(&request).await?;
        let request = request.into_inner();
        let lifetime = match u64::try_from(request.validity_duration) {
            Ok(seconds) if seconds > 0 => Duration::from_secs(seconds),
            // Zero or negative: the default, as istiod does.
            _ => self.default_lifetime,
        };
        let authority = Arc::clone(&self.authority);
        // Signing is CPU work: off the runtime's threads.
        let issued = tokio::task::spawn_blocking(move || {
            authority.issue(&request.csr, &identity, lifetime).map(|c| (c, identity))
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?;
        match issued {
            Ok((cert_chain, identity)) => {
                self.counters.issued.fetch_add(1, Relaxed);
                tracing::info!(%identity, %node, ?lifetime, "certificate issued");
                Ok(Response::new(IstioCertificateResponse { cert_chain }))
            }
            Err(e) => {
                self.counters.invalid.fetch_add(1, Relaxed);
                Err(Status::invalid_argument(e.to_string()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use nodemesh_conventions::INTERCEPT_LABEL;
    use nodemesh_proto::{
        istio::v1::auth::istio_certificate_service_server::IstioCertificateService as _,
        prost_types::{Struct, Value},
    };
    use rcgen::{CertificateParams, KeyPair};

    use super::*;
    use crate::{
        ca::CaSource,
        model::{Namespace, ObjectMeta, Pod, PodSpec, PodStatus},
        store::Inputs,
        world::MeshSettings,
    };

    const NODE1_TOKEN: &str = "0123456789abcdef0123456789abcdef0123456789abcdef";

    fn world() -> World {
        let mut inputs = Inputs::default();
        let mut ns = Namespace { metadata: ObjectMeta { name: "shop".into(), ..Default::default() } };
        ns.metadata.labels.insert(INTERCEPT_LABEL.into(), "enabled".into());
        inputs.namespaces.insert("shop".into(), Arc::new(ns));
        inputs.pods.push(Arc::new(Pod {
            metadata: ObjectMeta {
                name: "cart-0".into(),
                namespace: Some("shop".into()),
                uid: Some("c0".into()),
                ..Default::default()
            },
            spec: PodSpec {
                node_name: Some("node1".into()),
                service_account_name: Some("cart".into()),
                ..Default::default()
            },
            status: PodStatus { pod_ip: Some("10.0.0.1".into()), ..Default::default() },
        }));
        World::build(&inputs, &MeshSettings::default(), 1, None)
    }

    fn service(dir: &std::path::Path) -> CertificateService {
        let tokens = dir.join("tokens");
        fs::create_dir_all(&tokens).expect("mkdir");
        fs::write(tokens.join("node1"), format!("{NODE1_TOKEN}\n")).expect("token");
        fs::write(tokens.join("node2"), "fedcba9876543210fedcba9876543210fedcba9876543210").expect("token");
        let authority = Authority::load(&CaSource::StateDir(dir.to_owned()), "cluster.local").expect("ca");
        // The receiver keeps the last value when the sender goes.
        let (_, rx) = watch::channel(Arc::new(world()));
        CertificateService::new(Arc::new(authority), rx, NodeTokens::new(tokens), Duration::from_secs(3600))
    }

    fn request(token: Option<&str>, identity: Option<&str>) -> Request<IstioCertificateRequest> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let csr = CertificateParams::default().serialize_request(&key).expect("csr").pem().expect("pem");
        let metadata = identity.map(|id| Struct {
            fields: [("ImpersonatedIdentity".to_owned(), Value { kind: Some(Kind::StringValue(id.into())) })]
                .into(),
        });
        let mut request = Request::new(IstioCertificateRequest { csr, validity_duration: 0, metadata });
        if let Some(token) = token {
            request
                .metadata_mut()
                .insert("authorization", format!("Bearer {token}").parse().expect("header"));
        }
        request
    }

    #[tokio::test]
    async fn a_node_gets_the_identities_it_hosts_and_nothing_else() {
        let dir = tempfile::tempdir().expect("tempdir");
        let svc = service(dir.path());
        let cart = "spiffe://cluster.local/ns/shop/sa/cart";
        let issued = svc.create_certificate(request(Some(NODE1_TOKEN), Some(cart))).await.expect("issued");
        assert_eq!(issued.get_ref().cert_chain.len(), 2);

        // Another node asking for cart's identity: no cart pod there.
        let other = "fedcba9876543210fedcba9876543210fedcba9876543210";
        let e = svc.create_certificate(request(Some(other), Some(cart))).await.expect_err("not hosted");
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        assert!(e.message().contains("node2") && e.message().contains(cart), "{}", e.message());
        // The right node, an identity it does not host.
        let e = svc
            .create_certificate(request(Some(NODE1_TOKEN), Some("spiffe://cluster.local/ns/shop/sa/admin")))
            .await
            .expect_err("not hosted");
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        // No token, a wrong token, no identity, a malformed identity.
        let code = |r: Result<_, Status>| r.map(|_| ()).expect_err("refused").code();
        assert_eq!(
            code(svc.create_certificate(request(None, Some(cart))).await),
            tonic::Code::Unauthenticated
        );
        assert_eq!(
            code(svc.create_certificate(request(Some("guess"), Some(cart))).await),
            tonic::Code::Unauthenticated
        );
        assert_eq!(
            code(svc.create_certificate(request(Some(NODE1_TOKEN), None)).await),
            tonic::Code::InvalidArgument
        );
        assert_eq!(
            code(svc.create_certificate(request(Some(NODE1_TOKEN), Some("cart.shop.svc"))).await),
            tonic::Code::InvalidArgument
        );
        let c = &svc.counters;
        assert_eq!(
            [
                c.issued.load(Relaxed),
                c.denied.load(Relaxed),
                c.unauthenticated.load(Relaxed),
                c.invalid.load(Relaxed)
            ],
            [1, 2, 2, 2]
        );
    }

    #[tokio::test]
    async fn a_rotated_token_takes_effect_at_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let svc = service(dir.path());
        let cart = "spiffe://cluster.local/ns/shop/sa/cart";
        let rotated = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
        fs::write(dir.path().join("tokens/node1"), rotated).expect("rotate");
        assert!(
            svc.create_certificate(request(Some(NODE1_TOKEN), Some(cart))).await.is_err(),
            "the old token"
        );
        assert!(svc.create_certificate(request(Some(rotated), Some(cart))).await.is_ok(), "the new token");
    }
}
