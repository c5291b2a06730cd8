//! `cargo xtask setup`: installs what a fresh machine lacks and checks the toolchain pins.
//! Idempotent: each step first checks, and only installs what is missing.

use std::{path::Path, process::Command};

use anyhow::{Context as _, bail};

use crate::sh;

/// bpf-linker must be built against the same LLVM major as the nightly rustc.
const LLVM_MAJOR: &str = "22";
const BPF_LINKER_VERSION: &str = "0.13.0";

/// Debian packages, with the command that proves each is there.
const PACKAGES: &[(&str, &str)] = &[
    ("llvm-22-dev", "/usr/lib/llvm-22/bin/llvm-config"),
    ("bpftool", "bpftool"),
    ("iproute2", "ip"),
    ("curl", "curl"),
    ("iperf3", "iperf3"),
    ("nftables", "nft"),
    // promtool, which checks the agent's /metrics in the tests.
    ("prometheus", "promtool"),
];

pub fn run() -> anyhow::Result<()> {
    require_root()?;
    install_packages()?;
    ensure_python()?;
    ensure_test_python()?;
    ensure_rust_src()?;
    check_nightly_llvm()?;
    ensure_bpf_linker()?;
    ensure_bpffs()?;
    println!("setup: ok (nightly LLVM {LLVM_MAJOR}, bpf-linker {BPF_LINKER_VERSION}, bpffs mounted)");
    Ok(())
}

fn require_root() -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "run this as root: it installs packages, mounts bpffs, and the tests create namespaces and load eBPF"
        );
    }
    Ok(())
}

fn present(probe: &str) -> bool {
    if probe.starts_with('/') {
        return Path::new(probe).exists();
    }
    Command::new("sh").args(["-c", &format!("command -v {probe}")]).output().is_ok_and(|o| o.status.success())
}

