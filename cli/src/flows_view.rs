//! `nodemesh flows` as text: one line per flow, a second line for why a flow was not
//! forwarded and one for a flow carried in mutual TLS (the peer's proven identity); 80
//! columns.

use std::fmt::Write as _;

use crate::table::Table;
use nodemesh_agent::report::flows::{Endpoint, FlowRecord, FlowsReport, Verdict};

const COLUMNS: [(&str, usize); 8] = [
    ("SOURCE", 19),
    ("DESTINATION", 21),
    ("VERDICT", 7),
    ("SENT", 6),
    ("RECV", 6),
    ("RTT", 6),
    ("RTX", 3),
    ("AGE", 4),
];

/// `now_ms`: the time ages are measured against (a parameter so output can be checked).
pub fn render(report: &FlowsReport, now_ms: u64, ranked_by: Option<&str>) -> String {
    let mut out = String::new();
    let active = report.flows.iter().filter(|f| f.active).count();
    let n = report.flows.len();
    let _ = write!(out, "node {}: {n} flow{} ({active} active)", report.node, if n == 1 { "" } else { "s" });
    if let Some(by) = ranked_by {
        let _ = write!(out, ", top by {by}");
    }
    out.push('\n');
    if report.flows.is_empty() {
        out.push_str("no flows match\n");
        return out;
    }
    let mut table = Table::new(&COLUMNS);
    let mut notes = Vec::new();
    for flow in &report.flows {
        table.row(row(flow, now_ms));
        if flow.mtls {
            let peer = flow.peer_identity.as_deref().unwrap_or("?");
            let mut note = format!("  ↳ mutual TLS, peer {peer}");
            if note.chars().count() > 80 {
                note = format!("{}…", note.chars().take(79).collect::<String>());
            }
            notes.push((table.len() - 1, note));
        }
        if let Some(reason) = &flow.reason {
            notes.push((table.len() - 1, format!("  ↳ {}: {reason}", flow.verdict.as_str())));
        }
        if let Some(h) = &flow.http {
            let row = table.len() - 1;
            let mut note = format!(
                "  ↳ {} request{}: {} 2xx, {} 3xx, {} 4xx, {} 5xx",
                h.requests,
                if h.requests == 1 { "" } else { "s" },
                h.s2xx,
                h.s3xx,
                h.s4xx,
                h.s5xx
            );
            if h.retries > 0 {
                let _ = write!(note, ", {} retried", h.retries);
            }
            notes.push((row, note));
        }
        if let Some(routing) = &flow.routing {
            let row = table.len() - 1;
            for retry in &routing.retries {
                notes.push((row, format!("  ↳ retried after {retry}")));
            }
            if let Some(fallback) = &routing.fallback {
                notes.push((row, format!("  ↳ to the fallback {fallback}")));
            }
            if let Some(ms) = routing.held_ms {
                notes.push((row, format!("  ↳ held {ms} ms for a scale-up")));
            }
        }
    }
    // Notes go right under their flow's row.
    let rendered = table.render();
    for (i, line) in rendered.lines().enumerate() {
        out.push_str(line);
        out.push('\n');
        for (_, note) in notes.iter().filter(|(row, _)| *row == i) {
            out.push_str(note);
            out.push('\n');
        }
    }
    out
}

fn row(flow: &FlowRecord, now_ms: u64) -> Vec<String> {
    let tcp = flow.kernel.tcp.as_ref();
    let age_ms = if flow.active {
        now_ms.saturating_sub(flow.start_unix_ms)
    } else {
        now_ms.saturating_sub(flow.start_unix_ms + flow.duration_ms)
    };
    let verdict = match (flow.verdict, flow.active) {
        (Verdict::Allowed, true) => "open".to_owned(),
        (v, _) => v.as_str().to_owned(),
    };
    vec![
        name(&flow.source, false),
        name(&flow.destination, true),
        verdict,
        bytes(flow.bytes_sent),
        bytes(flow.bytes_received),
        tcp.map_or("-".into(), |t| micros(t.srtt_us)),
        tcp.map_or("-".into(), |t| t.retransmits.to_string()),
        duration(age_ms),
    ]
}

/// `namespace/pod` when the mesh knows the address, else the address; the destination keeps
/// its port (which service of the pod), even when the name must be cut.
fn name(e: &Endpoint, with_port: bool) -> String {
    let known = match (&e.namespace, &e.pod) {
        (Some(ns), Some(w)) => Some(format!("{ns}/{w}")),
        _ => None,
    };
    match known {
        Some(name) if with_port => {
            let port = format!(":{}", e.address.port());
            let room = COLUMNS[1].1 - port.chars().count();
            if name.chars().count() <= room {
                format!("{name}{port}")
            } else {
                format!("{}…{port}", name.chars().take(room - 1).collect::<String>())
            }
        }
        Some(name) => name,
        None if with_port => e.address.to_string(),
        None => e.address.ip().to_string(),
    }
}

pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "K", "M", "G", "T"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n}B")
    } else if value < 10.0 {
        format!("{value:.1}{}", UNITS[unit])
    } else {
        format!("{value:.0}{}", UNITS[unit])
    }
}

fn micros(us: u32) -> String {
    if us < 1000 {
        format!("{us}µs")
    } else if us < 10_000 {
        format!("{:.1}ms", f64::from(us) / 1000.0)
    } else {
        format!("{}ms", us / 1000)
    }
}

fn duration(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m", s / 60),
        3600..=86_399 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::golden::check_golden;

    fn fixture() -> FlowsReport {
        let text = include_str!("../tests/golden/flows.json");
        serde_json::from_str(text).expect("flows fixture")
    }

    #[test]
    fn flows_table_matches_the_golden_file() {
        // 20 s after the newest flow started.
        check_golden("flows.txt", &render(&fixture(), 1_763_700_020_000, None));
    }

    #[test]
    fn ranked_flows_say_how_they_are_ranked() {
        let mut report = fixture();
        report.flows.truncate(1);
        check_golden("flows-top.txt", &render(&report, 1_763_700_020_000, Some("retransmits")));
    }

    #[test]
    fn an_empty_table_says_so() {
        let report = FlowsReport { node: "node1".into(), flows: vec![] };
        check_golden("flows-empty.txt", &render(&report, 0, None));
    }

    #[test]
    fn sizes_and_times_stay_short() {
        assert_eq!(bytes(999), "999B");
        assert_eq!(bytes(1_500), "1.5K");
        assert_eq!(bytes(64 << 20), "64M");
        assert_eq!(micros(87), "87µs");
        assert_eq!(micros(12_500), "12ms");
        assert_eq!(duration(125_000), "2m");
    }
}
