//! Metric series of the flow table, labelled the way Istio labels its TCP metrics so that
//! existing dashboards and alerts read them unchanged.

use std::sync::{Arc, LazyLock};

use crate::report::flows::Direction;
use crate::workload::WorkloadRef;

const UNKNOWN: &str = "unknown";

/// One shared `unknown`, so labelling a connection with unknown ends allocates nothing for it.
static UNKNOWN_ARC: LazyLock<Arc<str>> = LazyLock::new(|| UNKNOWN.into());

/// One end's labels: Istio's `<side>_workload`, `_workload_namespace`, `_principal`,
/// `_canonical_service`, `_canonical_revision`, `_app` and `_version`. Shared strings from the
/// directory, so a series costs pointers, not copies.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Side {
    pub workload: Arc<str>,
    pub namespace: Arc<str>,
    pub principal: Arc<str>,
    pub canonical_service: Arc<str>,
    pub canonical_revision: Arc<str>,
}

impl Side {
    fn of(workload: Option<&WorkloadRef>, unknown: &Arc<str>) -> Self {
        match workload {
            Some(w) => Self {
                workload: Arc::clone(&w.workload),
                namespace: Arc::clone(&w.namespace),
                principal: Arc::clone(&w.identity),
                canonical_service: Arc::clone(&w.canonical_service),
                canonical_revision: Arc::clone(&w.canonical_revision),
            },
            None => Self {
                workload: Arc::clone(unknown),
                namespace: Arc::clone(unknown),
                principal: Arc::clone(unknown),
                canonical_service: Arc::clone(unknown),
                canonical_revision: Arc::clone(unknown),
            },
        }
    }
}

/// One series' labels (Istio's standard TCP metric labels).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeriesLabels {
    /// `source` for outbound flows, `destination` for inbound ones: which side's proxy
    /// reported it, as in Istio.
    pub reporter: &'static str,
    pub source: Side,
    pub destination: Side,
    /// The service's host name (`cart.shop.svc.cluster.local`), its short name and namespace.
    pub destination_service: Arc<str>,
    pub destination_service_name: Arc<str>,
    pub destination_service_namespace: Arc<str>,
    /// Istio's `connection_security_policy`: `mutual_tls` when the connection crossed nodes
    /// in HBONE, `none` for plaintext.
    pub security: &'static str,
}

impl SeriesLabels {
    pub fn new(
        direction: Direction,
        source: Option<&WorkloadRef>,
        destination: Option<&WorkloadRef>,
        service: Option<&str>,
        mtls: bool,
    ) -> Self {
        let unknown = &*UNKNOWN_ARC;
        // Ours are `namespace/hostname`; Istio reports the host, and its first label as the
        // service's name.
        let (namespace, host) = service.and_then(|s| s.split_once('/')).unwrap_or((UNKNOWN, UNKNOWN));
        let name = host.split('.').next().unwrap_or(host);
        Self {
            reporter: match direction {
                Direction::Outbound => "source",
                Direction::Inbound => "destination",
            },
            source: Side::of(source, unknown),
            destination: Side::of(destination, unknown),
            destination_service: host.into(),
            destination_service_name: name.into(),
            destination_service_namespace: namespace.into(),
            security: if mtls { "mutual_tls" } else { "none" },
        }
    }

    /// Where flows count once the series cap is reached.
    pub fn overflow() -> Self {
        let unknown = &*UNKNOWN_ARC;
        Self {
            reporter: UNKNOWN,
            source: Side::of(None, unknown),
            destination: Side::of(None, unknown),
            destination_service: Arc::clone(unknown),
            destination_service_name: Arc::clone(unknown),
            destination_service_namespace: Arc::clone(unknown),
            security: UNKNOWN,
        }
    }

    pub fn pairs(&self) -> [(&'static str, &str); 20] {
        let (s, d) = (&self.source, &self.destination);
        [
            ("reporter", self.reporter),
            ("source_workload", &s.workload),
            ("source_workload_namespace", &s.namespace),
            ("source_principal", &s.principal),
            ("source_app", &s.canonical_service),
            ("source_version", &s.canonical_revision),
            ("source_canonical_service", &s.canonical_service),
            ("source_canonical_revision", &s.canonical_revision),
            ("destination_workload", &d.workload),
            ("destination_workload_namespace", &d.namespace),
            ("destination_principal", &d.principal),
            ("destination_app", &d.canonical_service),
            ("destination_version", &d.canonical_revision),
            ("destination_canonical_service", &d.canonical_service),
            ("destination_canonical_revision", &d.canonical_revision),
            ("destination_service", &self.destination_service),
            ("destination_service_name", &self.destination_service_name),
            ("destination_service_namespace", &self.destination_service_namespace),
            ("request_protocol", "tcp"),
            ("connection_security_policy", self.security),
        ]
    }
}

/// Counters of one series.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SeriesTotals {
    pub opened: u64,
    pub closed: u64,
    /// Source → destination bytes (Istio's `received`: bytes received during the request).
    pub sent: u64,
    /// Destination → source bytes (Istio's `sent`: bytes sent during the response).
    pub received: u64,
}
