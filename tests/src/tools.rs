//! The traffic tools in `tests/tools/` (Python, standard library only) and real clients
//! (curl), as commands to run in a pod or on the external host.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Duration,
};

use anyhow::{Context as _, bail};
use serde_json::Value;

use crate::cluster::{enter_netns, wait_for};

pub fn tool(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tools").join(name)
}

fn python(script: &str) -> Command {
    let mut cmd = Command::new("python3");
    cmd.arg("-u").arg(tool(script));
    cmd
}

/// The virtualenv `cargo xtask setup` creates with the packages of `TEST_PYTHON`
/// (xtask/src/setup.rs): grpcio, grpcio-tools, h2, cryptography and websockets.
pub fn grpc_python_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/pyenv/bin/python3")
}

/// A tool from `tools/grpc/`: a gRPC peer built from grpcio and our `.proto` files, sharing no
/// code with ours. Fails, saying what to do, when the virtualenv is missing.
pub fn grpc_python(script: &str) -> anyhow::Result<Command> {
    let python = grpc_python_path();
    if !python.exists() {
        bail!("{} is missing: run `cargo xtask setup` (it installs grpcio there)", python.display());
    }
    let mut cmd = Command::new(python);
    cmd.arg("-u").arg(tool("grpc").join(script));
    Ok(cmd)
}

/// `tools/hbone_peer.py` (an independent HBONE client and server: Python `ssl` and `h2`) on
/// the virtualenv's python, with `args` (`mint`, `client`, `server`, ...).
pub fn hbone_peer(args: &[&str]) -> anyhow::Result<Command> {
    let python = grpc_python_path();
    if !python.exists() {
        bail!("{} is missing: run `cargo xtask setup` (it installs h2 there)", python.display());
    }
    let mut cmd = Command::new(python);
    cmd.arg("-u").arg(tool("hbone_peer.py")).args(args);
    Ok(cmd)
}

/// A TCP echo server on all IPv4 addresses: echoes until the client's FIN, then FINs back.
pub fn echo_server(port: u16) -> Command {
    const ECHO: &str = "import socket, sys, threading
def echo(c):
    while d := c.recv(1 << 16):
        c.sendall(d)
    c.shutdown(socket.SHUT_WR)
    c.close()
s = socket.create_server(('0.0.0.0', int(sys.argv[1])), backlog=128)
while True:
    threading.Thread(target=echo, args=(s.accept()[0],), daemon=True).start()
";
    let mut cmd = Command::new("python3");
    cmd.args(["-u", "-c", ECHO, &port.to_string()]);
    cmd
}

/// Blocking byte-exact server (server speaks first), see tools/bulk_server.py.
pub fn bulk_server(bind: IpAddr, port: u16) -> Command {
    let mut cmd = python("bulk_server.py");
    cmd.args(["--bind", &bind.to_string(), "--port", &port.to_string()]);
    cmd
}

/// Blocking client: uploads then half-closes, then downloads; verifies both.
pub fn bulk_client(host: IpAddr, port: u16, upload: usize, download: usize) -> Command {
    let mut cmd = python("bulk_client.py");
    cmd.args([
        "--host",
        &host.to_string(),
        "--port",
        &port.to_string(),
        "--upload",
        &upload.to_string(),
        "--download",
        &download.to_string(),
    ]);
    cmd
}

pub fn many_client(host: IpAddr, port: u16, count: usize) -> Command {
    let mut cmd = python("many_client.py");
    cmd.args(["--host", &host.to_string(), "--port", &port.to_string(), "--count", &count.to_string()]);
    cmd
}

pub fn connect_loop(host: IpAddr, port: u16, seconds: f64) -> Command {
    let mut cmd = python("connect_loop.py");
    cmd.args(["--host", &host.to_string(), "--port", &port.to_string(), "--seconds", &seconds.to_string()]);
    cmd
}

/// A reader that stops reading for `pause_s` after `pause_after` bytes.
pub fn slow_client(host: IpAddr, port: u16, download: usize, pause_after: usize, pause_s: f64) -> Command {
    let mut cmd = python("slow_client.py");
    cmd.args([
        "--host",
        &host.to_string(),
        "--port",
        &port.to_string(),
        "--download",
        &download.to_string(),
        "--pause-after",
        &pause_after.to_string(),
        "--pause",
        &pause_s.to_string(),
    ]);
    cmd
}

/// A connection held open until `release` exists (tools/hold_client.py).
pub fn hold_client(host: IpAddr, port: u16, release: &Path) -> Command {
    let mut cmd = python("hold_client.py");
    cmd.args(["--host", &host.to_string(), "--port", &port.to_string(), "--release-file"]).arg(release);
    cmd
}

/// Connects until a connection is `want` ("intercepted" or "direct"); times from `since`.
pub fn probe(host: IpAddr, port: u16, want: &str, since: f64) -> Command {
    let mut cmd = python("probe.py");
    cmd.args([
        "--host",
        &host.to_string(),
        "--port",
        &port.to_string(),
        "--want",
        want,
        "--since",
        &format!("{since:.6}"),
    ]);
    cmd
}

