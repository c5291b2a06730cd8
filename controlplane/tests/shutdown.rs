//! `serve` returns promptly on shutdown even while agents hold their streams open (tonic's
//! graceful shutdown alone would wait for every client to go away, so `nodemesh controlplane`
//! hung on SIGTERM).

use std::time::{Duration, Instant};

use nodemesh_controlplane::{MeshSettings, Settings};
use nodemesh_proto::{
    envoy::service::discovery::v3::{
        DeltaDiscoveryRequest, Node, aggregated_discovery_service_client::AggregatedDiscoveryServiceClient,
    },
    prost_types::{Struct, Value, value::Kind},
    type_urls::ADDRESS,
};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;

fn subscribe(node: &str) -> DeltaDiscoveryRequest {
    let value = Value { kind: Some(Kind::StringValue(node.into())) };
    DeltaDiscoveryRequest {
        node: Some(Node {
            id: format!("test~{node}"),
            metadata: Some(Struct { fields: [("NODE_NAME".to_owned(), value)].into() }),
            ..Default::default()
        }),
        type_url: ADDRESS.into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_returns_within_a_second_while_streams_are_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("ns.yaml"), "apiVersion: v1\nkind: Namespace\nmetadata: {name: mesh}\n")
        .expect("write");
    let xds = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind xds");
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind admin");
    let addr = xds.local_addr().expect("addr");
    let settings = Settings {
        source: nodemesh_controlplane::Source::Directory(dir.path().to_owned()),
        listen: addr,
        admin: admin.local_addr().expect("addr"),
        mesh: MeshSettings::default(),
        poll: Duration::from_secs(60),
        ca: None,
    };
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(nodemesh_controlplane::serve(settings, xds, admin, async {
        let _ = stopped.await;
    }));

    // Two agents with streams open, their request sides still open too.
    let mut held = Vec::new();
    for node in ["node1", "node2"] {
        let mut client =
            AggregatedDiscoveryServiceClient::connect(format!("http://{addr}")).await.expect("connect");
        let (tx, rx) = mpsc::channel(4);
        tx.send(subscribe(node)).await.expect("send");
        let mut inbound =
            client.delta_aggregated_resources(ReceiverStream::new(rx)).await.expect("stream").into_inner();
        tokio::time::timeout(Duration::from_secs(5), inbound.message())
            .await
            .expect("a first response")
            .expect("ok")
            .expect("open");
        held.push((client, tx, inbound));
    }

    let started = Instant::now();
    stop.send(()).expect("stop");
    let result = tokio::time::timeout(Duration::from_secs(3), server).await;
    let took = started.elapsed();
    assert!(result.is_ok(), "serve did not return within 3 s of shutdown with streams open");
    result.expect("in time").expect("task").expect("serve");
    assert!(took < Duration::from_millis(1500), "serve took {took:?} to return");

    // The agents see their streams end (and would reconnect elsewhere), not hang.
    for (_, _tx, mut inbound) in held {
        let end =
            tokio::time::timeout(Duration::from_secs(2), inbound.message()).await.expect("the stream ends");
        assert!(!matches!(end, Ok(Some(_))), "{end:?}");
    }
}
