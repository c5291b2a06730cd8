//! `cargo xtask test`: unit tests, then the root tests that build fake nodes and pods on the
//! real kernel. Every test that needs root fails (never skips) without it.

use std::process::Command;

use crate::{build, sh};

/// What the root tests write at most at once: payloads of up to 64 MiB, their downloads,
/// agents' logs, for two tests in parallel. Below this a test fails with a write error that
/// names nothing (curl's "Failure writing output to destination"); say it up front instead.
const MIN_FREE_BYTES: u64 = 2 << 30;

pub fn run(filter: Option<&str>) -> anyhow::Result<()> {
    build()?;
    enough_space(&std::env::temp_dir())?;
    // Namespaces, cgroups and pins an interrupted earlier run may have left. (The eBPF crate
    // is not a default member: it only builds for the BPF target, through agent/build.rs.)
    nodemesh_testbed::sweep_stale();
    let nextest =
        Command::new("cargo").args(["nextest", "--version"]).output().is_ok_and(|o| o.status.success());
    let mut args: Vec<&str> = if nextest {
        vec!["nextest", "run", "--no-fail-fast", "--test-threads", "2"]
    } else {
        vec!["test", "--no-fail-fast", "--", "--test-threads=2"]
    };
    if let Some(f) = filter {
        if nextest {
            args.push(f);
        } else {
            args.insert(1, f);
        }
    }
    sh("cargo", &args)?;
    if filter.is_none() {
        // The benchmark harness, one short round: proves it still runs and writes valid JSON.
        crate::bench::run(&crate::bench::BenchArgs {
            quick: true,
            rounds: 1,
            seconds: 0.3,
            rr_size: 1024,
            rr_conns: 64,
            crr_size: 64,
            crr_conns: 4,
            only: Vec::new(),
            show_status: false,
            agent_config: String::new(),
            bin_dir: None,
        })?;
    }
    Ok(())
}

/// Fails, naming the file system and what it has, when `dir`'s has less than
/// [`MIN_FREE_BYTES`] free.
fn enough_space(dir: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::ffi::OsStrExt as _;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())?;
    // SAFETY: `path` is a NUL-terminated string and `stat` a zeroed struct statvfs fills.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(path.as_ptr(), &mut stat) } != 0 {
        anyhow::bail!("statvfs {}: {}", dir.display(), std::io::Error::last_os_error());
    }
    let free = stat.f_bavail as u64 * stat.f_frsize as u64;
    anyhow::ensure!(
        free >= MIN_FREE_BYTES,
        "{} has {} MiB free; the root tests need {} MiB there (set TMPDIR to another file system, or free space)",
        dir.display(),
        free >> 20,
        MIN_FREE_BYTES >> 20
    );
    Ok(())
}
