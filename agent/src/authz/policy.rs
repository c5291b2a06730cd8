//! The mesh's L4 authorization policies as the agent enforces them: Istio's `Authorization`
//! resource, checked and converted (by `xds/translate.rs`) into these types.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StrMatch {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Present,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cidr {
    pub ip: IpAddr,
    pub len: u8,
}

/// One match: every non-empty field must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MatchSpec {
    pub namespaces: Vec<StrMatch>,
    pub not_namespaces: Vec<StrMatch>,
    pub principals: Vec<StrMatch>,
    pub not_principals: Vec<StrMatch>,
    pub source_ips: Vec<Cidr>,
    pub not_source_ips: Vec<Cidr>,
    pub destination_ips: Vec<Cidr>,
    pub not_destination_ips: Vec<Cidr>,
    pub destination_ports: Vec<u16>,
    pub not_destination_ports: Vec<u16>,
    pub service_accounts: Vec<(String, String)>,
    pub not_service_accounts: Vec<(String, String)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Scope {
    Global,
    Namespace,
    WorkloadSelector,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Action {
    Allow,
    Deny,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Authorization {
    pub name: String,
    pub namespace: String,
    pub scope: Scope,
    pub action: Action,
    /// Rules (any) of clauses (all) of matches (any).
    pub rules: Vec<Vec<Vec<MatchSpec>>>,
    pub dry_run: bool,
}
