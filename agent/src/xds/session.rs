//! One ADS stream: subscribe, then check, apply, publish and ACK (or NACK) each response
//! until the stream ends (persisting follows shortly, see `persist`).

use nodemesh_conventions::text;
use nodemesh_proto::{
    envoy::service::discovery::v3::{
        DeltaDiscoveryRequest, DeltaDiscoveryResponse, Node, Status,
        aggregated_discovery_service_client::AggregatedDiscoveryServiceClient,
    },
    prost_types::{Struct, Value, value::Kind},
    tonic::{
        self,
        metadata::{MetadataMap, MetadataValue},
        transport::{Certificate, ClientTlsConfig, Endpoint},
    },
    type_urls,
};
use std::{sync::Arc, time::Duration};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::{Nack, XdsHandle, state::State, unix_now};

/// gRPC's INVALID_ARGUMENT, the code of a NACK.
const INVALID_ARGUMENT: i32 = 3;

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("connecting to {address}: {source}")]
    Connect {
        address: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("control plane: {0}")]
    Rpc(#[from] tonic::Status),
    #[error("the request stream closed")]
    Closed,
}

pub struct Outcome {
    /// At least one response arrived (the control plane was reachable and talking).
    pub received: bool,
    pub error: Option<SessionError>,
}

pub async fn run(shared: &Arc<XdsHandle>) -> Outcome {
    let mut received = false;
    let error = stream(shared, &mut received).await.err();
    Outcome { received, error }
}

async fn stream(shared: &Arc<XdsHandle>, received: &mut bool) -> Result<(), SessionError> {
    let address = shared.settings.address.clone();
    let mut endpoint = Endpoint::from_shared(address.clone())
        .map_err(|source| SessionError::Connect { address: address.clone(), source })?;
    if let Some(roots) = &shared.settings.roots {
        let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&roots.pem));
        endpoint = endpoint
            .tls_config(tls)
            .map_err(|source| SessionError::Connect { address: address.clone(), source })?;
    }
    let channel = endpoint
        .connect_timeout(Duration::from_secs(3))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(10))
        .connect()
        .await
        .map_err(|source| SessionError::Connect { address: address.clone(), source })?;
    let mut client = AggregatedDiscoveryServiceClient::new(channel).max_decoding_message_size(64 << 20);

    let (tx, rx) = mpsc::channel(16);
    for (i, type_url) in
        [type_urls::ADDRESS, type_urls::AUTHORIZATION, type_urls::SERVICE_POLICY, type_urls::HTTP_ROUTES]
            .into_iter()
            .enumerate()
    {
        let initial_resource_versions = shared.state().versions(type_url);
        let request = DeltaDiscoveryRequest {
            node: (i == 0).then(|| node(&shared.settings.node_name)),
            type_url: type_url.into(),
            initial_resource_versions,
            ..Default::default()
        };
        tx.send(request).await.map_err(|_| SessionError::Closed)?;
    }
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    credentials(&shared.settings, request.metadata_mut())?;
    let mut inbound = client.delta_aggregated_resources(request).await?.into_inner();
    {
        let mut status = shared.status();
        status.connected = true;
        status.connected_since_unix_s = Some(unix_now());
        status.last_error = None;
    }
    tracing::info!(%address, "connected to the control plane");
    while let Some(response) = inbound.message().await? {
        *received = true;
        // Checking and translating a large response, and rebuilding the node's spec, is CPU
        // work: off the control runtime's one thread, which also serves the admin API and
        // readiness.
        let worker = Arc::clone(shared);
        let reply = tokio::task::spawn_blocking(move || handle(&worker, &response))
            .await
            .map_err(|_| SessionError::Closed)?;
        tx.send(reply).await.map_err(|_| SessionError::Closed)?;
    }
    Ok(())
}

fn handle(shared: &XdsHandle, response: &DeltaDiscoveryResponse) -> DeltaDiscoveryRequest {
    let mut reply = DeltaDiscoveryRequest {
        type_url: response.type_url.clone(),
        response_nonce: response.nonce.clone(),
        ..Default::default()
    };
    let checked = match State::check(response) {
        Ok(checked) => checked,
        Err(invalid) => {
            // It names resources the control plane chose: bounded before it is kept or sent.
            let reason = text::peer(&invalid.to_string()).into_owned();
            tracing::warn!(nonce = %response.nonce, %reason, "NACK: the response is rejected, the last good state stays");
            let mut status = shared.status();
            status.nacks += 1;
            status.last_nack = Some(Nack { unix_s: unix_now(), reason: reason.clone() });
            reply.error_detail =
                Some(Status { code: INVALID_ARGUMENT, message: reason, details: Vec::new() });
            return reply;
        }
    };
    shared.state().apply(checked);
    shared.accepted.send_modify(|generation| *generation += 1);
    {
        let mut status = shared.status();
        status.acks += 1;
        status.from_disk = false;
        status.accepted_unix_s = Some(unix_now());
        status.versions.insert(response.type_url.clone(), response.system_version_info.clone());
    }
    shared.publish();
    reply
}

/// The node's token and cluster, as ztunnel sends them to istiod.
fn credentials(settings: &super::XdsSettings, headers: &mut MetadataMap) -> Result<(), SessionError> {
    if let Some(path) = &settings.token_file {
        let token = crate::identity::ca_client::read_token(path)
            .map_err(|e| SessionError::Rpc(tonic::Status::unauthenticated(e.to_string())))?;
        if let Ok(bearer) = MetadataValue::try_from(format!("Bearer {token}")) {
            headers.insert("authorization", bearer);
        }
    }
    if let Ok(cluster) = MetadataValue::try_from(settings.cluster_id.as_str()) {
        headers.insert("clusterid", cluster);
    }
    Ok(())
}

/// Who we are: ztunnel's conventions (NODE_NAME in the metadata), so istiod can serve us.
fn node(name: &str) -> Node {
    let string = |s: &str| Value { kind: Some(Kind::StringValue(s.into())) };
    Node {
        id: format!("nodemesh~{name}"),
        metadata: Some(Struct { fields: [("NODE_NAME".to_owned(), string(name))].into() }),
        build_version: env!("CARGO_PKG_VERSION").into(),
        ..Default::default()
    }
}
