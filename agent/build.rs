//! Builds the kernel programs (the `nodemesh-ebpf` crate) with the nightly toolchain and
//! bpf-linker, after checking the pins that make that build work. `cargo xtask setup`
//! installs whatever is missing.

use std::process::Command;

use anyhow::{Context as _, bail};
use aya_build::{Package, Toolchain};

/// bpf-linker and the nightly rustc must be built against the same LLVM major.
const LLVM_MAJOR: &str = "22";
const NIGHTLY: &str = "nightly";

fn main() -> anyhow::Result<()> {
    check_toolchain().context("the eBPF toolchain pins do not hold; run `cargo xtask setup`")?;
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../ebpf");
    aya_build::build_ebpf(
        [Package { name: "nodemesh-ebpf", root_dir: root, ..Default::default() }],
        Toolchain::Custom(NIGHTLY),
    )
}

fn check_toolchain() -> anyhow::Result<()> {
    let version = output("rustc", &[&format!("+{NIGHTLY}"), "-vV"])
        .context("the nightly toolchain is missing (rustup toolchain install nightly)")?;
    let llvm = version
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .context("`rustc +nightly -vV` printed no LLVM version")?;
    if llvm.split('.').next() != Some(LLVM_MAJOR) {
        bail!("nightly rustc uses LLVM {llvm}, bpf-linker needs LLVM {LLVM_MAJOR}: do not update nightly");
    }
    let sysroot = output("rustc", &[&format!("+{NIGHTLY}"), "--print", "sysroot"])?;
    let src = format!("{}/lib/rustlib/src/rust/library/core", sysroot.trim());
    if !std::path::Path::new(&src).exists() {
        bail!("rust-src is missing for nightly (rustup component add rust-src --toolchain nightly)");
    }
    let linker = output("which", &["bpf-linker"]).context("bpf-linker is not installed")?;
    let libs = output("ldd", &[linker.trim()])?;
    if !libs.lines().any(|l| {
        l.contains(&format!("libLLVM.so.{LLVM_MAJOR}")) || l.contains(&format!("libLLVM-{LLVM_MAJOR}"))
    }) {
        bail!("bpf-linker at {} is not linked against LLVM {LLVM_MAJOR}", linker.trim());
    }
    println!("cargo:rerun-if-changed={}", linker.trim());
    Ok(())
}

fn output(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(program).args(args).output().with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!("{program} {args:?} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8(out.stdout)?)
}