/// A probe started before a change: it connects from the start and times from the moment
/// [`ArmedProbe::mark`] records, so its own start-up is not counted.
pub struct ArmedProbe {
    since_file: PathBuf,
}

impl ArmedProbe {
    /// The command to start in the pod, and the probe's handle. `dir` holds its files.
    pub fn new(host: IpAddr, port: u16, want: &str, dir: &Path, tag: &str) -> (Command, Self) {
        let since_file = dir.join(format!("probe-{tag}-{want}.since"));
        let _ = std::fs::remove_file(&since_file);
        let _ = std::fs::remove_file(since_file.with_extension("since.ready"));
        let mut cmd = python("probe.py");
        cmd.args(["--host", &host.to_string(), "--port", &port.to_string(), "--want", want, "--since-file"])
            .arg(&since_file);
        (cmd, Self { since_file })
    }

    /// Waits until the probe is connecting.
    pub fn wait_ready(&self) -> anyhow::Result<()> {
        let ready = self.since_file.with_extension("since.ready");
        wait_for("the probe's first connection", Duration::from_secs(15), || ready.exists())
    }

    /// Records now as the moment of the change (call just before making it).
    pub fn mark(&self, unix_time: f64) -> anyhow::Result<()> {
        let tmp = self.since_file.with_extension("tmp");
        std::fs::write(&tmp, format!("{unix_time:.6}"))?;
        Ok(std::fs::rename(tmp, &self.since_file)?)
    }
}

/// `nm-loadgen` (a separate binary from the proxy), next to the `nodemesh` under test.
fn loadgen() -> Command {
    let path = crate::nodemesh_bin().with_file_name("nm-loadgen");
    assert!(path.exists(), "{} is missing: build it first (`cargo build`)", path.display());
    Command::new(path)
}

/// `nm-loadgen http-server` named `name` on `port` (HTTP/1.1 and h2c), with `extra` flags
/// (`--delay-ms`, `--fail-every`).
pub fn loadgen_http_server(name: &str, port: u16, extra: &[&str]) -> Command {
    let mut cmd = loadgen();
    cmd.args(["http-server", "--port", &port.to_string(), "--name", name]).args(extra);
    cmd
}

pub fn loadgen_server(port: u16) -> Command {
    let mut cmd = loadgen();
    cmd.args(["server", "--port", &port.to_string()]);
    cmd
}

/// `count` short connections in all, `conns` at a time, one small request each.
pub fn loadgen_crr(host: IpAddr, port: u16, count: u64, conns: usize) -> Command {
    let mut cmd = loadgen();
    cmd.args([
        "crr",
        "--target",
        &std::net::SocketAddr::new(host, port).to_string(),
        "--size",
        "64",
        "--conns",
        &conns.to_string(),
        "--count",
        &count.to_string(),
    ]);
    cmd
}

/// `count` connections that send nothing, checked after `seconds` (tools/conns.py); with
/// `greeting`, each first waits for the server's first line.
pub fn conns(host: IpAddr, port: u16, count: usize, seconds: f64, greeting: bool) -> Command {
    let mut cmd = python("conns.py");
    cmd.args(["--host", &host.to_string(), "--port", &port.to_string(), "--count", &count.to_string()])
        .args(["--seconds", &seconds.to_string()]);
    if greeting {
        cmd.arg("--greeting");
    }
    cmd
}

/// A process listening on 127.0.0.1:`port` that records every connection it gets in `out`.
pub fn squatter(port: u16, out: &Path) -> Command {
    let mut cmd = python("squatter.py");
    cmd.args(["--port", &port.to_string(), "--out"]).arg(out);
    cmd
}

/// One connection to `host:port` (from `source` if given); prints how it ended.
pub fn loop_client(host: IpAddr, port: u16, source: Option<IpAddr>) -> Command {
    let mut cmd = python("loop_client.py");
    cmd.args(["--host", &host.to_string(), "--port", &port.to_string()]);
    if let Some(source) = source {
        cmd.args(["--source", &source.to_string()]);
    }
    cmd
}

/// EOF-delimited transfers (tools/eof_transfer.py): the server streams `down` connections
/// until they break and records how `up` connections ended, in `out_dir`.
pub fn eof_server(port: u16, out_dir: &Path) -> Command {
    let mut cmd = python("eof_transfer.py");
    cmd.args(["server", "--port", &port.to_string(), "--out"]).arg(out_dir);
    cmd
}

/// The client of [`eof_server`]: `down` reads until the end, `up` sends until it fails; both
/// print how the stream ended (`eof` or `reset`) and keep a byte count in `progress_file`.
pub fn eof_client(host: IpAddr, port: u16, mode: &str, progress_file: &Path) -> Command {
    let mut cmd = python("eof_transfer.py");
    cmd.args(["client", "--host", &host.to_string(), "--port", &port.to_string(), "--mode", mode])
        .arg("--progress-file")
        .arg(progress_file);
    cmd
}

