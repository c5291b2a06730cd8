//! Every pin path the agent creates, in one module, so cleanup finds them all.
//!
//! ```text
//! <bpffs_dir>/maps/<map name>            maps, adopted by a restarted agent
//! <bpffs_dir>/pods/<pod uid>/<link>      one link per hook per enrolled pod
//! ```

use std::{
    fs, io,
    os::{fd::AsRawFd as _, unix::fs::MetadataExt as _},
    path::{Path, PathBuf},
};

/// Magic number of the BPF filesystem (`BPF_FS_MAGIC` in linux/magic.h). `statfs.f_type` is
/// signed in glibc and unsigned in musl: compared as the 32-bit value it is.
const BPF_FS_MAGIC: u32 = 0xcafe_4a11;

#[derive(Clone, Debug)]
pub struct PinDir {
    root: PathBuf,
}

impl PinDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn maps(&self) -> PathBuf {
        self.root.join("maps")
    }

    pub fn pods(&self) -> PathBuf {
        self.root.join("pods")
    }

    pub fn pod(&self, uid: &str) -> PathBuf {
        self.pods().join(uid)
    }

    pub fn link(&self, uid: &str, hook: &str) -> PathBuf {
        self.pod(uid).join(hook)
    }

    /// Creates the directories, mounting bpffs at its usual place first if nothing is
    /// mounted there yet (a fresh machine has no bpffs), and takes the directory for this
    /// agent: a second agent on the same directory would remove the first one's pins (its
    /// start-up sweeps pins it does not know), so it must not start. The lock is an exclusive
    /// `flock` on the directory itself (bpffs holds no regular files), released when the
    /// returned handle closes, also when the agent is killed.
    pub fn prepare(&self) -> io::Result<PinLock> {
        ensure_bpffs(&self.root)?;
        fs::create_dir_all(&self.root)?;
        let dir = fs::File::open(&self.root)?;
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(dir.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(e);
            }
            let holder = dir.metadata().ok().and_then(|m| lock_holder(m.ino()));
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!(
                    "another nodemesh agent{} owns {}; refusing to start (two agents on one pin \
                     directory would remove each other's pins: stop it, or give this one its own \
                     --bpffs-dir)",
                    holder.map(|pid| format!(" (pid {pid})")).unwrap_or_default(),
                    self.root.display()
                ),
            ));
        }
        fs::create_dir_all(self.maps())?;
        fs::create_dir_all(self.pods())?;
        Ok(PinLock { _dir: dir })
    }

    /// Uids of pods that have a pin directory (from this run or an earlier one).
    pub fn pinned_pods(&self) -> io::Result<Vec<String>> {
        let mut uids = Vec::new();
        match fs::read_dir(self.pods()) {
            Ok(entries) => {
                for entry in entries {
                    uids.push(entry?.file_name().to_string_lossy().into_owned());
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        Ok(uids)
    }

    /// Removes everything under the root and the root itself. Unpinning a link detaches it
    /// once no process holds it; unpinning a map frees it once no program uses it.
    pub fn remove_all(&self) -> io::Result<()> {
        match fs::remove_dir_all(&self.root) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }
}

/// Held for the agent's life: the pin directory is this agent's (see [`PinDir::prepare`]).
#[derive(Debug)]
pub struct PinLock {
    _dir: fs::File,
}

/// The process holding an flock on the inode, from /proc/locks
/// (`1: FLOCK  ADVISORY  WRITE <pid> <maj>:<min>:<inode> 0 EOF`).
fn lock_holder(inode: u64) -> Option<u32> {
    let locks = fs::read_to_string("/proc/locks").ok()?;
    locks.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (kind, pid, id) = (fields.get(1)?, fields.get(4)?, fields.get(5)?);
        let ino = id.rsplit(':').next()?.parse::<u64>().ok()?;
        (*kind == "FLOCK" && ino == inode).then(|| pid.parse().ok()).flatten()
    })
}

fn is_bpffs(path: &Path) -> io::Result<bool> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut st = std::mem::MaybeUninit::<libc::statfs>::zeroed();
    // SAFETY: valid C string and a statfs buffer of the right size.
    if unsafe { libc::statfs(c.as_ptr(), st.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: statfs succeeded and filled the buffer.
    #[expect(clippy::cast_possible_truncation, reason = "filesystem magics are 32-bit values")]
    let magic = unsafe { st.assume_init() }.f_type as u32;
    Ok(magic == BPF_FS_MAGIC)
}

/// Makes sure `dir` will live on a bpffs: its nearest existing ancestor must be one, or be
/// `/sys/fs/bpf`, where we mount one.
fn ensure_bpffs(dir: &Path) -> io::Result<()> {
    let mut existing = dir;
    while !existing.exists() {
        existing = existing.parent().unwrap_or(Path::new("/"));
    }
    if is_bpffs(existing)? {
        return Ok(());
    }
    let default_mount = Path::new("/sys/fs/bpf");
    if existing == default_mount {
        let (src, target, fstype) = (c"bpf", c"/sys/fs/bpf", c"bpf");
        // SAFETY: static C strings; no data argument.
        let rc = unsafe { libc::mount(src.as_ptr(), target.as_ptr(), fstype.as_ptr(), 0, std::ptr::null()) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        tracing::info!(path = %default_mount.display(), "mounted bpffs");
        return Ok(());
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("{} is not on a BPF filesystem (mount -t bpf bpf <dir>)", dir.display()),
    ))
}
