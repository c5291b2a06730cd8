//! Istio's request metrics, with Istio's labels, for the requests the HTTP stage forwarded
//! or answered: `istio_requests_total`, `istio_request_duration_milliseconds`,
//! `istio_request_bytes` and `istio_response_bytes` (histograms, Istio's buckets). The
//! labels are the TCP metrics' (`flows::metrics::SeriesLabels`) plus the request's protocol,
//! response code, gRPC status and Envoy's response flags.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
};

use super::HttpState;
use crate::{
    flows::metrics::SeriesLabels,
    metrics::{Exposition, Kind},
};

/// Istio's default duration buckets, in milliseconds.
pub const DURATION_BUCKETS_MS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0, 60000.0,
    300000.0, 600000.0, 1800000.0, 3600000.0,
];
/// Istio's size buckets, in bytes (1 to 10^9, by tens).
pub const SIZE_BUCKETS: [f64; 10] = [1.0, 10.0, 100.0, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9];
/// Label sets kept before new ones are only counted as overflow.
pub const MAX_SERIES: usize = 10_000;

/// One request's labels.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RequestLabels {
    pub series: SeriesLabels,
    /// `http` or `grpc`.
    pub protocol: &'static str,
    pub response_code: u16,
    /// The gRPC status as a number, empty for plain HTTP.
    pub grpc_status: String,
    /// Envoy's response flags (`-`: none; `UH`, `UF`, `UT`, `URX`, `NR`, `NC`, `RL`, `DC`).
    pub flags: &'static str,
}

impl RequestLabels {
    pub fn pairs(&self) -> Vec<(&'static str, String)> {
        let mut pairs: Vec<(&'static str, String)> = self
            .series
            .pairs()
            .into_iter()
            .filter(|(k, _)| *k != "request_protocol")
            .map(|(k, v)| (k, v.to_owned()))
            .collect();
        pairs.push(("request_protocol", self.protocol.to_owned()));
        pairs.push(("response_code", self.response_code.to_string()));
        pairs.push(("grpc_response_status", self.grpc_status.clone()));
        pairs.push(("response_flags", self.flags.to_owned()));
        pairs
    }
}

/// A histogram's counts per bucket (cumulative when rendered), sum and count.
#[derive(Clone, Debug, PartialEq)]
pub struct Histogram {
    pub buckets: Vec<u64>,
    pub sum: f64,
    pub count: u64,
}

impl Histogram {
    fn new(bounds: usize) -> Self {
        Self { buckets: vec![0; bounds], sum: 0.0, count: 0 }
    }

    fn observe(&mut self, bounds: &[f64], value: f64) {
        if let Some(i) = bounds.iter().position(|b| value <= *b) {
            self.buckets[i] += 1;
        }
        self.sum += value;
        self.count += 1;
    }

    /// `(upper bound, cumulative count)`, then `+Inf`.
    pub fn cumulative<'b>(&'b self, bounds: &'b [f64]) -> impl Iterator<Item = (f64, u64)> + 'b {
        let mut running = 0;
        bounds
            .iter()
            .zip(&self.buckets)
            .map(move |(b, n)| {
                running += n;
                (*b, running)
            })
            .chain(std::iter::once((f64::INFINITY, self.count)))
    }
}

/// One label set's totals.
#[derive(Clone, Debug, PartialEq)]
pub struct RequestTotals {
    pub requests: u64,
    pub duration_ms: Histogram,
    pub request_bytes: Histogram,
    pub response_bytes: Histogram,
}

impl Default for RequestTotals {
    fn default() -> Self {
        Self {
            requests: 0,
            duration_ms: Histogram::new(DURATION_BUCKETS_MS.len()),
            request_bytes: Histogram::new(SIZE_BUCKETS.len()),
            response_bytes: Histogram::new(SIZE_BUCKETS.len()),
        }
    }
}

/// One finished request.
pub struct Observation {
    pub labels: RequestLabels,
    pub duration_ms: f64,
    pub request_bytes: u64,
    pub response_bytes: u64,
}

#[derive(Debug, Default)]
pub struct RequestMetrics {
    series: Mutex<HashMap<Arc<RequestLabels>, RequestTotals>>,
    pub overflow: AtomicU64,
}

impl RequestMetrics {
    pub fn observe(&self, o: Observation) {
        let mut series = self.series.lock().unwrap_or_else(|p| p.into_inner());
        if !series.contains_key(&o.labels) && series.len() >= MAX_SERIES {
            self.overflow.fetch_add(1, Relaxed);
            return;
        }
        let totals = series.entry(Arc::new(o.labels)).or_default();
        totals.requests += 1;
        totals.duration_ms.observe(&DURATION_BUCKETS_MS, o.duration_ms);
        totals.request_bytes.observe(&SIZE_BUCKETS, o.request_bytes as f64);
        totals.response_bytes.observe(&SIZE_BUCKETS, o.response_bytes as f64);
    }

