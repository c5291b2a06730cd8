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
        mtls_peer: Option<std::sync::Arc<str>>,
        stats: &'t DirectionStats,
    ) -> Self {
        let party = |p: &Party| (p.addr, p.workload.clone());
        let flow = flows.open(Opening {
            direction: accepted.direction,
            pod: &accepted.pod.name,
            source: party(&classified.source),
            destination: party(&classified.destination),
            service: classified.service.clone(),
            mtls_peer,
        });
        Self { flow, stats }
    }

    /// The live flow, for the stages that add to what it reports.
    pub fn flow(&self) -> &crate::flows::LiveFlow {
        self.flow.flow()
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

    /// Connected through an HBONE tunnel, whose TCP connection other flows share: no kernel
    /// records of its own to join.
    pub fn allow_tunnelled(&self) {
        self.flow.flow().allow(KernelIds { cookie: None, veth: None });
        self.flow.flow().confirm_mtls();
    }

    /// Served by the HTTP stage: each request goes its own way, so there is no one upstream
    /// socket to join with the kernel's records.
    pub fn allow_proxied(&self) {
        self.flow.flow().allow(KernelIds { cookie: None, veth: None });
    }

    /// The live flow, shared with the HTTP stage's request tasks.
    pub fn shared_flow(&self) -> std::sync::Arc<crate::flows::LiveFlow> {
        self.flow.shared()
    }

    /// The HBONE peer answered (a refusal included): the flow was carried in mutual TLS.
    pub fn mtls_answered(&self) {
        self.flow.flow().confirm_mtls();
    }

    /// The counters the relay keeps current.
    pub fn counters(&self) -> Counters<'_> {
        let flow = self.flow.flow();
        Counters { sent: &flow.sent, received: &flow.received, first_response: None }
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

#[cfg(test)]
mod tests {
    use std::sync::{Arc, atomic::Ordering::Relaxed};

    use super::*;
    use crate::{
        flows::FlowTable,
        proxy::{classify::classify, context::Accepted, relay::Relayed, testing::pod},
        report::flows::Direction,
    };

    fn opened(table: &FlowTable, stats: &DirectionStats, f: impl FnOnce(&Record<'_>)) {
        let web = pod("shop/web-1", &["10.0.0.1"]);
        let accepted = Accepted {
            direction: Direction::Outbound,
            pod: Arc::clone(&web),
            peer: "127.0.0.1:40000".parse().expect("addr"),
            local: "127.0.0.1:15001".parse().expect("addr"),
        };
        let directory = crate::directory::Directory::default();
        let classified =
            classify(&accepted, Some("10.0.0.9:80".parse().expect("addr")), &directory, |_| None);
        let record = Record::open(table, &accepted, &classified, None, stats);
        f(&record);
    }

    #[test]
    fn a_denial_is_a_closed_flow_with_its_reason_and_a_failed_count() {
        let (table, stats) = (FlowTable::new(16, Arc::default(), None), DirectionStats::default());
        opened(&table, &stats, |r| r.deny("denied_by:shop/no-web".into()));
        let flows = table.records();
        assert_eq!(flows.len(), 1);
        assert_eq!(
            (flows[0].verdict, flows[0].reason.as_deref()),
            (Verdict::Denied, Some("denied_by:shop/no-web"))
        );
        assert!(!flows[0].active);
        assert_eq!(stats.failed.load(Relaxed), 1);
    }

    #[test]
    fn a_relayed_flow_hands_its_bytes_to_the_pods_counters() {
        let (table, stats) = (FlowTable::new(16, Arc::default(), None), DirectionStats::default());
        opened(&table, &stats, |r| {
            let counters = r.counters();
            counters.sent.fetch_add(100, Relaxed);
            counters.received.fetch_add(7, Relaxed);
            // While it is open the flow is active and shows its bytes.
            let live = table.records();
            assert!(live[0].active);
            assert_eq!((live[0].bytes_sent, live[0].bytes_received), (100, 7));
            r.finish(Relayed::Spliced);
        });
        assert_eq!((stats.bytes_sent.load(Relaxed), stats.bytes_received.load(Relaxed)), (100, 7));
        assert_eq!((stats.spliced.load(Relaxed), stats.failed.load(Relaxed)), (1, 0));
        assert!(!table.records()[0].active);
    }
}
