//! The harness of the control plane's integration tests: a control plane serving a temporary
//! directory on loopback, a real tonic client for its delta ADS, and its `/status`.

#![allow(dead_code, reason = "each test crate uses a part of the harness")]

use std::{collections::BTreeMap, net::SocketAddr, path::Path, time::Duration};

use nodemesh_controlplane::{MeshSettings, Settings};
use nodemesh_proto::{
    envoy::service::discovery::v3::{
        DeltaDiscoveryRequest, DeltaDiscoveryResponse, Node,
        aggregated_discovery_service_client::AggregatedDiscoveryServiceClient,
    },
    prost_types::{Struct, Value, value::Kind},
    tonic::Streaming,
    type_urls::ADDRESS,
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    sync::{mpsc, oneshot},
};
use tokio_stream::wrappers::ReceiverStream;

pub const WAIT: Duration = Duration::from_secs(5);
/// How long "nothing more arrives" is watched for.
pub const QUIET: Duration = Duration::from_millis(400);

pub struct Cp {
    pub dir: tempfile::TempDir,
    pub xds: SocketAddr,
    pub admin: SocketAddr,
    _stop: oneshot::Sender<()>,
}

impl Cp {
    pub async fn start(files: &[(&str, String)]) -> Self {
        Self::start_with_ca(files, None).await
    }

    /// The same, serving the certificate authority too.
    pub async fn start_with_ca(
        files: &[(&str, String)],
        ca: Option<nodemesh_controlplane::CaSettings>,
    ) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        for (name, text) in files {
            write(dir.path(), name, text);
        }
        let xds = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind xds");
        let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind admin");
        let (xds_addr, admin_addr) = (xds.local_addr().expect("addr"), admin.local_addr().expect("addr"));
        let settings = Settings {
            source: nodemesh_controlplane::Source::Directory(dir.path().to_owned()),
            listen: xds_addr,
            admin: admin_addr,
            mesh: MeshSettings::default(),
            poll: Duration::from_secs(60),
            ca,
        };
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            nodemesh_controlplane::serve(settings, xds, admin, async {
                let _ = stopped.await;
            })
            .await
            .expect("control plane");
        });
        Self { dir, xds: xds_addr, admin: admin_addr, _stop: stop }
    }

    pub fn write(&self, name: &str, text: &str) {
        write(self.dir.path(), name, text);
    }

    pub fn remove(&self, name: &str) {
        std::fs::remove_file(self.dir.path().join(name)).expect("remove");
    }

    /// `/status` of the admin API, over a bare HTTP/1.0 request.
    pub async fn status(&self) -> serde_json::Value {
        let mut conn = tokio::net::TcpStream::connect(self.admin).await.expect("admin");
        conn.write_all(b"GET /status HTTP/1.0\r\nHost: cp\r\n\r\n").await.expect("request");
        let mut text = String::new();
        conn.read_to_string(&mut text).await.expect("response");
        let body = text.split_once("\r\n\r\n").expect("http body").1;
        serde_json::from_str(body).expect("json")
    }

    pub async fn open(&self, first: DeltaDiscoveryRequest) -> Stream {
        let mut client = AggregatedDiscoveryServiceClient::connect(format!("http://{}", self.xds))
            .await
            .expect("connect")
            .max_decoding_message_size(64 << 20);
        let (tx, rx) = mpsc::channel(16);
        tx.send(first).await.expect("send");
        let inbound =
            client.delta_aggregated_resources(ReceiverStream::new(rx)).await.expect("stream").into_inner();
        Stream { tx, inbound }
    }
}

/// Atomic, as a controller writing its state would do it.
pub fn write(dir: &Path, name: &str, text: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, dir.join(name)).expect("rename");
}

pub struct Stream {
    pub tx: mpsc::Sender<DeltaDiscoveryRequest>,
    pub inbound: Streaming<DeltaDiscoveryResponse>,
}

impl Stream {
    pub async fn next(&mut self) -> DeltaDiscoveryResponse {
        tokio::time::timeout(WAIT, self.inbound.message())
            .await
            .expect("a response in time")
            .expect("stream ok")
            .expect("stream open")
    }

    pub async fn quiet(&mut self) {
        if let Ok(message) = tokio::time::timeout(QUIET, self.inbound.message()).await {
            panic!("expected nothing, got {:?}", message.map(|m| m.map(|r| names(&r))));
        }
    }

    pub async fn send(&self, request: DeltaDiscoveryRequest) {
        self.tx.send(request).await.expect("send");
    }

    pub async fn ack(&self, response: &DeltaDiscoveryResponse) {
        self.send(DeltaDiscoveryRequest {
            type_url: response.type_url.clone(),
            response_nonce: response.nonce.clone(),
            ..Default::default()
        })
        .await;
    }
}

pub fn node(name: &str) -> Node {
    let value = Value { kind: Some(Kind::StringValue(name.into())) };
    Node {
        id: format!("test~{name}"),
        metadata: Some(Struct { fields: [("NODE_NAME".to_owned(), value)].into() }),
        ..Default::default()
    }
}

pub fn subscribe(node_name: &str, names: &[&str]) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        node: Some(node(node_name)),
        type_url: ADDRESS.into(),
        resource_names_subscribe: names.iter().map(|n| (*n).to_owned()).collect(),
        ..Default::default()
    }
}

pub fn names(response: &DeltaDiscoveryResponse) -> Vec<String> {
    let mut names: Vec<String> = response.resources.iter().map(|r| r.name.clone()).collect();
    names.sort();
    names
}

pub fn versions(response: &DeltaDiscoveryResponse) -> BTreeMap<String, String> {
    response.resources.iter().map(|r| (r.name.clone(), r.version.clone())).collect()
}

pub fn namespace(name: &str, intercept: bool) -> String {
    let label = if intercept { "\n  labels: {nodemesh.io/intercept: enabled}" } else { "" };
    format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}{label}\n")
}

pub fn pod(ns: &str, name: &str, node: &str, ip: &str, app: &str) -> String {
    let uid = format!("{:08x}-0000-4000-8000-000000000000", fnv(&format!("{ns}/{name}")));
    format!(
        "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, uid: {uid}, labels: {{app: {app}}}}}\n\
         spec: {{nodeName: {node}, serviceAccountName: sa-{app}}}\n\
         status: {{phase: Running, podIP: {ip}, podIPs: [{{ip: {ip}}}]}}\n"
    )
}

pub fn fnv(s: &str) -> u32 {
    s.bytes().fold(0x811c_9dc5_u32, |h, b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193))
}

pub fn uid(ns: &str, name: &str) -> String {
    format!("Kubernetes//Pod/{ns}/{name}")
}
