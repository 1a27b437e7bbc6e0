//! Embeds the eBPF object that `cargo xtask build-ebpf` produced. Without it
//! the binary still builds (for clippy and unit tests) and refuses to run.
use std::path::PathBuf;

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default());
    let object = std::env::var("SENSOR_EBPF_OBJECT")
        .map(PathBuf::from)
        .unwrap_or_else(|_| manifest.join("../target/bpfel-unknown-none/release/sensor-ebpf"));
    println!("cargo:rerun-if-env-changed=SENSOR_EBPF_OBJECT");
    println!("cargo:rerun-if-changed={}", object.display());
    let out =
        PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("sensor-ebpf.o");
    let bytes = std::fs::read(&object).unwrap_or_default();
    if bytes.is_empty() {
        println!(
            "cargo:warning=eBPF object {} not found: run `cargo xtask build-ebpf`",
            object.display()
        );
    }
    std::fs::write(&out, bytes).expect("writing OUT_DIR/sensor-ebpf.o");
    build_info(&manifest);
}

/// The commit and compiler `tetragon_build_info` reports; empty outside a
/// git checkout.
fn build_info(manifest: &std::path::Path) {
    let git = manifest.join("../.git");
    println!("cargo:rerun-if-changed={}", git.join("HEAD").display());
    println!(
        "cargo:rerun-if-changed={}",
        git.join("refs/heads").display()
    );
    let run = |cmd: &str, args: &[&str]| {
        std::process::Command::new(cmd)
            .args(args)
            .current_dir(manifest)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };
    let commit = run("git", &["rev-parse", "HEAD"]);
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let version = run(&rustc, &["--version"]);
    println!("cargo:rustc-env=SENSOR_GIT_COMMIT={commit}");
    println!("cargo:rustc-env=SENSOR_RUSTC={version}");
}
