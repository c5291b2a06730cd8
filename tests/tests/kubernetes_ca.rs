//! The CA on Kubernetes, against the API-server double (`nodemesh_testbed::apiserver`):
//! agents authenticate with their service-account tokens, checked by TokenReview, and get
//! certificates only for pods on the node their token is bound to; the root lives in a Secret
//! that replicas started together create once and share. No root needed: the control planes
//! run in-process on loopback.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use nodemesh_controlplane::{
    CaSettings, KubernetesSettings, MeshSettings, Settings, Source,
    ca::{CaSource, NodeAuth, TokenReviewSettings},
    kubernetes::kube,
};
use nodemesh_proto::{
    istio::v1::auth::{
        IstioCertificateRequest, istio_certificate_service_client::IstioCertificateServiceClient,
    },
    prost_types::{Struct, Value as PbValue, value::Kind},
    tonic::{self, Request},
};
use nodemesh_testbed::apiserver::{ApiServer, KnownToken};
use serde_json::{Value, json};
use tokio::sync::oneshot;

const WAIT: Duration = Duration::from_secs(10);
const AUDIENCE: &str = "nodemesh-ca";
const AGENT: &str = "system:serviceaccount:nodemesh:nodemesh-agent";
const CART: &str = "spiffe://cluster.local/ns/shop/sa/sa-cart";
const WEB: &str = "spiffe://cluster.local/ns/shop/sa/sa-web";
/// Any valid CSR will do: the CA certifies its key for the identity it grants.
const CSR: &str = "-----BEGIN CERTIFICATE REQUEST-----
MIG5MGICAQAwADBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IABFGiskYGeJLJB9Ud
tX7QDVZLqyMqUFWi3rRnvDwuyCUk82GpyQ0uV+WPlQOVjukX7SCCvwWZc9Go+BFo
fcTfO1agADAKBggqhkjOPQQDAgNHADBEAiBS1ottbrcLE6vlpEtH2xbNmlPrXNVp
Uo7Ows3HvYiNjQIgdkWElKcDIY2O9TFhVp584tNxKfbM2Eg1ZkYkX5cZr68=
-----END CERTIFICATE REQUEST-----
";

/// A control plane watching the double, its CA's root in `nodemesh/nodemesh-ca`, agents
/// authenticated by TokenReview.
struct Cp {
    xds: SocketAddr,
    admin: SocketAddr,
    _stop: oneshot::Sender<()>,
}

impl Cp {
    async fn start(api: &ApiServer) -> Self {
        let xds = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind xds");
        let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind admin");
        let (xds_addr, admin_addr) = (xds.local_addr().expect("addr"), admin.local_addr().expect("addr"));
        let config = kube::Config::new(api.url().parse().expect("url"));
        let settings = Settings {
            source: Source::Kubernetes(KubernetesSettings {
                config: Some(Box::new(config)),
                istio_dataplane_mode: false,
            }),
            listen: xds_addr,
            admin: admin_addr,
            mesh: MeshSettings::default(),
            poll: Duration::from_secs(60),
            ca: Some(CaSettings {
                source: CaSource::Secret {
                    namespace: "nodemesh".into(),
                    name: "nodemesh-ca".into(),
                    owner: Some("nodemesh-controlplane".into()),
                },
                node_auth: NodeAuth::TokenReview(TokenReviewSettings {
                    audience: AUDIENCE.into(),
                    agent: "nodemesh/nodemesh-agent".parse().expect("service account"),
                }),
                default_lifetime: Duration::from_secs(3600),
                tls_listen: None,
                tls_names: Vec::new(),
            }),
        };
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            nodemesh_controlplane::serve(settings, xds, admin, async {
                let _ = stopped.await;
            })
            .await
            .expect("control plane");
        });
        Self { xds: xds_addr, admin: admin_addr, _stop: stop }
    }

    /// The admin API's `/status` (for failure messages).
    async fn status(&self) -> String {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut conn = tokio::net::TcpStream::connect(self.admin).await.expect("admin");
        conn.write_all(b"GET /status HTTP/1.0\r\nHost: cp\r\n\r\n").await.expect("request");
        let mut text = String::new();
        conn.read_to_string(&mut text).await.expect("response");
        text
    }

    /// Asks for `identity` with `token`, waiting for the control plane to serve.
    async fn certificate(&self, token: &str, identity: &str) -> Result<Vec<String>, tonic::Status> {
        let deadline = Instant::now() + WAIT;
        let mut client = loop {
            match IstioCertificateServiceClient::connect(format!("http://{}", self.xds)).await {
                Ok(client) => break client,
                Err(e) => assert!(Instant::now() < deadline, "connecting: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let value = PbValue { kind: Some(Kind::StringValue(identity.into())) };
        let metadata = Struct { fields: [("ImpersonatedIdentity".to_owned(), value)].into() };
        let mut request = Request::new(IstioCertificateRequest {
            csr: CSR.into(),
            validity_duration: 60,
            metadata: Some(metadata),
        });
        request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().expect("header"));
        let answered = tokio::time::timeout(WAIT, client.create_certificate(request)).await;
        answered.expect("the CA answers in time").map(|r| r.into_inner().cert_chain)
    }
}

fn known(username: &str, audiences: &[&str], node: Option<&str>) -> KnownToken {
    KnownToken {
        username: username.into(),
        audiences: audiences.iter().map(|a| (*a).to_owned()).collect(),
        node: node.map(str::to_owned),
    }
}

fn namespace(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": name, "uid": "6c1f0a52-0000-4000-8000-000000000001",
            "labels": {"kubernetes.io/metadata.name": name, "nodemesh.io/intercept": "enabled"}},
        "status": {"phase": "Active"}})
}

