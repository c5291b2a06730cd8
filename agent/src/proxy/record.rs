//! The record stage: the connection's flow (what `/flows` and the Istio metrics show) and
//! its pod's counters, updated as each stage decides. The flow closes when the record drops,
//! however the connection ended.

use std::sync::atomic::Ordering::Relaxed;

use tokio::net::TcpStream;

use super::{
    context::{Accepted, Classified, Party},
    relay::{Counters, Relayed},
    route::{NetworkLeg, Route},
    stats::DirectionStats,
};
use crate::{
    datapath::SpliceKeys,
    flows::{
        FlowGuard, FlowTable, Opening,
        kernel::{KernelIds, veth_key},
    },
    pods::netns::socket_cookie,
    report::flows::Verdict,
};

pub struct Record<'t> {
    flow: FlowGuard<'t>,
    stats: &'t DirectionStats,
}

impl<'t> Record<'t> {
    pub fn open(
        flows: &'t FlowTable,
        accepted: &Accepted,
        classified: &Classified,
        stats: &'t DirectionStats,
    ) -> Self {
        let party = |p: &Party| (p.addr, p.workload.clone());
        let flow = flows.open(Opening {
            direction: accepted.direction,
            pod: &accepted.pod.name,
            source: party(&classified.source),
            destination: party(&classified.destination),
            service: classified.service.clone(),
        });
        Self { flow, stats }
    }

    /// Nowhere to send it, or the upstream could not be reached.
    pub fn fail(&self, reason: impl Into<String>) {
        self.stats.failed.fetch_add(1, Relaxed);
        self.flow.flow().fail(Verdict::Failed, reason);
    }

    /// A policy refused it; `reason` names the policy.
    pub fn deny(&self, reason: String) {
        tracing::debug!(%reason, "denied by authorization policy");
        self.stats.failed.fetch_add(1, Relaxed);
        self.flow.flow().fail(Verdict::Denied, reason);
    }

    /// Connected: from here on the flow is joined with the kernel's records of the socket
    /// that faces the network (its cookie, and its veth 5-tuple from the addresses the stages
    /// already know).
    pub fn allow(&self, accepted: &Accepted, route: &Route, client: &TcpStream, upstream: &TcpStream) {
        let ids = match route.network_leg {
            NetworkLeg::Accepted => KernelIds {
                cookie: socket_cookie(client).ok(),
                veth: Some(veth_key(accepted.local, accepted.peer)),
            },
            NetworkLeg::Upstream => KernelIds {
                cookie: socket_cookie(upstream).ok(),
                veth: upstream.local_addr().ok().map(|local| veth_key(local, route.endpoint)),
            },
            NetworkLeg::None => KernelIds { cookie: socket_cookie(upstream).ok(), veth: None },
        };
        self.flow.flow().allow(ids);
    }

    /// The counters the relay keeps current.
    pub fn counters(&self) -> Counters<'_> {
        let flow = self.flow.flow();
        Counters { sent: &flow.sent, received: &flow.received }
    }

    /// The kernel took the bytes over: the live flow reads its counts from the splice.
    pub fn spliced(&self, keys: SpliceKeys) {
        self.flow.flow().set_spliced(keys);
    }

    /// The relay ended: the pod's counters take the flow's bytes.
    pub fn finish(&self, relayed: Relayed) {
        let flow = self.flow.flow();
        flow.splice_ended();
        self.stats.bytes_sent.fetch_add(flow.sent.load(Relaxed), Relaxed);
        self.stats.bytes_received.fetch_add(flow.received.load(Relaxed), Relaxed);
        if relayed == Relayed::Spliced {
            self.stats.spliced.fetch_add(1, Relaxed);
        }
    }
}
