//! The node's flow table: every connection the proxy handles, joined with what the kernel
//! programs saw of it (veth packets and bytes, TCP health), named by the mesh.
//!
//! Bounded under any churn: active flows are the proxy's open connections (each already
//! costs two sockets), closed flows sit in a ring of fixed capacity, and the metric series
//! are capped (excess folds into one `unknown` series, counted).

pub mod kernel;
pub mod metrics;

use std::{
    collections::{HashMap, VecDeque},
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
    },
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use crate::report::flows::{Direction, Endpoint, FlowRecord, HttpCounts, Routing, Verdict};
use kernel::{DropReasons, KernelIds};
use metrics::{SeriesLabels, SeriesTotals};

use crate::{
    datapath::{KernelRecords, SpliceKeys},
    workload::WorkloadRef,
};

/// Closed flows kept for `/flows` when the configuration does not say.
pub const DEFAULT_MAX_CLOSED: usize = 4_096;
/// Metric series (label sets) kept before new ones fold into one overflow series.
pub const MAX_SERIES: usize = 10_000;

/// One connection while the proxy handles it.
#[derive(Debug)]
pub struct LiveFlow {
    id: u64,
    direction: Direction,
    pod: Arc<str>,
    started: SystemTime,
    start: Instant,
    source: Endpoint,
    destination: Endpoint,
    service: Option<String>,
    mtls_peer: Option<Arc<str>>,
    /// The peer spoke mutual TLS with that identity (an outbound flow learns it when its
    /// stream opens or is answered; an inbound one starts after the handshake).
    mtls_confirmed: AtomicBool,
    labels: Arc<SeriesLabels>,
    /// Bytes from source to destination, and back, as the proxy moved them (while spliced:
    /// up to the hand-off; the kernel's records have the rest until the splice ends).
    pub sent: AtomicU64,
    pub received: AtomicU64,
    spliced: AtomicBool,
    /// The most each way any reader was shown: a splice's end briefly hides its bytes (its
    /// records go before the proxy adds them up), and counters must not go backwards.
    shown: [AtomicU64; 2],
    state: Mutex<FlowState>,
}

#[derive(Debug)]
struct FlowState {
    verdict: Verdict,
    reason: Option<String>,
    kernel: KernelIds,
    /// While the kernel splices the connection: where its byte counts are.
    splice: Option<SpliceKeys>,
    /// For a connection to a service: the endpoint picked last (it replaces the
    /// destination the flow opened with) and what the route stage did.
    retarget: Option<Endpoint>,
    routing: Option<Routing>,
    http: Option<HttpCounts>,
}

