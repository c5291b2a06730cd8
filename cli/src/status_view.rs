//! `nodemesh status` as text.

use std::fmt::Write as _;

use crate::table::Table;
use nodemesh_agent::report::status::programs::{DROP_TRACER, PROXY_SOCK_OPS, SPLICE_VERDICT};

/// Programs attached once for the node, not per pod.
const NODE_WIDE: [&str; 3] = [SPLICE_VERDICT, PROXY_SOCK_OPS, DROP_TRACER];
use nodemesh_agent::report::status::{StatusReport, SyncStatus};

fn sync_lines(s: &SyncStatus) -> String {
    let mut out = String::new();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let state = match (s.connected, s.from_disk) {
        (true, _) => {
            format!("connected for {}s", now.saturating_sub(s.connected_since_unix_s.unwrap_or(now)))
        }
        (false, true) => "DISCONNECTED, serving the state saved on disk".to_owned(),
        (false, false) => "DISCONNECTED, serving the last accepted state".to_owned(),
    };
    let _ = writeln!(out, "Control plane {} {state}", s.control_plane);
    let age = s.accepted_unix_s.map_or("never".to_owned(), |t| format!("{}s ago", now.saturating_sub(t)));
    let versions: Vec<String> =
        s.versions.iter().map(|(t, v)| format!("{}={v}", t.rsplit('.').next().unwrap_or(t))).collect();
    let _ = writeln!(
        out,
        "  state accepted {age}; versions {}; {} addresses, {} policies; {} ACKs, {} NACKs",
        if versions.is_empty() { "-".to_owned() } else { versions.join(" ") },
        s.counts.addresses,
        s.counts.authorizations,
        s.acks,
        s.nacks
    );
    if let Some(nack) = &s.last_nack {
        let _ = writeln!(out, "  last NACK {}s ago: {}", now.saturating_sub(nack.unix_s), nack.reason);
    }
    if let Some(e) = &s.last_error {
        let _ = writeln!(out, "  last error: {e}");
    }
    if let Some(e) = &s.snapshot_error {
        let _ = writeln!(out, "  snapshot on disk NOT USED: {e}");
    }
    if !s.counts.pending_without_pod_uid.is_empty() {
        let _ = writeln!(
            out,
            "  {} mesh workloads here lack a pod UID and cannot be enrolled",
            s.counts.pending_without_pod_uid.len()
        );
    }
    out
}

