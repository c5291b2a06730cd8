//! The SERVICES section of `nodemesh status`: each service this node's pods connect to,
//! what the balancer did, and each endpoint's load, latency and ejection.

use std::fmt::Write as _;

use nodemesh_agent::report::status::ServiceReport;

use crate::table::Table;

pub fn render(services: &[ServiceReport]) -> String {
    let mut out = String::from("\nSERVICES\n");
    let mut table = Table::new(&[
        ("SERVICE", 36),
        ("ACTIVE", 7),
        ("CONNS", 8),
        ("RETRIES", 8),
        ("FALLBACK", 9),
        ("REFUSED", 8),
        ("HELD", 5),
    ]);
    for s in services {
        let refused = s.circuit_open + s.no_endpoint + s.held_timed_out + s.held_refused;
        let active = match s.max_connections {
            Some(max) => format!("{}/{max}", s.active),
            None => s.active.to_string(),
        };
        table.row(vec![
            s.service.clone(),
            active,
            s.connections.to_string(),
            s.retries.to_string(),
            s.fallbacks.to_string(),
            refused.to_string(),
            s.held.to_string(),
        ]);
    }
    out.push_str(&table.render());
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let mut endpoints = Table::new(&[
        ("SERVICE", 24),
        ("ENDPOINT", 24),
        ("NODE", 10),
        ("OUTSTANDING", 11),
        ("EWMA", 9),
        ("PICKS", 8),
        ("FAILED", 7),
        ("STATE", 16),
    ]);
    for s in services {
        let service = s.service.split('/').nth(1).and_then(|h| h.split('.').next()).unwrap_or(&s.service);
        for e in &s.endpoints {
            let state = match e.ejected_until_unix_ms {
                Some(until) => format!("ejected {:.1}s", until.saturating_sub(now_ms) as f64 / 1000.0),
                None if e.consecutive_failures > 0 => format!("{} failing", e.consecutive_failures),
                None => "ok".into(),
            };
            endpoints.row(vec![
                service.to_owned(),
                e.pod.clone(),
                e.node.clone().unwrap_or_else(|| "-".into()),
                e.outstanding.to_string(),
                latency(e.ewma_latency_us),
                e.picks.to_string(),
                e.connect_failures.to_string(),
                state,
            ]);
        }
    }
    let _ = write!(out, "\n{}", endpoints.render());
    out
}

/// Microseconds, in the unit that reads best.
fn latency(us: u64) -> String {
    if us >= 1000 { format!("{:.1}ms", us as f64 / 1000.0) } else { format!("{us}µs") }
}
