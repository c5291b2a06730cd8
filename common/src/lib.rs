//! Types shared by Nodemesh's kernel programs and its agent.
//!
//! Every type that crosses the kernel/user boundary is defined here once, `#[repr(C)]`, with
//! explicit padding and a size assertion, so the eBPF crate and the agent can never disagree
//! about a layout. With the `user` feature the types implement `aya::Pod`.
#![no_std]

pub mod addr;
pub mod counters;
pub mod maps;
pub mod ports;
pub mod types;

pub use counters::Counter;
pub use types::{
    DatapathConfig, FlowDirection, FlowKey, FlowStats, ListenerKey, OrigDstKey, SPLICE_BROKEN,
    SPLICE_SEQ_KNOWN, SkBuffOffsets, SockAddr, SpliceCtl, SpliceState, TcpHealth, TcpSockOffsets,
};