fn install_packages() -> anyhow::Result<()> {
    let missing: Vec<&str> = PACKAGES.iter().filter(|(_, probe)| !present(probe)).map(|(p, _)| *p).collect();
    if missing.is_empty() {
        return Ok(());
    }
    println!("setup: installing {}", missing.join(" "));
    sh("apt-get", &["update", "-qq"]).context("apt-get update")?;
    let mut args = vec!["install", "-y", "-qq", "--no-install-recommends"];
    args.extend(&missing);
    Command::new("apt-get")
        .args(&args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("apt-get install")?
        .success()
        .then_some(())
        .with_context(|| format!("apt-get install {} failed", missing.join(" ")))
}

fn ensure_python() -> anyhow::Result<()> {
    if present("python3") {
        return Ok(());
    }
    println!("setup: installing python3");
    sh("apt-get", &["install", "-y", "-qq", "python3"])
}

/// Python packages for the tests' independent peers, pinned, in a virtualenv of our own
/// (Debian's python refuses system-wide pip installs): grpcio and grpcio-tools for the gRPC
/// peers (`tests/tools/grpc/`, `tests/tools/grpc_echo.py`), h2 and cryptography for the HBONE
/// peer (`tests/tools/hbone_peer.py`), websockets for the WebSocket peers
/// (`tests/tools/ws_echo.py`), helm-python-sdk (Helm v4's library: there is no helm binary to
/// install here) and kubernetes-validate (Kubernetes' schemas, offline) for the chart's test
/// (`tests/tools/chart_check.py`). Changing this list makes the next setup re-install.
pub const TEST_PYTHON: &[&str] = &[
    "grpcio==1.85.1",
    "grpcio-tools==1.85.1",
    "h2==4.4.1",
    "cryptography==50.0.2",
    "websockets==15.0.1",
    "helm-python-sdk==0.2.2",
    "kubernetes-validate==1.37.0",
];

/// Written into the virtualenv after a successful install, holding `TEST_PYTHON` one per
/// line: the venv is up to date only when it exists and this file matches the pins.
const TEST_PYTHON_STAMP: &str = "nodemesh-pins.txt";

fn ensure_test_python() -> anyhow::Result<()> {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/pyenv");
    let python = venv.join("bin/python3");
    let stamp = venv.join(TEST_PYTHON_STAMP);
    let pins = TEST_PYTHON.join("\n") + "\n";
    if python.exists() && std::fs::read_to_string(&stamp).is_ok_and(|s| s == pins) {
        return Ok(());
    }
    println!("setup: installing {} into {}", TEST_PYTHON.join(" "), venv.display());
    if !python.exists() {
        let created =
            Command::new("python3").arg("-m").arg("venv").arg(&venv).status().is_ok_and(|s| s.success());
        if !created {
            // Debian splits ensurepip out of python3.
            sh("apt-get", &["install", "-y", "-qq", "python3-venv"])?;
            let venv = venv.to_str().context("venv path")?;
            sh("python3", &["-m", "venv", venv])?;
        }
    }
    // pip moves already installed packages to the pinned versions, so an existing venv is
    // updated in place rather than rebuilt.
    let mut pip = Command::new(&python);
    pip.args(["-m", "pip", "install", "-q", "--disable-pip-version-check"]).args(TEST_PYTHON);
    if !pip.status().context("pip install")?.success() {
        bail!("pip install {} into {} failed", TEST_PYTHON.join(" "), venv.display());
    }
    std::fs::write(&stamp, pins).with_context(|| format!("writing {}", stamp.display()))
}

fn ensure_rust_src() -> anyhow::Result<()> {
    let sysroot = output("rustc", &["+nightly", "--print", "sysroot"])
        .context("the nightly toolchain is missing: rustup toolchain install nightly")?;
    if Path::new(sysroot.trim()).join("lib/rustlib/src/rust/library/core").exists() {
        return Ok(());
    }
    println!("setup: adding rust-src to nightly");
    sh("rustup", &["component", "add", "rust-src", "--toolchain", "nightly"])
}

fn check_nightly_llvm() -> anyhow::Result<()> {
    let version = output("rustc", &["+nightly", "-vV"])?;
    let llvm = version.lines().find_map(|l| l.strip_prefix("LLVM version: ")).context("no LLVM version")?;
    if llvm.split('.').next() != Some(LLVM_MAJOR) {
        bail!(
            "the nightly rustc uses LLVM {llvm}, but bpf-linker is built for LLVM {LLVM_MAJOR}. \
             Do not update nightly; install a nightly whose LLVM major is {LLVM_MAJOR}."
        );
    }
    Ok(())
}

fn ensure_bpf_linker() -> anyhow::Result<()> {
    let ok = output("bpf-linker", &["--version"]).is_ok_and(|v| v.contains(BPF_LINKER_VERSION))
        && output("sh", &["-c", "ldd \"$(command -v bpf-linker)\""])
            .is_ok_and(|l| l.contains(&format!("libLLVM.so.{LLVM_MAJOR}")));
    if ok {
        return Ok(());
    }
    println!("setup: building bpf-linker {BPF_LINKER_VERSION} against LLVM {LLVM_MAJOR} (a few minutes)");
    let status = Command::new("cargo")
        .args([
            "install",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--locked",
            "--force",
            "--no-default-features",
            "--features",
            &format!("llvm-{LLVM_MAJOR}"),
        ])
        .env("LLVM_PREFIX", format!("/usr/lib/llvm-{LLVM_MAJOR}"))
        .status()
        .context("cargo install bpf-linker")?;
    if !status.success() {
        bail!("cargo install bpf-linker failed");
    }
    Ok(())
}

fn ensure_bpffs() -> anyhow::Result<()> {
    let mounts = std::fs::read_to_string("/proc/self/mounts")?;
    if mounts.lines().any(|l| l.split_whitespace().nth(2) == Some("bpf") && l.contains(" /sys/fs/bpf ")) {
        return Ok(());
    }
    println!("setup: mounting bpffs at /sys/fs/bpf");
    sh("mount", &["-t", "bpf", "bpf", "/sys/fs/bpf"])
}

fn output(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(program).args(args).output().with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!("{program} {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