/// `conns` connections at once, each carrying `bytes` checked bytes both ways
/// (`nm-loadgen verify`); fails naming the first wrong byte's connection and offset.
pub fn loadgen_verify(host: IpAddr, port: u16, conns: usize, bytes: u64) -> Command {
    let mut cmd = loadgen();
    cmd.args([
        "verify",
        "--target",
        &std::net::SocketAddr::new(host, port).to_string(),
        "--conns",
        &conns.to_string(),
        "--bytes",
        &bytes.to_string(),
    ]);
    cmd
}

/// Busy loops, one per CPU, while this lives.
pub struct CpuHogs(Vec<std::process::Child>);

impl CpuHogs {
    /// At normal priority: a contended machine, where the kernel's softirq work is deferred,
    /// timers fire late and TCP retransmits spuriously.
    pub fn start() -> anyhow::Result<Self> {
        Self::spawn(&[])
    }

    /// At SCHED_IDLE: they take no time from real work, but keep every vCPU awake (on these
    /// VMs an idle vCPU halts, and waking it dominates latency at concurrency 1).
    pub fn start_idle() -> anyhow::Result<Self> {
        Self::spawn(&["chrt", "--idle", "0"])
    }

    fn spawn(prefix: &[&str]) -> anyhow::Result<Self> {
        let cpus = std::thread::available_parallelism().map_or(2, usize::from);
        let mut hogs = Vec::new();
        for _ in 0..cpus {
            let argv: Vec<&str> = prefix.iter().copied().chain(["sh", "-c", "while :; do :; done"]).collect();
            let child = Command::new(argv[0])
                .args(&argv[1..])
                .stdout(std::process::Stdio::null())
                .spawn()
                .with_context(|| format!("starting a busy loop ({})", argv[0]))?;
            hogs.push(child);
        }
        Ok(Self(hogs))
    }
}

impl Drop for CpuHogs {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Seconds since the Unix epoch (the clock the Python tools report in).
pub fn unix_now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

pub fn http_server(bind: IpAddr, port: u16, dir: &Path) -> Command {
    let mut cmd = python("http_server.py");
    cmd.args(["--bind", &bind.to_string(), "--port", &port.to_string(), "--dir"]).arg(dir);
    cmd
}

/// `host:port` as a URL authority.
pub fn authority(host: IpAddr, port: u16) -> String {
    match host {
        IpAddr::V4(v4) => format!("{v4}:{port}"),
        IpAddr::V6(v6) => format!("[{v6}]:{port}"),
    }
}

/// The last stdout line of a tool, as JSON; fails with stderr when the tool failed.
pub fn json_result(what: &str, out: &Output) -> anyhow::Result<Value> {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or("");
    if !out.status.success() {
        bail!("{what} failed ({}): {line}\n{}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    serde_json::from_str(line).with_context(|| format!("{what} printed {line:?}"))
}

/// Waits until something listens on `port` in the namespace at `netns`.
pub fn wait_listening(netns: &Path, port: u16) -> anyhow::Result<()> {
    wait_for(&format!("a listener on port {port}"), Duration::from_secs(15), || {
        let Ok(mut cmd) = enter_netns(Command::new("ss"), netns) else { return false };
        cmd.args(["-Hltn", &format!("sport = :{port}")])
            .output()
            .is_ok_and(|o| !String::from_utf8_lossy(&o.stdout).trim().is_empty())
    })
}

/// Writes a file of `len` deterministic pseudo-random bytes and returns its sha256 (hex).
pub fn write_payload(path: &Path, len: usize) -> anyhow::Result<String> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64 ^ len as u64;
    let mut data = Vec::with_capacity(len);
    while data.len() < len {
        // xorshift64*: fast and good enough to defeat compression and catch reordering.
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        data.extend_from_slice(&state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    data.truncate(len);
    std::fs::write(path, &data)?;
    sha256_file(path)
}

pub fn sha256_file(path: &Path) -> anyhow::Result<String> {
    let out = Command::new("sha256sum").arg(path).output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text.split_whitespace().next().context("sha256sum output")?.to_owned())
}

/// `tools/name_server.py`: an endpoint that sends its name, then echoes; `delay_ms` before
/// the name makes it a slow one.
pub fn name_server(name: &str, port: u16, delay_ms: u32) -> Command {
    let mut cmd = python("name_server.py");
    cmd.args(["--name", name, "--port", &port.to_string(), "--delay-ms", &delay_ms.to_string()]);
    cmd
}

/// `tools/service_client.py <mode>` to `host:port` with `args`.
pub fn service_client(mode: &str, host: IpAddr, port: u16, args: &[&str]) -> Command {
    let mut cmd = python("service_client.py");
    cmd.args([mode, "--host", &host.to_string(), "--port", &port.to_string()]).args(args);
    cmd
}

/// `tools/autoscaler.py`: logs the proxy's scale-up requests to `log`.
pub fn autoscaler(port: u16, log: &Path) -> Command {
    let mut cmd = python("autoscaler.py");
    cmd.args(["--port", &port.to_string()]).arg("--log").arg(log);
    cmd
}

/// The sum of the samples of `family` in a Prometheus exposition `text` whose labels include
/// every one of `labels`.
pub fn metric_sum(text: &str, family: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{family}{{")))
        .filter(|l| labels.iter().all(|(k, v)| l.contains(&format!("{k}=\"{v}\""))))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}
