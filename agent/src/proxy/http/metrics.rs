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
    workload::WorkloadRef,
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

/// One label set's totals, under a lock of its own.
#[derive(Debug, Default)]
pub struct Series(Mutex<RequestTotals>);

impl Series {
    pub fn observe(&self, duration_ms: f64, request_bytes: u64, response_bytes: u64) {
        let mut totals = self.0.lock().unwrap_or_else(|p| p.into_inner());
        totals.requests += 1;
        totals.duration_ms.observe(&DURATION_BUCKETS_MS, duration_ms);
        totals.request_bytes.observe(&SIZE_BUCKETS, request_bytes as f64);
        totals.response_bytes.observe(&SIZE_BUCKETS, response_bytes as f64);
    }
}

#[derive(Debug, Default)]
pub struct RequestMetrics {
    series: Mutex<HashMap<Arc<RequestLabels>, Arc<Series>>>,
    pub overflow: AtomicU64,
}

impl RequestMetrics {
    /// The series of `labels`, new or not; `None` once the cap is reached.
    pub fn series(&self, labels: RequestLabels) -> Option<Arc<Series>> {
        let mut series = self.series.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(known) = series.get(&labels) {
            return Some(Arc::clone(known));
        }
        if series.len() >= MAX_SERIES {
            return None;
        }
        Some(Arc::clone(series.entry(Arc::new(labels)).or_default()))
    }

    pub fn observe(&self, o: Observation) {
        match self.series(o.labels) {
            Some(series) => series.observe(o.duration_ms, o.request_bytes, o.response_bytes),
            None => {
                self.overflow.fetch_add(1, Relaxed);
            }
        }
    }

    /// Every series, for the exposition.
    pub fn snapshot(&self) -> Vec<(Arc<RequestLabels>, RequestTotals)> {
        let series = self.series.lock().unwrap_or_else(|p| p.into_inner());
        series
            .iter()
            .map(|(l, t)| (Arc::clone(l), t.0.lock().unwrap_or_else(|p| p.into_inner()).clone()))
            .collect()
    }
}

/// What picks a request's series, compared by identity where it can be: the service's name
/// and the endpoint's workload are the directory's own `Arc`s.
pub struct SeriesKey {
    pub service: Option<Arc<str>>,
    pub workload: Option<Arc<WorkloadRef>>,
    pub mtls: bool,
    pub grpc: bool,
    pub status: u16,
    pub grpc_status: Option<u32>,
    pub flags: &'static str,
}

impl SeriesKey {
    fn same(&self, other: &Self) -> bool {
        fn same_arc<T: ?Sized>(a: &Option<Arc<T>>, b: &Option<Arc<T>>) -> bool {
            match (a, b) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                (None, None) => true,
                _ => false,
            }
        }
        same_arc(&self.service, &other.service)
            && same_arc(&self.workload, &other.workload)
            && (self.mtls, self.grpc, self.status, self.grpc_status, self.flags)
                == (other.mtls, other.grpc, other.status, other.grpc_status, other.flags)
    }
}

/// The series a connection's requests last went to: the next request like it is counted
/// without building its label set or looking it up (a client's requests mostly share one).
#[derive(Default)]
pub struct SeriesCache(Mutex<Option<(SeriesKey, Arc<Series>)>>);

impl SeriesCache {
    pub fn observe(
        &self,
        metrics: &RequestMetrics,
        key: SeriesKey,
        labels: impl FnOnce(&SeriesKey) -> RequestLabels,
        o: (f64, u64, u64),
    ) {
        let mut last = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let series = match &*last {
            Some((known, series)) if known.same(&key) => Arc::clone(series),
            _ => match metrics.series(labels(&key)) {
                Some(series) => {
                    *last = Some((key, Arc::clone(&series)));
                    series
                }
                None => {
                    metrics.overflow.fetch_add(1, Relaxed);
                    return;
                }
            },
        };
        drop(last);
        series.observe(o.0, o.1, o.2);
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

    #[test]
    fn a_connection_counts_into_its_cached_series_and_a_new_key_makes_a_new_one() {
        let m = RequestMetrics::default();
        let cache = SeriesCache::default();
        let service: Arc<str> = Arc::from("shop/cart.shop.svc.cluster.local");
        let key = |status| SeriesKey {
            service: Some(Arc::clone(&service)),
            workload: None,
            mtls: false,
            grpc: false,
            status,
            grpc_status: None,
            flags: "-",
        };
        let mut built = 0;
        for status in [200, 200, 200, 503, 200] {
            cache.observe(
                &m,
                key(status),
                |k| {
                    built += 1;
                    labels(k.status)
                },
                (1.0, 0, 10),
            );
        }
        // Labels are built on a change of key only: 200, 503, 200 again.
        assert_eq!(built, 3);
        let snap = m.snapshot();
        assert_eq!(snap.len(), 2);
        let count = |code| snap.iter().find(|(l, _)| l.response_code == code).map(|(_, t)| t.requests);
        assert_eq!((count(200), count(503)), (Some(4), Some(1)));
        // The same name in another allocation is another key (identity), but the same series.
        cache.observe(
            &m,
            SeriesKey { service: Some(Arc::from(&*service)), ..key(200) },
            |k| labels(k.status),
            (1.0, 0, 10),
        );
        assert_eq!(m.snapshot().len(), 2);
    }
}
