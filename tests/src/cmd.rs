//! Running setup commands (`ip`, `nsenter`), with failures that show what failed.

use std::process::Command;

use anyhow::{Context as _, bail};

pub fn run(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program} (is it installed? `cargo xtask setup` installs it)"))?;
    if !out.status.success() {
        bail!("`{program} {}` failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `ip -n <netns> <args...>`
pub fn ip(netns: &str, args: &[&str]) -> anyhow::Result<String> {
    let mut full = vec!["-n", netns];
    full.extend_from_slice(args);
    run("ip", &full)
}

/// Sets a sysctl inside a namespace (/proc/sys/net is per namespace).
pub fn sysctl(netns: &str, key: &str, value: &str) -> anyhow::Result<()> {
    let path = format!("/run/netns/{netns}");
    run("nsenter", &[&format!("--net={path}"), "sysctl", "-qw", &format!("{key}={value}")])?;
    Ok(())
}