impl LiveFlow {
    pub fn allow(&self, kernel: KernelIds) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.verdict = Verdict::Allowed;
        state.kernel = kernel;
    }

    pub fn fail(&self, verdict: Verdict, reason: impl Into<String>) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.verdict = verdict;
        state.reason = Some(reason.into());
    }

    /// The peer answered in mutual TLS with the identity the flow was opened for.
    pub fn confirm_mtls(&self) {
        self.mtls_confirmed.store(true, Relaxed);
    }

    /// The kernel took the connection over.
    pub fn set_spliced(&self, keys: SpliceKeys) {
        self.spliced.store(true, Relaxed);
        self.state.lock().unwrap_or_else(|p| p.into_inner()).splice = Some(keys);
    }

    /// The splice ended: its bytes are in `sent` and `received` from now on.
    pub fn splice_ended(&self) {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).splice = None;
    }

    pub fn spliced(&self) -> bool {
        self.spliced.load(Relaxed)
    }

    /// Bytes each way so far. While spliced: what the proxy copied before the hand-off plus
    /// what the kernel has moved since.
    fn bytes(&self, splice: Option<SpliceKeys>, kernel: Option<&KernelRecords>) -> (u64, u64) {
        let in_splice = |key: u64| kernel.and_then(|k| k.spliced_bytes(key)).unwrap_or(0);
        let now = [
            self.sent.load(Relaxed) + splice.map_or(0, |k| in_splice(k.client_to_upstream)),
            self.received.load(Relaxed) + splice.map_or(0, |k| in_splice(k.upstream_to_client)),
        ];
        let shown = |i: usize| self.shown[i].fetch_max(now[i], Relaxed).max(now[i]);
        (shown(0), shown(1))
    }

    fn live_bytes(&self, kernel: Option<&KernelRecords>) -> (u64, u64) {
        let splice = self.state.lock().unwrap_or_else(|p| p.into_inner()).splice;
        self.bytes(splice, kernel)
    }

    fn record(&self, kernel: Option<&KernelRecords>, reasons: &DropReasons, active: bool) -> FlowRecord {
        let (verdict, reason, ids, splice, retarget, routing, http) = {
            let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            (
                state.verdict,
                state.reason.clone(),
                state.kernel,
                state.splice,
                state.retarget.clone(),
                state.routing.clone(),
                state.http.clone(),
            )
        };
        let (sent, received) = self.bytes(splice, kernel);
        FlowRecord {
            id: self.id,
            direction: self.direction,
            pod: self.pod.to_string(),
            source: self.source.clone(),
            destination: retarget.unwrap_or_else(|| self.destination.clone()),
            service: self.service.clone(),
            mtls: self.mtls_peer.is_some() && self.mtls_confirmed.load(Relaxed),
            peer_identity: self
                .mtls_peer
                .as_ref()
                .filter(|_| self.mtls_confirmed.load(Relaxed))
                .map(|p| p.to_string()),
            verdict,
            reason,
            bytes_sent: sent,
            bytes_received: received,
            spliced: self.spliced.load(Relaxed),
            start_unix_ms: self.started.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64),
            duration_ms: self.start.elapsed().as_millis() as u64,
            active,
            kernel: kernel::read(kernel, &ids, reasons),
            routing,
            http,
        }
    }

    /// The route stage's record of a connection to a service.
    pub fn routing(&self, change: impl FnOnce(&mut Routing)) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        change(state.routing.get_or_insert_with(Routing::default));
    }

    /// The HTTP stage's count of the connection's requests.
    pub fn http(&self, change: impl FnOnce(&mut HttpCounts)) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        change(state.http.get_or_insert_with(HttpCounts::default));
    }

    /// Another endpoint of the service is tried: the flow's destination from now on.
    pub fn retarget(&self, address: SocketAddr, workload: Option<&WorkloadRef>) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.retarget = Some(endpoint(&(address, workload)));
        state.routing.get_or_insert_with(Routing::default).endpoint = Some(address);
    }
}

/// A flow's end as reported, named when the directory knows it.
fn endpoint((address, workload): &(SocketAddr, Option<&WorkloadRef>)) -> Endpoint {
    let name = |field: fn(&WorkloadRef) -> &Arc<str>| workload.map(|w| field(w).to_string());
    Endpoint {
        address: *address,
        namespace: name(|w| &w.namespace),
        pod: name(|w| &w.pod),
        workload: name(|w| &w.workload),
        identity: name(|w| &w.identity),
    }
}

/// A new connection's two ends, as the proxy knows them when it accepts.
pub struct Opening<'a> {
    pub direction: Direction,
    pub pod: &'a Arc<str>,
    pub source: (SocketAddr, Option<Arc<WorkloadRef>>),
    pub destination: (SocketAddr, Option<Arc<WorkloadRef>>),
    pub service: Option<String>,
    /// Carried in mutual TLS (HBONE): the peer's identity, as its certificate proved it (the
    /// destination's for outbound, the source's for inbound).
    pub mtls_peer: Option<Arc<str>>,
}