    /// Every series, for the exposition.
    pub fn snapshot(&self) -> Vec<(Arc<RequestLabels>, RequestTotals)> {
        let series = self.series.lock().unwrap_or_else(|p| p.into_inner());
        series.iter().map(|(l, t)| (Arc::clone(l), t.clone())).collect()
    }
}

/// Writes Istio's request metrics and the stage's own counters.
pub fn render(e: &mut Exposition, http: &HttpState) {
    let snapshot = http.metrics.snapshot();
    let labelled: Vec<(Vec<(&'static str, String)>, &RequestTotals)> =
        snapshot.iter().map(|(l, t)| (l.pairs(), t)).collect();
    fn borrowed<'p>(pairs: &'p [(&'static str, String)]) -> Vec<(&'static str, &'p str)> {
        pairs.iter().map(|(k, v)| (*k, v.as_str())).collect()
    }
    let mut requests =
        e.family("istio_requests_total", Kind::Counter, "Requests, by source, destination and response.");
    for (pairs, totals) in &labelled {
        requests.sample(&borrowed(pairs), totals.requests as f64);
    }
    type Of = fn(&RequestTotals) -> &Histogram;
    let histograms: [(&str, &str, &[f64], Of); 3] = [
        (
            "istio_request_duration_milliseconds",
            "Time from the request's arrival to its response's end, in milliseconds.",
            &DURATION_BUCKETS_MS,
            |t| &t.duration_ms,
        ),
        ("istio_request_bytes", "Request body sizes, in bytes.", &SIZE_BUCKETS, |t| &t.request_bytes),
        ("istio_response_bytes", "Response body sizes, in bytes.", &SIZE_BUCKETS, |t| &t.response_bytes),
    ];
    for (name, help, bounds, of) in histograms {
        let mut family = e.family(name, Kind::Histogram, help);
        for (pairs, totals) in &labelled {
            let h = of(totals);
            family.histogram(&borrowed(pairs), h.cumulative(bounds), h.sum, h.count);
        }
    }
    let c = &http.counters;
    e.family(
        "nodemesh_http_retries_total",
        Kind::Counter,
        "Requests sent again after a retryable answer (retried), and retries the retry budget refused (budget_exhausted).",
    )
    .sample(&[("result", "retried")], c.retried.load(Relaxed) as f64)
    .sample(&[("result", "budget_exhausted")], c.budget_exhausted.load(Relaxed) as f64);
    e.family(
        "nodemesh_request_series_overflow_total",
        Kind::Counter,
        "Requests left out of the istio_request* metrics because their label sets were at the cap.",
    )
    .sample(&[], http.metrics.overflow.load(Relaxed) as f64);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::flows::Direction;

    fn labels(code: u16) -> RequestLabels {
        RequestLabels {
            series: SeriesLabels::new(
                Direction::Outbound,
                None,
                None,
                Some("shop/cart.shop.svc.cluster.local"),
                false,
            ),
            protocol: "http",
            response_code: code,
            grpc_status: String::new(),
            flags: "-",
        }
    }

    #[test]
    fn requests_are_counted_per_label_set_into_istio_buckets() {
        let m = RequestMetrics::default();
        for (code, ms) in [(200, 0.3), (200, 7.0), (503, 12.0)] {
            m.observe(Observation {
                labels: labels(code),
                duration_ms: ms,
                request_bytes: 0,
                response_bytes: 150,
            });
        }
        let snap = m.snapshot();
        let ok = snap.iter().find(|(l, _)| l.response_code == 200).expect("200s").1.clone();
        assert_eq!(ok.requests, 2);
        let cumulative: Vec<(f64, u64)> = ok.duration_ms.cumulative(&DURATION_BUCKETS_MS).collect();
        assert_eq!(cumulative[0], (0.5, 1));
        assert_eq!(cumulative[2], (5.0, 1));
        assert_eq!(cumulative[3], (10.0, 2));
        assert_eq!(*cumulative.last().expect("inf"), (f64::INFINITY, 2));
        assert_eq!(ok.response_bytes.sum, 300.0);
        let pairs = labels(503).pairs();
        assert!(pairs.contains(&("response_code", "503".to_owned())));
        assert!(pairs.contains(&("request_protocol", "http".to_owned())));
        assert_eq!(pairs.iter().filter(|(k, _)| *k == "request_protocol").count(), 1);
    }
}
