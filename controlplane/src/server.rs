//! Delta ADS (Envoy's incremental xDS over one aggregated stream), as istiod serves it to
//! node proxies.
//!
//! Per stream and type: the client's subscription (wildcard and/or names) and the version
//! of every resource it holds. Whenever the world changes or the subscription does, the
//! server sends what differs: resources whose version the client does not have, and names it
//! holds that are gone. A reconnecting client lists what it holds (`initial_resource_versions`)
//! and gets only what changed meanwhile. Each response carries a nonce; the client ACKs it, or
//! NACKs it with a reason, which is logged and shown on `/status`.

use std::{
    collections::{BTreeSet, HashMap},
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex},
    time::{SystemTime, UNIX_EPOCH},
};

use nodemesh_conventions::text;
use nodemesh_proto::{
    envoy::service::discovery::v3::{
        DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse, Node, Resource,
        aggregated_discovery_service_server::AggregatedDiscoveryService,
    },
    prost_types::value::Kind,
    tonic::{self, Request, Response, Status, Streaming},
};
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

use crate::world::{Entry, World, parse_version};

/// Resources per response: a full sync of a large mesh goes out in slices (each acknowledged
/// on its own) instead of one message tens of megabytes large. With 100 agents syncing 11,000
/// resources, 250 per slice kept the control plane at a third of the memory 1,000 needed, and
/// synced slightly faster (docs/bench.md).
pub const CHUNK: usize = 250;

/// What `/status` shows of one connected agent.
#[derive(Clone, Debug, Default, Serialize)]
pub struct AgentStatus {
    pub node: String,
    pub peer: String,
    pub connected_unix_s: u64,
    pub types: HashMap<String, TypeStatus>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct TypeStatus {
    pub wildcard: bool,
    pub subscribed_names: usize,
    pub resources_held: usize,
    pub last_sent_nonce: String,
    pub last_acked_nonce: String,
    pub last_nack: Option<String>,
}

/// Streams in progress, by a per-stream id.
pub type Registry = Arc<Mutex<HashMap<u64, AgentStatus>>>;

#[derive(Clone)]
pub struct Ads {
    world: watch::Receiver<Arc<World>>,
    registry: Registry,
    next_stream: Arc<std::sync::atomic::AtomicU64>,
    stopping: watch::Receiver<bool>,
}

impl Ads {
    /// Streams end (UNAVAILABLE, so agents reconnect elsewhere or later) once `stopping` turns
    /// true or its sender goes: a graceful shutdown that waited for agents to hang up would
    /// wait forever.
    pub fn new(
        world: watch::Receiver<Arc<World>>,
        registry: Registry,
        stopping: watch::Receiver<bool>,
    ) -> Self {
        Self { world, registry, next_stream: Arc::default(), stopping }
    }
}

type SotwStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<DiscoveryResponse, Status>> + Send>>;

#[tonic::async_trait]
impl AggregatedDiscoveryService for Ads {
    type StreamAggregatedResourcesStream = SotwStream;
    type DeltaAggregatedResourcesStream = ReceiverStream<Result<DeltaDiscoveryResponse, Status>>;