fn pod(uid: &str, name: &str, node: &str, ip: &str, app: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "shop", "uid": uid, "labels": {"app": app}},
        "spec": {"nodeName": node, "serviceAccountName": format!("sa-{app}"),
            "containers": [{"name": app, "image": format!("registry.example/{app}:1.0")}]},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}})
}

/// The control plane's ServiceAccount, as the chart installs it (the CA Secret's owner).
const CONTROLPLANE_SA_UID: &str = "6c1f0a52-0000-4000-8000-0000000000aa";

/// The double with a mesh namespace: cart on node1, web on node2.
fn cluster() -> ApiServer {
    let api = ApiServer::start().expect("API-server double");
    api.apply(json!({"apiVersion": "v1", "kind": "ServiceAccount",
        "metadata": {"name": "nodemesh-controlplane", "namespace": "nodemesh", "uid": CONTROLPLANE_SA_UID}}));
    api.apply(namespace("shop"));
    api.apply(pod("6c1f0a52-0000-4000-8000-0000000000c0", "cart-0", "node1", "10.0.1.5", "cart"));
    api.apply(pod("6c1f0a52-0000-4000-8000-0000000000e0", "web-0", "node2", "10.0.2.5", "web"));
    api
}

fn token_reviews(api: &ApiServer) -> usize {
    api.requests()
        .iter()
        .filter(|r| r.starts_with("POST /apis/authentication.k8s.io/v1/tokenreviews"))
        .count()
}

/// The root kept in the Secret (PEM).
fn secret_root(api: &ApiServer) -> String {
    let secret = api.get("v1", "Secret", Some("nodemesh"), "nodemesh-ca").expect("the Secret was created");
    assert_eq!(secret["type"], "Opaque");
    assert!(secret["data"]["root-key.pem"].is_string(), "the key is kept: {secret}");
    String::from_utf8(base64(secret["data"]["root-cert.pem"].as_str().expect("root-cert.pem")))
        .expect("utf-8")
}

/// Standard base64 (a Secret's data).
fn base64(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {c}"),
    };
    let digits: Vec<u8> = text.bytes().filter(|c| *c != b'=').map(value).collect();
    digits
        .chunks(4)
        .flat_map(|chunk| {
            let bits =
                chunk.iter().enumerate().fold(0u32, |acc, (i, d)| acc | (u32::from(*d) << (18 - 6 * i)));
            let bytes = [(bits >> 16) as u8, (bits >> 8) as u8, bits as u8];
            bytes.into_iter().take(chunk.len() - 1)
        })
        .collect()
}

