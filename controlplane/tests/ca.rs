//! The certificate authority over real gRPC, as an agent or ztunnel reaches it: a node's
//! bootstrap token and the identity it asks for in `ImpersonatedIdentity`; a certificate only
//! for identities the node hosts.

mod common;

use std::time::Duration;

use common::{Cp, namespace, pod};
use nodemesh_controlplane::{CaSettings, ca::CaSource};
use nodemesh_proto::{
    istio::v1::auth::{
        IstioCertificateRequest, istio_certificate_service_client::IstioCertificateServiceClient,
    },
    prost_types::{Struct, Value, value::Kind},
    tonic::{self, Request},
};

const NODE1: &str = "5f0c6c1e2b8a4d7e9f3a1b2c3d4e5f60718293a4b5c6d7e8";

fn request(token: &str, identity: &str) -> Request<IstioCertificateRequest> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let csr = rcgen::CertificateParams::default().serialize_request(&key).expect("csr").pem().expect("pem");
    let value = Value { kind: Some(Kind::StringValue(identity.into())) };
    let metadata = Struct { fields: [("ImpersonatedIdentity".to_owned(), value)].into() };
    let mut request =
        Request::new(IstioCertificateRequest { csr, validity_duration: 60, metadata: Some(metadata) });
    request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().expect("header"));
    request
}

#[tokio::test]
async fn a_node_gets_certificates_for_the_identities_it_hosts_only() {
    let state = tempfile::tempdir().expect("tempdir");
    let tls_addr = free_port();
    let tokens = state.path().join("tokens");
    std::fs::create_dir_all(&tokens).expect("mkdir");
    std::fs::write(tokens.join("node1"), NODE1).expect("token");
    let files = [
        ("ns.yaml", namespace("shop", true)),
        (
            "pods.yaml",
            pod("shop", "cart-0", "node1", "10.0.1.5", "cart")
                + &pod("shop", "web-0", "node2", "10.0.2.5", "web"),
        ),
    ];
    let ca = CaSettings {
        source: CaSource::StateDir(state.path().to_owned()),
        node_auth: nodemesh_controlplane::ca::NodeAuth::Tokens(tokens),
        default_lifetime: Duration::from_secs(3600),
        tls_listen: Some(tls_addr),
        tls_names: vec!["localhost".into(), "127.0.0.1".into()],
    };
    let cp = Cp::start_with_ca(&files, Some(ca)).await;
    let mut client =
        IstioCertificateServiceClient::connect(format!("http://{}", cp.xds)).await.expect("connect");

    let cart = "spiffe://cluster.local/ns/shop/sa/sa-cart";
    let chain =
        client.create_certificate(request(NODE1, cart)).await.expect("issued").into_inner().cert_chain;
    assert_eq!(chain.len(), 2, "leaf and root");
    let root = std::fs::read_to_string(state.path().join("ca/root-cert.pem")).expect("root on disk");
    assert_eq!(chain[1], root, "the root kept in the state directory");
    let leaf = pem::parse(&chain[0]).expect("pem").into_contents();
    let (_, cert) = x509_parser::parse_x509_certificate(&leaf).expect("x509");
    let san = cert.subject_alternative_name().expect("ext").expect("san");
    assert_eq!(format!("{:?}", san.value.general_names), format!("[URI({cart:?})]"));

    // web-0 runs on node2: node1 may not have its identity.
    let web = "spiffe://cluster.local/ns/shop/sa/sa-web";
    let e = client.create_certificate(request(NODE1, web)).await.expect_err("not node1's");
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
    assert!(e.message().contains("node1") && e.message().contains(web), "{}", e.message());
    let e = client
        .create_certificate(request("not-a-token-of-anyone-at-all-0000000000", cart))
        .await
        .expect_err("no node");
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    let status = cp.status().await;
    assert_eq!(
        status["ca"],
        serde_json::json!({"issued": 1, "denied": 1, "unauthenticated": 1, "invalid": 0}),
        "{status:#}"
    );

    // The TLS port serves the same, with a certificate from the mesh's root for the names
    // clients use; a client that trusts another root refuses it.
    let tls = |root: &str| {
        tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(root))
            .domain_name("localhost")
    };
    let endpoint = format!("https://localhost:{}", tls_addr.port());
    let channel = tonic::transport::Channel::from_shared(endpoint.clone())
        .expect("uri")
        .tls_config(tls(&root))
        .expect("tls")
        .connect()
        .await
        .expect("TLS with the mesh root");
    let mut secure = IstioCertificateServiceClient::new(channel);
    let chain = secure
        .create_certificate(request(NODE1, cart))
        .await
        .expect("issued over TLS")
        .into_inner()
        .cert_chain;
    assert_eq!(chain[1], root);
    let other_root = tempfile::tempdir().expect("tempdir");
    let other = nodemesh_controlplane::ca::Authority::load(
        &CaSource::StateDir(other_root.path().to_owned()),
        "cluster.local",
    )
    .expect("another CA");
    let refused = tonic::transport::Channel::from_shared(endpoint)
        .expect("uri")
        .tls_config(tls(other.root_pem()))
        .expect("tls")
        .connect()
        .await;
    assert!(refused.is_err(), "a client trusting another root must not connect");
}

/// A port free on loopback right now.
fn free_port() -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr")
}
