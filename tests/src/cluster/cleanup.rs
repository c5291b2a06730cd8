//! Removing what a cluster made: cgroup trees (killing what still lives there), pins, and
//! what departed processes left behind.

use super::*;

/// Kills whatever still lives in a cgroup tree and removes it, deepest first.
pub(super) fn remove_cgroup(dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        kill_cgroup_tree(dir);
        let _ = remove_tree(dir);
        if !dir.exists() || Instant::now() > deadline {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub(super) fn kill_cgroup_tree(dir: &Path) {
    if let Ok(procs) = fs::read_to_string(dir.join("cgroup.procs")) {
        for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            // SAFETY: sending a signal has no memory-safety preconditions.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten().filter(|e| e.file_type().is_ok_and(|t| t.is_dir())) {
            kill_cgroup_tree(&e.path());
        }
    }
}

pub(super) fn remove_tree(dir: &Path) -> std::io::Result<()> {
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten().filter(|e| e.file_type().is_ok_and(|t| t.is_dir())) {
            remove_tree(&e.path())?;
        }
    }
    fs::remove_dir(dir)
}

pub(crate) fn cgroup2_mount() -> anyhow::Result<PathBuf> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo")?;
    mountinfo
        .lines()
        .find_map(|line| {
            let (fields, fs) = line.split_once(" - ")?;
            (fs.split_whitespace().next()? == "cgroup2").then(|| fields.split_whitespace().nth(4))?
        })
        .map(PathBuf::from)
        .context("no cgroup2 filesystem is mounted")
}

pub(crate) fn sweep_stale() {
    let alive = live_ids();
    let stale = |rest: &str| owner_id(rest).is_some_and(|id| !alive.contains(&id));
    if let Ok(list) = cmd::run("ip", &["netns", "list"]) {
        for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
            if name.strip_prefix(NETNS_PREFIX).is_some_and(stale) {
                let _ = cmd::run("ip", &["netns", "del", name]);
            }
        }
    }
    if let Ok(root) = cgroup2_mount()
        && let Ok(entries) = fs::read_dir(&root)
    {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().strip_prefix(CGROUP_PREFIX).is_some_and(stale) {
                remove_cgroup(&e.path());
            }
        }
    }
    if let Ok(entries) = fs::read_dir("/sys/fs/bpf") {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().strip_prefix(BPFFS_PREFIX).is_some_and(stale) {
                let _ = fs::remove_dir_all(e.path());
            }
        }
    }
}

/// The process id (as a cluster id carries it, modulo 100,000) in a name after its prefix:
/// the first of two numbers in a row (`<pid>-<n>-…` or `<tag>-<pid>-<n>`).
pub(super) fn owner_id(rest: &str) -> Option<u32> {
    let parts: Vec<&str> = rest.split('-').collect();
    let number = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    parts.windows(2).find(|w| number(w[0]) && number(w[1])).and_then(|w| w[0].parse().ok())
}

/// Cluster ids of running processes: what another test or benchmark on this machine is
/// still using, which a sweep must leave alone.
pub(super) fn live_ids() -> std::collections::HashSet<u32> {
    fs::read_dir("/proc")
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
                .map(|pid| pid % 100_000)
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::owner_id;

    #[test]
    fn owner_ids() {
        assert_eq!(owner_id("23425-0-node1-mesh-client"), Some(23425));
        assert_eq!(owner_id("bench-23425-0"), Some(23425));
        assert_eq!(owner_id("23425-1-node2"), Some(23425));
        assert_eq!(owner_id("unrelated"), None);
    }
}
