//! Without root, tests and the agent fail with a clear message; nothing passes by skipping.

use std::{os::unix::process::CommandExt as _, process::Command};

const CHILD: &str = "NODEMESH_NONROOT_CHILD";
const NOBODY: u32 = 65534;

fn as_nobody(mut cmd: Command) -> std::process::Output {
    // SAFETY: setgid/setuid are async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setgid(NOBODY) != 0
                || libc::setuid(NOBODY) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.output().expect("run as nobody")
}

#[test]
fn a_root_test_run_without_root_fails_loudly() {
    if std::env::var_os(CHILD).is_some() {
        // The child: what any root test does first.
        let _cluster = nodemesh_testbed::Cluster::new("nonroot");
        return;
    }
    nodemesh_testbed::require_root();
    let mut cmd = Command::new(std::env::current_exe().expect("exe"));
    cmd.args(["--exact", "a_root_test_run_without_root_fails_loudly", "--nocapture", "--test-threads=1"])
        .env(CHILD, "1");
    let out = as_nobody(cmd);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success(), "a root test passed without root:\n{text}");
    assert!(text.contains("needs root"), "no clear message:\n{text}");
}

#[test]
fn the_agent_refuses_to_start_without_privileges() {
    nodemesh_testbed::require_root();
    let mut cmd = Command::new(nodemesh_testbed::nodemesh_bin());
    cmd.args(["agent", "--bpffs-dir", "/sys/fs/bpf/nodemesh-test-nonroot"]);
    let out = as_nobody(cmd);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("needs root"), "no clear message: {stderr}");
}
