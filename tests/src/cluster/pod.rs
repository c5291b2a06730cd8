//! A fake pod and the external host: running commands inside them.

use super::*;

/// A fake pod.
pub struct Pod {
    pub(super) inner: Arc<Inner>,
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub ipv4: Ipv4Addr,
    pub ipv6: Option<Ipv6Addr>,
    pub netns: String,
    pub cgroup_dir: PathBuf,
    pub(super) container: PathBuf,
}

impl Pod {
    pub fn netns_path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.netns))
    }

    /// A command that runs inside the pod: its network namespace and its cgroup, so the
    /// pod's hooks apply to it.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> anyhow::Result<Command> {
        enter(Command::new(program), &self.netns_path(), Some(&self.container.join("cgroup.procs")))
    }

    /// Prepares `cmd` (built with `Command::new`) to run in the pod.
    pub fn prepare(&self, cmd: Command) -> anyhow::Result<Command> {
        enter(cmd, &self.netns_path(), Some(&self.container.join("cgroup.procs")))
    }

    /// Sets a sysctl in the pod's network namespace.
    pub fn sysctl(&self, key: &str, value: &str) -> anyhow::Result<()> {
        cmd::sysctl(&self.netns, key, value)
    }

    /// Starts a long-running process in the pod's network namespace but *not* its cgroup, so
    /// the pod's hooks do not apply to it (as with a sidecar proxy's own sockets).
    pub fn spawn_in_netns(&self, cmd: Command) -> anyhow::Result<u32> {
        let mut cmd = enter(cmd, &self.netns_path(), None)?;
        let child = cmd.stdin(Stdio::null()).spawn().context("spawning in the pod's namespace")?;
        Ok(self.inner.track_child(child))
    }

    /// Starts a long-running process in the pod; the cluster kills it on drop.
    pub fn spawn(&self, cmd: Command) -> anyhow::Result<u32> {
        let mut cmd = self.prepare(cmd)?;
        let child = cmd.stdin(Stdio::null()).spawn().context("spawning in the pod")?;
        Ok(self.inner.track_child(child))
    }

    /// Runs a command in the pod to completion.
    pub fn output(&self, cmd: Command) -> anyhow::Result<Output> {
        let mut cmd = self.prepare(cmd)?;
        cmd.stdin(Stdio::null()).output().context("running in the pod")
    }

    /// Stops a process started with [`Pod::spawn`].
    pub fn kill(&self, pid: u32) {
        self.inner.kill_child(pid);
    }

    /// Waits for a process started with [`Pod::spawn`] to exit.
    pub fn wait(&self, pid: u32, timeout: Duration) -> anyhow::Result<std::process::ExitStatus> {
        self.inner.wait_child(pid, timeout)
    }
}

/// A host outside the mesh.
pub struct External {
    pub(super) inner: Arc<Inner>,
    pub netns: String,
    pub ipv4: Ipv4Addr,
    pub ipv6: Ipv6Addr,
}

impl External {
    pub fn netns_path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.netns))
    }

    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> anyhow::Result<Command> {
        enter(Command::new(program), &self.netns_path(), None)
    }

    /// Waits for a process started with [`External::spawn`] to exit.
    pub fn wait(&self, pid: u32, timeout: Duration) -> anyhow::Result<std::process::ExitStatus> {
        self.inner.wait_child(pid, timeout)
    }

    pub fn spawn(&self, cmd: Command) -> anyhow::Result<u32> {
        let mut cmd = enter(cmd, &self.netns_path(), None)?;
        let child = cmd.stdin(Stdio::null()).spawn().context("spawning on the external host")?;
        Ok(self.inner.track_child(child))
    }

    pub fn output(&self, cmd: Command) -> anyhow::Result<Output> {
        let mut cmd = enter(cmd, &self.netns_path(), None)?;
        cmd.stdin(Stdio::null()).output().context("running on the external host")
    }
}
