//! Metric series of the flow table, labelled the way Istio labels its TCP metrics so that
//! existing dashboards and alerts read them unchanged.

use super::record::{Direction, Endpoint};

const UNKNOWN: &str = "unknown";

/// One series' labels (Istio's standard TCP metric labels).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Labels {
    /// `source` for outbound flows, `destination` for inbound ones: which side's proxy
    /// reported it, as in Istio.
    pub reporter: &'static str,
    pub source_workload: String,
    pub source_workload_namespace: String,
    pub source_principal: String,
    pub destination_workload: String,
    pub destination_workload_namespace: String,
    pub destination_principal: String,
    pub destination_service: String,
}

impl Labels {
    pub fn new(
        direction: Direction,
        source: &Endpoint,
        destination: &Endpoint,
        service: Option<&str>,
    ) -> Self {
        let or_unknown = |v: &Option<String>| v.clone().unwrap_or_else(|| UNKNOWN.into());
        Self {
            reporter: match direction {
                Direction::Outbound => "source",
                Direction::Inbound => "destination",
            },
            source_workload: or_unknown(&source.workload),
            source_workload_namespace: or_unknown(&source.namespace),
            source_principal: or_unknown(&source.identity),
            destination_workload: or_unknown(&destination.workload),
            destination_workload_namespace: or_unknown(&destination.namespace),
            destination_principal: or_unknown(&destination.identity),
            // Istio reports the service's host name; ours carry `namespace/` in front.
            destination_service: service
                .map(|s| s.split_once('/').map_or(s, |(_, host)| host).to_owned())
                .unwrap_or_else(|| UNKNOWN.into()),
        }
    }

    /// Where flows count once the series cap is reached.
    pub fn overflow() -> Self {
        Self {
            reporter: UNKNOWN,
            source_workload: UNKNOWN.into(),
            source_workload_namespace: UNKNOWN.into(),
            source_principal: UNKNOWN.into(),
            destination_workload: UNKNOWN.into(),
            destination_workload_namespace: UNKNOWN.into(),
            destination_principal: UNKNOWN.into(),
            destination_service: UNKNOWN.into(),
        }
    }

    pub fn pairs(&self) -> [(&'static str, &str); 10] {
        [
            ("reporter", self.reporter),
            ("source_workload", &self.source_workload),
            ("source_workload_namespace", &self.source_workload_namespace),
            ("source_principal", &self.source_principal),
            ("destination_workload", &self.destination_workload),
            ("destination_workload_namespace", &self.destination_workload_namespace),
            ("destination_principal", &self.destination_principal),
            ("destination_service", &self.destination_service),
            ("request_protocol", "tcp"),
            // Plain TCP between the proxies until mutual TLS lands.
            ("connection_security_policy", "none"),
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
