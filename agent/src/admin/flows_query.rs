//! `/flows?namespace=&pod=&verdict=&state=&top=&by=&limit=`: which flows to show.

use serde::{Deserialize, Serialize};

use crate::report::flows::{FlowRecord, Verdict};

/// Query parameters of `/flows`, all optional.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FlowQuery {
    /// Either end in this namespace.
    pub namespace: Option<String>,
    /// Either end is this pod (`name` or `namespace/name`).
    pub pod: Option<String>,
    /// `allowed`, `denied`, `failed` or `pending`.
    pub verdict: Option<String>,
    /// `active`, `closed` or `all` (default).
    pub state: Option<String>,
    /// Keep the N highest by `by`.
    pub top: Option<usize>,
    /// `bytes` (default), `retransmits`, or `errors` (the share of an HTTP connection's
    /// requests answered 5xx).
    pub by: Option<String>,
    /// At most this many flows (default 1000).
    pub limit: Option<usize>,
}

pub const DEFAULT_LIMIT: usize = 1_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Rank {
    Bytes,
    Retransmits,
    Errors,
}

impl FlowQuery {
    /// Applies the query; a bad value is an error naming the parameter.
    pub fn apply(&self, flows: Vec<FlowRecord>) -> Result<Vec<FlowRecord>, String> {
        let verdict =
            match &self.verdict {
                None => None,
                Some(v) => Some(Verdict::parse(v).ok_or_else(|| {
                    format!("verdict: {v:?} is not one of allowed, denied, failed, pending")
                })?),
            };
        let active = match self.state.as_deref() {
            None | Some("all") => None,
            Some("active") => Some(true),
            Some("closed") => Some(false),
            Some(other) => return Err(format!("state: {other:?} is not one of active, closed, all")),
        };
        let rank = match self.by.as_deref() {
            None | Some("bytes") => Rank::Bytes,
            Some("retransmits" | "retrans") => Rank::Retransmits,
            Some("errors") => Rank::Errors,
            Some(other) => return Err(format!("by: {other:?} is not one of bytes, retransmits, errors")),
        };
        let mut out: Vec<FlowRecord> = flows
            .into_iter()
            .filter(|f| self.namespace.as_deref().is_none_or(|ns| f.involves_namespace(ns)))
            .filter(|f| self.pod.as_deref().is_none_or(|p| f.involves_pod(p)))
            .filter(|f| verdict.is_none_or(|v| f.verdict == v))
            .filter(|f| active.is_none_or(|a| f.active == a))
            .collect();
        if let Some(top) = self.top {
            match rank {
                Rank::Bytes => out.sort_by(|a, b| b.bytes().cmp(&a.bytes()).then(b.id.cmp(&a.id))),
                Rank::Retransmits => {
                    out.sort_by(|a, b| b.retransmits().cmp(&a.retransmits()).then(b.id.cmp(&a.id)))
                }
                Rank::Errors => {
                    // The worst share first; among equal shares, more failed requests first.
                    let key = |f: &FlowRecord| f.http.as_ref().map_or((0.0, 0), |h| (h.error_rate(), h.s5xx));
                    out.retain(|f| f.http.is_some());
                    out.sort_by(|a, b| {
                        let (ka, kb) = (key(a), key(b));
                        kb.0.total_cmp(&ka.0).then(kb.1.cmp(&ka.1)).then(b.id.cmp(&a.id))
                    });
                }
            }
            out.truncate(top);
        }
        out.truncate(self.limit.unwrap_or(DEFAULT_LIMIT));
        Ok(out)
    }
}
