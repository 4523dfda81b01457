//! Rebuild the programs when bpf-linker changes: it is an undeclared tool
//! dependency (cargo has no artifact dependencies on stable yet).
fn main() {
    if let Ok(linker) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}
