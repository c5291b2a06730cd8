//! Rebuild the kernel programs when bpf-linker changes: cargo cannot see that dependency.
fn main() {
    if let Ok(linker) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}
