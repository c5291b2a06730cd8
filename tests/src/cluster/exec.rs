//! Running a command inside a namespace (and a cgroup), and waiting for a condition.

use super::*;

/// Makes `cmd` run in the network namespace at `netns` (no cgroup change).
pub fn enter_netns(cmd: Command, netns: &Path) -> anyhow::Result<Command> {
    enter(cmd, netns, None)
}

/// Makes `cmd` join a network namespace (and a cgroup) between fork and exec. The files are
/// opened here, in the parent; the child only calls write(2) and setns(2), which are safe
/// after fork.
pub(super) fn enter(mut cmd: Command, netns: &Path, cgroup_procs: Option<&Path>) -> anyhow::Result<Command> {
    let ns = File::open(netns).with_context(|| format!("opening {}", netns.display()))?;
    let procs = match cgroup_procs {
        Some(p) => {
            Some(OpenOptions::new().write(true).open(p).with_context(|| format!("opening {}", p.display()))?)
        }
        None => None,
    };
    // SAFETY: the closure only makes async-signal-safe syscalls on descriptors it owns.
    unsafe {
        cmd.pre_exec(move || {
            if let Some(procs) = &procs {
                // "0" moves the writing process.
                if libc::write(procs.as_raw_fd(), b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(cmd)
}

/// Waits until `check` holds, or fails with `what` after `timeout`.
pub fn wait_for(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    bail!("timed out after {timeout:?} waiting for {what}")
}