#[tokio::test]
async fn an_agent_gets_certificates_for_pods_on_its_tokens_node_only() {
    let api = cluster();
    api.add_token("agent-on-node1", known(AGENT, &[AUDIENCE], Some("node1")));
    api.add_token("agent-on-node2", known(AGENT, &[AUDIENCE], Some("node2")));
    api.add_token("agent-on-node1-later", known(AGENT, &[AUDIENCE], Some("node1")));
    // A token for the API server itself (the pod's default token), replayed at the CA.
    api.add_token(
        "for-the-api-server",
        known(AGENT, &["https://kubernetes.default.svc.cluster.local"], Some("node1")),
    );
    api.add_token(
        "a-workloads-token",
        known("system:serviceaccount:shop:sa-cart", &[AUDIENCE], Some("node1")),
    );
    api.add_token("not-bound-to-a-pod", known(AGENT, &[AUDIENCE], None));
    let cp = Cp::start(&api).await;

    let chain = match cp.certificate("agent-on-node1", CART).await {
        Ok(chain) => chain,
        Err(e) => panic!("cart runs on node1: {e}; {}", cp.status().await),
    };
    assert_eq!(chain.len(), 2, "leaf and root");
    assert_eq!(chain[1], secret_root(&api), "signed under the root kept in the Secret");

    let code = |r: Result<Vec<String>, tonic::Status>| r.expect_err("refused").code();
    // The per-node restriction, with the node from the token.
    let e = cp.certificate("agent-on-node1", WEB).await.expect_err("web runs on node2");
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
    assert!(e.message().contains("node1") && e.message().contains(WEB), "{}", e.message());
    assert_eq!(code(cp.certificate("agent-on-node2", CART).await), tonic::Code::PermissionDenied);
    cp.certificate("agent-on-node2", WEB).await.expect("web runs on node2");
    // Not an agent's token for the CA.
    for token in ["for-the-api-server", "a-workloads-token", "not-bound-to-a-pod", "unknown-token"] {
        let e = cp.certificate(token, CART).await.expect_err(token);
        assert_eq!(e.code(), tonic::Code::Unauthenticated, "{token}: {}", e.message());
    }

    // An accepted token is not reviewed again for a while.
    let reviews = token_reviews(&api);
    cp.certificate("agent-on-node1", CART).await.expect("again");
    assert_eq!(token_reviews(&api), reviews, "the first review is cached");
    // The API server failing: a cached token still works, a new one is told to retry.
    api.fail_token_reviews(true);
    cp.certificate("agent-on-node1", CART).await.expect("cached");
    let e = cp.certificate("agent-on-node1-later", CART).await.expect_err("no review");
    assert_eq!(e.code(), tonic::Code::Unavailable, "{}", e.message());
    api.fail_token_reviews(false);
    cp.certificate("agent-on-node1-later", CART).await.expect("reviewed once the API server answers");
}

#[tokio::test]
async fn replicas_started_together_share_one_root_from_the_secret() {
    let api = cluster();
    api.add_token("agent-on-node1", known(AGENT, &[AUDIENCE], Some("node1")));
    // Both replicas find the Secret absent and both try to create it.
    api.hold_secret_creates(2);
    let (a, b) = tokio::join!(Cp::start(&api), Cp::start(&api));
    let (from_a, from_b) =
        tokio::join!(a.certificate("agent-on-node1", CART), b.certificate("agent-on-node1", CART));
    let (from_a, from_b) = (from_a.expect("replica a"), from_b.expect("replica b"));
    let creates =
        api.requests().iter().filter(|r| r.starts_with("POST /api/v1/namespaces/nodemesh/secrets")).count();
    assert_eq!(creates, 2, "both raced to create the Secret");
    assert_eq!(from_a[1], from_b[1], "one root");
    assert_eq!(from_a[1], secret_root(&api), "the winner's, kept in the Secret");

    // A replica started later reads it.
    let c = Cp::start(&api).await;
    let from_c = c.certificate("agent-on-node1", CART).await.expect("replica c");
    assert_eq!(from_c[1], from_a[1]);
}

#[tokio::test]
async fn the_roots_secret_is_owned_by_the_control_planes_service_account_and_goes_with_it() {
    let api = cluster();
    api.add_token("agent-on-node1", known(AGENT, &[AUDIENCE], Some("node1")));
    let cp = Cp::start(&api).await;
    cp.certificate("agent-on-node1", CART).await.expect("a certificate");
    let secret = api.get("v1", "Secret", Some("nodemesh"), "nodemesh-ca").expect("the Secret was created");
    assert_eq!(
        secret["metadata"]["ownerReferences"],
        json!([{"apiVersion": "v1", "kind": "ServiceAccount", "name": "nodemesh-controlplane",
            "uid": CONTROLPLANE_SA_UID}]),
        "owned by the release's ServiceAccount: {secret}"
    );
    // `helm uninstall` deletes the ServiceAccount; the garbage collector then deletes what it
    // owns (the double collects as the controller manager does).
    assert!(api.delete("v1", "ServiceAccount", Some("nodemesh"), "nodemesh-controlplane"));
    assert!(
        api.get("v1", "Secret", Some("nodemesh"), "nodemesh-ca").is_none(),
        "the root is not left behind"
    );
}