#[derive(Debug, Default)]
struct Inner {
    active: HashMap<u64, Arc<LiveFlow>>,
    /// Closed flows with where the kernel keeps their records: the kernel finishes sending
    /// what the proxy wrote after the proxy closes, so the kernel view is read again on
    /// every query while its entries last.
    closed: VecDeque<(FlowRecord, KernelIds)>,
    series: HashMap<Arc<SeriesLabels>, SeriesTotals>,
    /// Flows that fell off the closed ring.
    evicted: u64,
    /// Flows counted in the overflow series because the series cap was reached.
    series_overflow: u64,
    failures: HashMap<(Verdict, String), u64>,
}

#[derive(Debug)]
pub struct FlowTable {
    inner: Mutex<Inner>,
    next_id: AtomicU64,
    max_closed: usize,
    reasons: DropReasons,
    /// The kernel's records of each flow (none in unit tests).
    kernel: Option<KernelRecords>,
}

/// What `/metrics` reports about the table itself.
#[derive(Clone, Debug, Default)]
pub struct TableStats {
    pub active: usize,
    pub closed: usize,
    pub max_closed: usize,
    pub evicted: u64,
    pub series: usize,
    pub series_overflow: u64,
}

impl FlowTable {
    pub fn new(max_closed: usize, reasons: DropReasons, kernel: Option<KernelRecords>) -> Self {
        Self { inner: Mutex::default(), next_id: AtomicU64::new(1), max_closed, reasons, kernel }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a connection; it is closed when the returned guard drops.
    pub fn open(&self, opening: Opening<'_>) -> FlowGuard<'_> {
        let end = |(address, workload): &(SocketAddr, Option<Arc<WorkloadRef>>)| {
            endpoint(&(*address, workload.as_deref()))
        };
        let (source, destination) = (end(&opening.source), end(&opening.destination));
        let labels = SeriesLabels::new(
            opening.direction,
            opening.source.1.as_deref(),
            opening.destination.1.as_deref(),
            opening.service.as_deref(),
            opening.mtls_peer.is_some(),
        );
        let flow = Arc::new(LiveFlow {
            id: self.next_id.fetch_add(1, Relaxed),
            direction: opening.direction,
            pod: Arc::clone(opening.pod),
            started: SystemTime::now(),
            start: Instant::now(),
            source,
            destination,
            service: opening.service,
            mtls_confirmed: AtomicBool::new(opening.direction == Direction::Inbound),
            mtls_peer: opening.mtls_peer,
            labels: Arc::new(labels),
            sent: AtomicU64::new(0),
            received: AtomicU64::new(0),
            spliced: AtomicBool::new(false),
            shown: [AtomicU64::new(0), AtomicU64::new(0)],
            state: Mutex::new(FlowState {
                verdict: Verdict::Pending,
                reason: None,
                kernel: KernelIds::default(),
                splice: None,
                retarget: None,
                routing: None,
                http: None,
            }),
        });
        {
            let mut inner = self.lock();
            let labels = Self::series_key(&mut inner, &flow.labels);
            inner.series.entry(labels).or_default().opened += 1;
            inner.active.insert(flow.id, Arc::clone(&flow));
        }
        FlowGuard { table: self, flow }
    }

    /// The series a flow counts in: its own, or the overflow series once the cap is reached.
    fn series_key(inner: &mut Inner, labels: &Arc<SeriesLabels>) -> Arc<SeriesLabels> {
        if inner.series.contains_key(labels) || inner.series.len() < MAX_SERIES {
            return Arc::clone(labels);
        }
        inner.series_overflow += 1;
        Arc::new(SeriesLabels::overflow())
    }

    fn close(&self, flow: &LiveFlow) {
        let mut record = flow.record(self.kernel.as_ref(), &self.reasons, false);
        let ids = flow.state.lock().unwrap_or_else(|p| p.into_inner()).kernel;
        if record.verdict == Verdict::Pending {
            // Ended before a verdict (the client went away during set-up).
            record.verdict = Verdict::Failed;
            record.reason.get_or_insert_with(|| "closed_during_setup".into());
        }
        let mut inner = self.lock();
        inner.active.remove(&flow.id);
        let labels = Self::series_key(&mut inner, &flow.labels);
        let totals = inner.series.entry(labels).or_default();
        totals.closed += 1;
        totals.sent += record.bytes_sent;
        totals.received += record.bytes_received;
        if record.verdict != Verdict::Allowed {
            let key = (record.verdict, record.reason.clone().unwrap_or_default());
            *inner.failures.entry(key).or_default() += 1;
        }
        if self.max_closed == 0 {
            inner.evicted += 1;
            return;
        }
        if inner.closed.len() >= self.max_closed {
            inner.closed.pop_front();
            inner.evicted += 1;
        }
        inner.closed.push_back((record, ids));
    }

    /// Every flow, active ones first (newest first within each group).
    pub fn records(&self) -> Vec<FlowRecord> {
        let (active, closed): (Vec<Arc<LiveFlow>>, Vec<(FlowRecord, KernelIds)>) = {
            let inner = self.lock();
            (inner.active.values().cloned().collect(), inner.closed.iter().rev().cloned().collect())
        };
        let kernel = self.kernel.as_ref();
        let mut out: Vec<FlowRecord> = active.iter().map(|f| f.record(kernel, &self.reasons, true)).collect();
        out.sort_by_key(|f| std::cmp::Reverse(f.id));
        out.extend(closed.into_iter().map(|(mut record, ids)| {
            // Entries the LRUs have let go of leave the view as it was at close.
            let now = kernel::read(kernel, &ids, &self.reasons);
            if now.veth.is_some() {
                record.kernel.veth = now.veth;
            }
            if now.tcp.is_some() {
                record.kernel.tcp = now.tcp;
            }
            record
        }));
        out
    }

    /// Totals per series, active flows' bytes included, read under one lock so counters
    /// never go backwards when a flow moves from active to closed.
    pub fn series(&self) -> Vec<(Arc<SeriesLabels>, SeriesTotals)> {
        let inner = self.lock();
        let mut series: HashMap<Arc<SeriesLabels>, SeriesTotals> = inner.series.clone();
        for flow in inner.active.values() {
            let key = if series.contains_key(&flow.labels) {
                Arc::clone(&flow.labels)
            } else {
                Arc::new(SeriesLabels::overflow())
            };
            let (sent, received) = flow.live_bytes(self.kernel.as_ref());
            let totals = series.entry(key).or_default();
            totals.sent += sent;
            totals.received += received;
        }
        let mut out: Vec<_> = series.into_iter().collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    pub fn failures(&self) -> Vec<((Verdict, String), u64)> {
        let mut out: Vec<_> = self.lock().failures.iter().map(|(k, v)| (k.clone(), *v)).collect();
        out.sort();
        out
    }

    pub fn stats(&self) -> TableStats {
        let inner = self.lock();
        TableStats {
            active: inner.active.len(),
            closed: inner.closed.len(),
            max_closed: self.max_closed,
            evicted: inner.evicted,
            series: inner.series.len(),
            series_overflow: inner.series_overflow,
        }
    }
}

/// Closes its flow when dropped, however the connection ended.
pub struct FlowGuard<'t> {
    table: &'t FlowTable,
    flow: Arc<LiveFlow>,
}

impl FlowGuard<'_> {
    pub fn flow(&self) -> &LiveFlow {
        &self.flow
    }

    /// The live flow, for tasks that outlive a borrow of the guard (the HTTP stage's
    /// requests); it still closes when the guard drops.
    pub fn shared(&self) -> Arc<LiveFlow> {
        Arc::clone(&self.flow)
    }
}

impl Drop for FlowGuard<'_> {
    fn drop(&mut self) {
        self.table.close(&self.flow);
    }
}
