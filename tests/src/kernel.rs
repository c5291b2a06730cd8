//! What the kernel says is attached, read with bpftool and ss (tools independent of the
//! agent), for tests that check what the agent leaves behind.

use std::{os::unix::fs::MetadataExt as _, path::Path, process::Command};

use anyhow::Context as _;
use serde_json::Value;

use crate::{cluster::enter_netns, cmd};

/// (attach type, program name) of every program attached directly to a cgroup.
pub fn cgroup_programs(dir: &Path) -> anyhow::Result<Vec<(String, String)>> {
    let out = cmd::run("bpftool", &["-j", "cgroup", "show", &dir.display().to_string()])?;
    let list: Value = if out.trim().is_empty() { Value::Array(vec![]) } else { serde_json::from_str(&out)? };
    Ok(list
        .as_array()
        .context("bpftool cgroup show")?
        .iter()
        .map(|p| {
            (
                p["attach_type"].as_str().unwrap_or_default().to_owned(),
                p["name"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect())
}

/// sk_lookup links attached to the network namespace at `netns`.
pub fn sk_lookup_links(netns: &Path) -> anyhow::Result<usize> {
    let ino = std::fs::metadata(netns)?.ino();
    let out = cmd::run("bpftool", &["-j", "link", "show"])?;
    let links: Value = serde_json::from_str(&out)?;
    Ok(links
        .as_array()
        .context("bpftool link show")?
        .iter()
        .filter(|l| l["netns_ino"].as_u64() == Some(ino) && l["attach_type"] == "sk_lookup")
        .count())
}

/// Whether a program with this id is still loaded.
pub fn program_loaded(id: u64) -> bool {
    cmd::run("bpftool", &["prog", "show", "id", &id.to_string()]).is_ok()
}

/// TCP listeners in a namespace on any of `ports`.
pub fn listeners(netns: &Path, ports: &[u16]) -> anyhow::Result<Vec<String>> {
    let filter = ports.iter().map(|p| format!("sport = :{p}")).collect::<Vec<_>>().join(" or ");
    let mut cmd = enter_netns(Command::new("ss"), netns)?;
    let out = cmd.args(["-Hltn", &filter]).output()?;
    Ok(String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect())
}

/// `bytes_acked` of every connected TCP socket in a namespace with local port `port` (from
/// `ss -ti`): how much a sender has got through to the other side.
pub fn bytes_acked(netns: &Path, port: u16) -> anyhow::Result<Vec<u64>> {
    let mut cmd = enter_netns(Command::new("ss"), netns)?;
    let out = cmd.args(["-Htin", "state", "connected", &format!("sport = :{port}")]).output()?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("bytes_acked:"))
        .filter_map(|n| n.parse().ok())
        .collect())
}
