//! The Nodemesh node agent as a library: what the `nodemesh` binary (`cli/`) runs, and what
//! the fuzz targets (`fuzz/`) drive: the parsers of everything that comes from outside.

pub mod admin;
pub mod agent;
pub mod authz;
mod backoff;
pub mod claims;
pub mod config;
pub mod datapath;
pub mod directory;
pub mod enroll;
pub mod flows;
pub mod fuzzing;
pub mod identity;
mod idle_poll;
pub mod logging;
pub mod memory;
pub mod metrics;
pub mod pods;
pub mod proxy;
pub mod reconcile;
pub mod report;
pub mod services;
pub mod sidecar;
pub mod spec;
pub mod workload;
pub mod xds;