pub fn render(r: &StatusReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Node {}  nodemesh {}  up {}s  splice {}",
        r.node,
        r.version,
        r.uptime_s,
        if r.splice { "on" } else { "off" }
    );
    let _ = writeln!(out, "Pins {}", r.bpffs_dir);
    match &r.enrollment {
        Some(e) => {
            let state = match &e.last_error {
                None => "accepted".to_owned(),
                Some(err) => format!("REJECTED, keeping the last good state: {err}"),
            };
            // The path on a line of its own: it alone can be long.
            let _ = writeln!(
                out,
                "Enrollment file, generation {}, {state}\n  {}",
                e.generation,
                e.path.display()
            );
        }
        None => {
            if r.sync.is_none() {
                let _ = writeln!(out, "Enrollment none configured");
            }
        }
    }
    if let Some(sync) = &r.sync {
        out.push_str(&sync_lines(sync));
    }
    let refused = r.proxy.refused;
    if refused.r#loop + refused.pod_limit + refused.node_limit > 0 {
        let _ = writeln!(
            out,
            "Refused connections: {} loops (reached the inbound listener from inside a pod), {} over a pod's limit, {} over the node's",
            refused.r#loop, refused.pod_limit, refused.node_limit
        );
    }

    if !r.held.is_empty() {
        let _ = writeln!(
            out,
            "HOLDING the hooks of {} pod(s) an earlier agent pinned: no valid state yet to tell whether they still belong in the mesh",
            r.held.len()
        );
    }
    let _ = writeln!(out, "\nPODS ({} enrolled, {} pending)", r.pods.len(), r.pending.len());
    let mut pods = Table::new(&[
        ("POD", 24),
        ("IPS", 19),
        ("OUT", 7),
        ("IN", 7),
        ("ACTIVE", 6),
        ("FAILED", 6),
        ("HOOKS", 5),
    ]);
    for p in &r.pods {
        let ips: Vec<String> = p.pod.ips.iter().map(ToString::to_string).collect();
        pods.row(vec![
            p.pod.name.clone(),
            ips.join(","),
            p.stats.outbound.accepted.to_string(),
            p.stats.inbound.accepted.to_string(),
            (p.stats.outbound.active + p.stats.inbound.active).to_string(),
            (p.stats.outbound.failed + p.stats.inbound.failed).to_string(),
            p.pod.links.len().to_string(),
        ]);
    }
    out.push_str(&pods.render());

    if !r.pending.is_empty() {
        let _ = writeln!(out, "\nPENDING");
        let mut pending = Table::new(&[("POD", 24), ("REASON", 55)]);
        for p in &r.pending {
            pending.row(vec![p.name.clone(), p.reason.clone()]);
        }
        out.push_str(&pending.render());
    }

    let _ = writeln!(out, "\nLISTENERS");
    let mut listeners = Table::new(&[("POD", 24), ("KIND", 9), ("ADDRESS", 44)]);
    for p in &r.pods {
        for l in &p.pod.listeners {
            listeners.row(vec![
                p.pod.name.clone(),
                if l.hbone { "hbone".into() } else { format!("{:?}", l.kind).to_lowercase() },
                l.addr.to_string(),
            ]);
        }
    }
    out.push_str(&listeners.render());

    if !r.certificates.is_empty() {
        out.push_str(&certificates(&r.certificates));
    }
    if !r.services.is_empty() {
        out.push_str(&crate::services_view::render(&r.services));
    }

    let _ = writeln!(out, "\nPROGRAMS");
    let mut programs = Table::new(&[("NAME", 20), ("TYPE", 20), ("ID", 8), ("ATTACHED", 28)]);
    for prog in &r.programs {
        let attached = r.pods.iter().filter(|p| p.pod.links.iter().any(|l| l.program_id == prog.id)).count();
        let attached = if NODE_WIDE.contains(&prog.name.as_str()) {
            "node-wide".to_owned()
        } else {
            format!("{attached} pod(s)")
        };
        programs.row(vec![prog.name.clone(), prog.kind.clone(), prog.id.to_string(), attached]);
    }
    out.push_str(&programs.render());

    let _ = writeln!(out, "\nCOUNTERS (non-zero)");
    let mut counters = Table::new(&[("PROGRAM", 12), ("REASON", 30), ("COUNT", 20)]);
    for c in r.counters.iter().filter(|c| c.count > 0) {
        counters.row(vec![c.program.clone(), c.reason.clone(), c.count.to_string()]);
    }
    out.push_str(&counters.render());
    out
}

/// Each identity's workload certificate: never a key; the serial cut to fit (the whole one is
/// in `--json`).
fn certificates(certs: &[nodemesh_agent::report::status::CertificateReport]) -> String {
    let mut out = String::from("\nCERTIFICATES\n");
    let mut table = Table::new(&[("IDENTITY", 34), ("STATE", 15), ("SERIAL", 10), ("NOT AFTER (UTC)", 16)]);
    for c in certs {
        let serial = c.serial.as_deref().map_or("-".to_owned(), |s| {
            if s.chars().count() > 10 {
                format!("{}…", s.chars().take(9).collect::<String>())
            } else {
                s.to_owned()
            }
        });
        let identity = c.identity.strip_prefix("spiffe://").unwrap_or(&c.identity);
        table.row(vec![
            identity.to_owned(),
            c.state.clone(),
            serial,
            c.not_after_unix_s.map_or("-".into(), utc),
        ]);
    }
    out.push_str(&table.render());
    for c in certs.iter().filter(|c| c.last_error.is_some()) {
        let identity = c.identity.strip_prefix("spiffe://").unwrap_or(&c.identity);
        let note = format!("  ↳ {identity}: {}", c.last_error.as_deref().unwrap_or(""));
        // One line; the whole error is in `--json`.
        let note = if note.chars().count() > 80 {
            format!("{}…", note.chars().take(79).collect::<String>())
        } else {
            note
        };
        let _ = writeln!(out, "{note}");
    }
    out
}

/// `YYYY-MM-DD HH:MM` in UTC, from Unix seconds (civil-from-days, no time zone database).
fn utc(unix_s: u64) -> String {
    let (days, secs) = ((unix_s / 86_400) as i64, unix_s % 86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}", secs / 3600, secs % 3600 / 60)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::golden::check_golden;

    #[test]
    fn status_matches_the_golden_file() {
        // A real agent's report (local mode, so no clock-dependent sync lines).
        let report: StatusReport =
            serde_json::from_str(include_str!("../tests/golden/status.json")).expect("status fixture");
        check_golden("status.txt", &render(&report));
    }

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00");
        assert_eq!(utc(1_796_169_600 + 3_660), "2026-12-02 01:01");
    }
}
