//! Finding a pod's cgroup v2 directory from its UID, as kubelet lays it out.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

/// The cgroup v2 mount point, read from /proc/self/mountinfo (it differs between unified and
/// hybrid hosts, so it is never hard-coded).
pub fn cgroup2_mount() -> io::Result<PathBuf> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo")?;
    parse_cgroup2_mount(&mountinfo)
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no cgroup2 filesystem is mounted"))
}

/// The agent's own cgroup v2 directory (`0::<path>` in /proc/self/cgroup, under the mount).
pub fn own_cgroup() -> io::Result<PathBuf> {
    let mount = cgroup2_mount()?;
    let membership = fs::read_to_string("/proc/self/cgroup")?;
    let path = membership
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no cgroup v2 line in /proc/self/cgroup"))?;
    Ok(mount.join(path.trim_start_matches('/')))
}

/// The cgroup2 mount of this process's cgroup namespace root (mount root `/`). In a
/// container with its own cgroup namespace, the host's hierarchy may be mounted too (the
/// chart mounts it for the pods' cgroups); it shows a root outside the namespace (`/..`),
/// and `/proc/self/cgroup`'s path is relative to the namespace's root, so only a mount of
/// that root can resolve it. Falls back to the first cgroup2 mount.
fn parse_cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    let mounts: Vec<(&str, PathBuf)> = mountinfo
        .lines()
        .filter_map(|line| {
            // "<id> <parent> <maj:min> <root> <mount point> <options> [optional...] - <fstype> ..."
            let (fields, fs) = line.split_once(" - ")?;
            if fs.split_whitespace().next()? != "cgroup2" {
                return None;
            }
            let mut fields = fields.split_whitespace();
            let root = fields.nth(3)?;
            Some((root, PathBuf::from(unescape_octal(fields.next()?))))
        })
        .collect();
    let root = mounts.iter().find(|(root, _)| *root == "/").or(mounts.first());
    root.map(|(_, point)| point.clone())
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_octal(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match (bytes[i], octal) {
            (b'\\', Some(d)) => {
                out.push(d.iter().fold(0u8, |acc, b| acc.wrapping_mul(8).wrapping_add(b - b'0')));
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The places kubelet puts a pod's cgroup, relative to the cgroup root: the cgroupfs driver
/// (`kubepods[/<qos>]/pod<uid>`) and the systemd driver
/// (`kubepods.slice[/kubepods-<qos>.slice]/kubepods[-<qos>]-pod<uid_with_underscores>.slice`).
pub fn candidates(uid: &str) -> Vec<PathBuf> {
    let systemd_uid = uid.replace('-', "_");
    let mut out = vec![PathBuf::from(format!("kubepods/pod{uid}"))];
    for qos in ["burstable", "besteffort"] {
        out.push(PathBuf::from(format!("kubepods/{qos}/pod{uid}")));
    }
    out.push(PathBuf::from(format!("kubepods.slice/kubepods-pod{systemd_uid}.slice")));
    for qos in ["burstable", "besteffort"] {
        out.push(PathBuf::from(format!(
            "kubepods.slice/kubepods-{qos}.slice/kubepods-{qos}-pod{systemd_uid}.slice"
        )));
    }
    out
}

/// The pod's cgroup directory under `root`, if kubelet has created it.
pub fn find_pod_cgroup(root: &Path, uid: &str) -> Option<PathBuf> {
    candidates(uid).into_iter().map(|c| root.join(c)).find(|p| p.is_dir())
}

/// Process ids in the cgroup and its descendants (the pod's containers), in a stable order.
pub fn processes(dir: &Path) -> io::Result<Vec<u32>> {
    let mut pids = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        match fs::read_to_string(d.join("cgroup.procs")) {
            Ok(procs) => pids.extend(procs.lines().filter_map(|l| l.trim().parse::<u32>().ok())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        }
        let mut children: Vec<PathBuf> = fs::read_dir(&d)?
            .filter_map(Result::ok)
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.path())
            .collect();
        children.sort();
        stack.extend(children.into_iter().rev());
    }
    Ok(pids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cgroup2_in_a_hybrid_mountinfo() {
        let mountinfo = "\
25 30 0:22 / /sys/fs/cgroup rw,nosuid - tmpfs tmpfs ro,mode=755
26 25 0:23 / /sys/fs/cgroup/unified rw,nosuid shared:9 - cgroup2 cgroup2 rw,nsdelegate
27 25 0:24 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu
";
        assert_eq!(parse_cgroup2_mount(mountinfo), Some(PathBuf::from("/sys/fs/cgroup/unified")));
        assert_eq!(parse_cgroup2_mount("1 0 0:1 / / rw - ext4 /dev/vda rw\n"), None);
    }

    #[test]
    fn in_a_container_the_namespace_root_wins_over_the_hosts_hierarchy() {
        // The chart's agent: the host's hierarchy bind-mounted first, then the runtime's
        // mount of the container's own cgroup namespace.
        let mountinfo = "\
812 790 0:30 /.. /host/cgroup ro,nosuid - cgroup2 cgroup2 rw,nsdelegate
820 790 0:30 / /sys/fs/cgroup ro,nosuid - cgroup2 cgroup rw,nsdelegate
";
        assert_eq!(parse_cgroup2_mount(mountinfo), Some(PathBuf::from("/sys/fs/cgroup")));
    }

    #[test]
    fn unescapes_spaces_in_mount_points() {
        assert_eq!(unescape_octal(r"/mnt/with\040space"), "/mnt/with space");
    }

    #[test]
    fn finds_both_kubelet_layouts() {
        let root = tempfile::tempdir().expect("tempdir");
        let uid = "6b1f0d2e-1111-2222-3333-444455556666";
        assert_eq!(find_pod_cgroup(root.path(), uid), None);

        let cgroupfs = root.path().join(format!("kubepods/burstable/pod{uid}"));
        fs::create_dir_all(&cgroupfs).expect("mkdir");
        assert_eq!(find_pod_cgroup(root.path(), uid), Some(cgroupfs.clone()));
        fs::remove_dir(&cgroupfs).expect("rmdir");

        let systemd = root.path().join(
            "kubepods.slice/kubepods-besteffort.slice/\
             kubepods-besteffort-pod6b1f0d2e_1111_2222_3333_444455556666.slice",
        );
        fs::create_dir_all(&systemd).expect("mkdir");
        assert_eq!(find_pod_cgroup(root.path(), uid), Some(systemd));
    }

    #[test]
    fn lists_processes_of_the_pod_and_its_containers_under_each_runtime() {
        // Below the kubelet's pod cgroup each runtime names its containers its own way:
        // containerd with the cgroupfs driver (the bare container id), containerd with the
        // systemd driver (`cri-containerd-<id>.scope`), CRI-O (`crio-<id>.scope`, and its
        // monitor in `crio-conmon-<id>.scope`). Every process below the pod counts.
        for children in [
            ["8e3f0a1b2c", "d41d8cd98f"],
            ["cri-containerd-8e3f0a1b2c.scope", "cri-containerd-d41d8cd98f.scope"],
            ["crio-8e3f0a1b2c.scope", "crio-conmon-8e3f0a1b2c.scope"],
        ] {
            let root = tempfile::tempdir().expect("tempdir");
            fs::write(root.path().join("cgroup.procs"), "").expect("write");
            fs::create_dir(root.path().join(children[0])).expect("mkdir");
            fs::write(root.path().join(children[0]).join("cgroup.procs"), "12\n13\n").expect("write");
            fs::create_dir(root.path().join(children[1])).expect("mkdir");
            fs::write(root.path().join(children[1]).join("cgroup.procs"), "20\n").expect("write");
            assert_eq!(processes(root.path()).expect("processes"), vec![12, 13, 20], "{children:?}");
        }
    }
}
