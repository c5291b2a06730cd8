//! Network namespaces: open a pod's, create sockets inside it.
//!
//! A socket belongs to the namespace it was created in for its whole life, whatever thread
//! later uses it. So the agent steps into a pod's namespace only for the `socket(2)` call, on
//! the calling thread, and steps straight back. Every thread of the agent otherwise stays in
//! the node's namespace, recorded once at start-up by [`init`].

use std::{
    fs::File,
    io,
    os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd},
    os::unix::fs::MetadataExt,
    path::Path,
    sync::OnceLock,
};

use socket2::{Domain, Protocol, Socket, Type};

/// The agent's own namespace, to return to.
static HOME: OnceLock<Netns> = OnceLock::new();

/// Records the node's namespace. Call before any thread enters a pod's namespace.
pub fn init() -> io::Result<&'static Netns> {
    if let Some(home) = HOME.get() {
        return Ok(home);
    }
    let file = File::open("/proc/thread-self/ns/net")?;
    let inode = file.metadata()?.ino();
    let probe = Socket::new(Domain::IPV4, Type::STREAM.cloexec(), None)?;
    let cookie = netns_cookie(&probe)?;
    Ok(HOME.get_or_init(|| Netns { fd: OwnedFd::from(file), inode, cookie }))
}

/// The node's namespace (where the agent runs).
pub fn home() -> &'static Netns {
    HOME.get().expect("netns::init() runs first thing in main")
}

#[derive(Debug)]
pub struct Netns {
    fd: OwnedFd,
    inode: u64,
    cookie: u64,
}

impl Netns {
    /// Opens a namespace file (`/proc/<pid>/ns/net`, `/run/netns/<name>`).
    pub fn open(path: &Path) -> io::Result<Self> {
        let file = File::open(path)?;
        let inode = file.metadata()?.ino();
        let fd = OwnedFd::from(file);
        let mut ns = Self { fd, inode, cookie: 0 };
        ns.cookie = netns_cookie(&ns.tcp_socket(Domain::IPV4)?)?;
        Ok(ns)
    }

    /// The namespace of process `pid`.
    pub fn of_process(pid: u32) -> io::Result<Self> {
        Self::open(Path::new(&format!("/proc/{pid}/ns/net")))
    }

    /// The inode number: what `ip netns identify` and `ls -L /proc/*/ns/net` compare.
    pub fn inode(&self) -> u64 {
        self.inode
    }

    /// `SO_NETNS_COOKIE`: how the kernel programs name this namespace.
    pub fn cookie(&self) -> u64 {
        self.cookie
    }

    /// Runs `f` with the calling thread inside this namespace. `f` must not block or await.
    pub fn run<T>(&self, f: impl FnOnce() -> T) -> io::Result<T> {
        let home = home();
        setns(self.fd.as_fd())?;
        let out = f();
        if let Err(e) = setns(home.fd.as_fd()) {
            // A thread left in a pod's namespace would open the next pod's sockets in the wrong
            // place; there is no safe way to continue.
            eprintln!("fatal: cannot return to the node's network namespace: {e}");
            std::process::abort();
        }
        Ok(out)
    }

    /// A non-blocking, close-on-exec TCP socket in this namespace.
    pub fn tcp_socket(&self, domain: Domain) -> io::Result<Socket> {
        self.run(|| Socket::new(domain, Type::STREAM.nonblocking().cloexec(), Some(Protocol::TCP)))?
    }
}

impl AsFd for Netns {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

fn setns(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: a valid namespace fd; CLONE_NEWNET only changes this thread's namespace.
    if unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `SO_NETNS_COOKIE` of the namespace a socket lives in.
pub fn netns_cookie(socket: &impl AsRawFd) -> io::Result<u64> {
    const SO_NETNS_COOKIE: libc::c_int = 71;
    socket_option_u64(socket, SO_NETNS_COOKIE)
}

/// `SO_COOKIE` of a socket (the key the kernel programs use for it).
pub fn socket_cookie(socket: &impl AsRawFd) -> io::Result<u64> {
    socket_option_u64(socket, libc::SO_COOKIE)
}

fn socket_option_u64(socket: &impl AsRawFd, option: libc::c_int) -> io::Result<u64> {
    let mut value = 0u64;
    let mut len = size_of::<u64>() as libc::socklen_t;
    // SAFETY: a u64 out-parameter of the size the kernel expects for these options.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            std::ptr::from_mut(&mut value).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(value)
}