    async fn stream_aggregated_resources(
        &self,
        _request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        Err(Status::unimplemented("state-of-the-world ADS is not served; use DeltaAggregatedResources"))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let peer = request.remote_addr().map_or_else(|| "?".into(), |a: SocketAddr| a.to_string());
        // Two responses queued per stream (one being written, one ready) keep the socket busy.
        let (tx, rx) = mpsc::channel(2);
        let id = self.next_stream.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let stream = DeltaStream {
            id,
            peer,
            node: None,
            types: HashMap::new(),
            nonce: 0,
            world: self.world.clone(),
            registry: Arc::clone(&self.registry),
            tx,
            stopping: self.stopping.clone(),
        };
        tokio::spawn(stream.run(request.into_inner()));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

#[derive(Default)]
struct TypeState {
    wildcard: bool,
    names: BTreeSet<String>,
    /// What the client holds: name → version (as a number; see `world::parse_version`).
    held: HashMap<Arc<str>, u64>,
    /// Names it asked for that were reported as not existing.
    absent: BTreeSet<String>,
    /// The world generation this client's view was last fully computed against; when the
    /// next world's delta starts from it, only the delta's names need looking at.
    seen_generation: u64,
}

/// Which names a push looks at.
enum Scope {
    /// Everything the subscription covers (first response, subscription change, missed world).
    Full,
    /// Only what the world's delta names.
    Delta,
}
struct DeltaStream {
    id: u64,
    peer: String,
    node: Option<String>,
    types: HashMap<String, TypeState>,
    nonce: u64,
    world: watch::Receiver<Arc<World>>,
    registry: Registry,
    tx: mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>,
    stopping: watch::Receiver<bool>,
}

impl DeltaStream {
    async fn run(mut self, mut inbound: Streaming<DeltaDiscoveryRequest>) {
        let mut stopping = self.stopping.clone();
        // Also while a push waits for a slow client: shutdown does not wait for anyone.
        let result = tokio::select! {
            result = self.serve(&mut inbound) => result,
            _ = stopping.wait_for(|stop| *stop) => Err(Status::unavailable("control plane shutting down")),
        };
        if let Err(status) = &result {
            tracing::info!(node = ?self.node, peer = %self.peer, status = %status.message(), "stream ended");
            if *stopping.borrow() {
                // Queued if there is room; either way the stream ends when `tx` goes.
                let _ = self.tx.try_send(Err(status.clone()));
            } else {
                let _ = self.tx.send(Err(status.clone())).await;
            }
        }
        self.registry.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.id);
    }

    async fn serve(&mut self, inbound: &mut Streaming<DeltaDiscoveryRequest>) -> Result<(), Status> {
        loop {
            tokio::select! {
                request = inbound.message() => match request? {
                    Some(request) => self.on_request(request).await?,
                    None => return Ok(()),
                },
                changed = self.world.changed() => {
                    if changed.is_err() {
                        return Err(Status::unavailable("control plane shutting down"));
                    }
                    let types: Vec<String> = self.types.keys().cloned().collect();
                    for type_url in types {
                        self.push(&type_url, false, Scope::Delta).await?;
                    }
                }
            }
        }
    }

    async fn on_request(&mut self, request: DeltaDiscoveryRequest) -> Result<(), Status> {
        if self.node.is_none() {
            let node = node_name(request.node.as_ref()).ok_or_else(|| {
                Status::invalid_argument("the first request must identify the node (node.metadata.NODE_NAME)")
            })?;
            if node.len() > 253
                || !node
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
            {
                return Err(Status::invalid_argument(format!(
                    "node name {:?} is not a Kubernetes node name",
                    text::peer(&node)
                )));
            }
            tracing::info!(%node, peer = %self.peer, "agent connected");
            let status = AgentStatus {
                node: node.clone(),
                peer: self.peer.clone(),
                connected_unix_s: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
                ..Default::default()
            };
            self.registry.lock().unwrap_or_else(|p| p.into_inner()).insert(self.id, status);
            self.node = Some(node);
        }
        let type_url = request.type_url.clone();
        // The types served are those the world holds: Istio's Address and Authorization,
        // Nodemesh's ServicePolicy and HttpRoutes.
        if self.world.borrow().resources(&type_url).is_none() {
            return Err(Status::invalid_argument(format!(
                "type_url {:?} is not served",
                text::peer(&type_url)
            )));
        }
        let known = self.types.get(&type_url).map_or(0, |s| s.names.len() + s.held.len());
        let asked = request.resource_names_subscribe.len() + request.initial_resource_versions.len();
        if known + asked > MAX_NAMES {
            return Err(Status::invalid_argument(format!(
                "more than {MAX_NAMES} resource names for {type_url} on one stream"
            )));
        }
        let first = !self.types.contains_key(&type_url);
        let state = self.types.entry(type_url.clone()).or_default();
        if first {
            // A first request with no names, or "*", subscribes to everything relevant.
            state.wildcard = request.resource_names_subscribe.is_empty();
            state.held = request
                .initial_resource_versions
                .iter()
                .map(|(name, version)| (Arc::from(name.as_str()), parse_version(version).unwrap_or(!0)))
                .collect();
        }
        for name in &request.resource_names_subscribe {
            if name == "*" {
                state.wildcard = true;
            } else {
                state.names.insert(name.clone());
            }
        }
        for name in &request.resource_names_unsubscribe {
            if name == "*" {
                state.wildcard = false;
            } else {
                state.names.remove(name);
                state.held.remove(name.as_str());
                state.absent.remove(name);
            }
        }
        if !request.response_nonce.is_empty() {
            self.acknowledge(&type_url, &request);
        }
        let resubscribed =
            !request.resource_names_subscribe.is_empty() || !request.resource_names_unsubscribe.is_empty();
        if first || resubscribed {
            self.push(&type_url, first, Scope::Full).await?;
        }
        Ok(())
    }

    fn acknowledge(&self, type_url: &str, request: &DeltaDiscoveryRequest) {
        let mut registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        let Some(agent) = registry.get_mut(&self.id) else { return };
        let t = agent.types.entry(type_url.to_owned()).or_default();
        match &request.error_detail {
            Some(error) => {
                // The agent's words: bounded before the log and /status keep them.
                let (nonce, reason) = (text::peer(&request.response_nonce), text::peer(&error.message));
                tracing::warn!(node = %agent.node, %type_url, %nonce, %reason, "NACK");
                t.last_nack = Some(format!("nonce {nonce}: {reason}"));
            }
            None => t.last_acked_nonce = request.response_nonce.clone(),
        }
    }

    /// Sends what the client lacks for `type_url` (always something when `initial`).
    async fn push(&mut self, type_url: &str, initial: bool, scope: Scope) -> Result<(), Status> {
        let world = Arc::clone(&self.world.borrow_and_update());
        let node = self.node.clone().unwrap_or_default();
        let Some(resources) = world.resources(type_url) else { return Ok(()) };
        let Some(state) = self.types.get_mut(type_url) else { return Ok(()) };
        let wanted = |state: &TypeState, entry: &Entry| {
            state.names.contains(&*entry.name) || (state.wildcard && world.visible(entry, &node))
        };
        // The delta is usable when it starts where this client's view was last computed and
        // does not change what this node sees.
        let delta = match (scope, &world.delta) {
            (Scope::Delta, Some(d))
                if d.from_generation == state.seen_generation && !d.nodes.contains(&node) =>
            {
                Some(d.names(type_url))
            }
            _ => None,
        };
        state.seen_generation = world.generation;

        let mut changed: Vec<Arc<Entry>> = Vec::new();
        let mut removed: Vec<Arc<str>> = Vec::new();
        let mut consider = |state: &TypeState, name: &str| match resources.get(name) {
            Some(entry) if wanted(state, entry) => {
                if state.held.get(name) != Some(&entry.hash) {
                    changed.push(Arc::clone(entry));
                }
            }
            _ => {
                if let Some((held, _)) = state.held.get_key_value(name) {
                    removed.push(Arc::clone(held));
                }
            }
        };
        match delta {
            Some(names) => names.iter().for_each(|n| consider(state, n)),
            None => {
                if state.wildcard {
                    resources.keys().for_each(|n| consider(state, n));
                } else {
                    state.names.iter().for_each(|n| consider(state, n));
                }
                // Held names the pass above did not cover (no longer wanted, or gone).
                for name in state.held.keys() {
                    if resources.get(&**name).is_none_or(|e| !wanted(state, e)) {
                        removed.push(Arc::clone(name));
                    }
                }
                removed.sort_unstable();
                removed.dedup();
            }
        }
        // Names asked for that do not exist are reported as removed once, as the protocol asks.
        let missing: Vec<String> = state
            .names
            .iter()
            .filter(|n| {
                !resources.contains_key(n.as_str())
                    && !state.held.contains_key(n.as_str())
                    && !state.absent.contains(*n)
            })
            .cloned()
            .collect();
        state.absent.retain(|n| !resources.contains_key(n.as_str()));
        state.absent.extend(missing.iter().cloned());
        if changed.is_empty() && removed.is_empty() && missing.is_empty() && !initial {
            return Ok(());
        }
        for name in &removed {
            state.held.remove(name);
        }
        let mut removed_out: Vec<String> = removed.iter().map(|n| n.to_string()).chain(missing).collect();
        let chunks: Vec<&[Arc<Entry>]> =
            if changed.is_empty() { vec![&[]] } else { changed.chunks(CHUNK).collect() };
        // Each chunk is built just before it is queued: a full sync of a large mesh then
        // holds at most the channel's few chunks per stream, not the whole copy.
        for chunk in chunks {
            for entry in chunk {
                state.held.insert(Arc::clone(&entry.name), entry.hash);
            }
            self.nonce += 1;
            let response = DeltaDiscoveryResponse {
                system_version_info: world.generation.to_string(),
                type_url: type_url.to_owned(),
                nonce: self.nonce.to_string(),
                resources: chunk
                    .iter()
                    .map(|e| Resource {
                        name: e.name.to_string(),
                        version: e.version.clone(),
                        resource: Some(e.body.clone()),
                        ..Default::default()
                    })
                    .collect(),
                removed_resources: std::mem::take(&mut removed_out),
            };
            self.tx.send(Ok(response)).await.map_err(|_| Status::cancelled("client went away"))?;
        }
        let (held, wildcard, names) = (state.held.len(), state.wildcard, state.names.len());
        let last_nonce = self.nonce.to_string();
        if let Some(agent) = self.registry.lock().unwrap_or_else(|p| p.into_inner()).get_mut(&self.id) {
            let t = agent.types.entry(type_url.to_owned()).or_default();
            t.resources_held = held;
            t.wildcard = wildcard;
            t.subscribed_names = names;
            t.last_sent_nonce = last_nonce;
        }
        Ok(())
    }
}

/// Resource names one stream may name for one type (subscriptions plus the versions it says
/// it holds): ten times the benchmark's mesh (11,000 addresses), so no agent can make the
/// control plane hold unbounded state.
const MAX_NAMES: usize = 200_000;

/// The node an agent runs on: `metadata.NODE_NAME`, which Istio defines and ztunnel, our
/// agent and istiod's other clients send. Not the node id: ztunnel's is
/// `ztunnel~<pod IP>~<pod>.<ns>~<ns>.svc.cluster.local`, whose second field is an address,
/// and a client placed on a node named after it would get that node's view (none) and,
/// from the CA, its identities. A stream without it is refused with the reason.
fn node_name(node: Option<&Node>) -> Option<String> {
    let metadata = node?.metadata.as_ref()?;
    match &metadata.fields.get("NODE_NAME")?.kind {
        Some(Kind::StringValue(s)) if !s.is_empty() => Some(s.clone()),
        _ => None,
    }
}

#[cfg(test)]
mod node_tests {
    use nodemesh_proto::prost_types::{Struct, Value};

    use super::*;

    fn node(id: &str, node_name: Option<&str>) -> Node {
        let metadata = node_name.map(|n| Struct {
            fields: [("NODE_NAME".to_owned(), Value { kind: Some(Kind::StringValue(n.into())) })].into(),
        });
        Node { id: id.into(), metadata, ..Default::default() }
    }

    #[test]
    fn the_node_is_the_metadata_never_the_id() {
        let ztunnel = "ztunnel~10.244.1.7~ztunnel-x2x4z.istio-system~istio-system.svc.cluster.local";
        assert_eq!(node_name(Some(&node(ztunnel, Some("worker-1")))).as_deref(), Some("worker-1"));
        assert_eq!(node_name(Some(&node(ztunnel, None))), None, "an address is not a node");
        assert_eq!(node_name(Some(&node("nodemesh~node1", None))), None);
        assert_eq!(node_name(Some(&node("nodemesh~node1", Some("")))), None);
        assert_eq!(node_name(None), None);
    }
}
