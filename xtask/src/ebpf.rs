//! Building `sensor-ebpf`. rustup has no rust-src here, so the kernel crate is
//! built with Debian's Rust (which ships its library source) and bpf-linker
//! built against Debian's LLVM 22. Missing pieces are installed when running
//! as root; otherwise the exact commands are printed.
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Result};

use crate::{ensure_packages, is_root, root, run};

const BPF_LINKER: &str = "bpf-linker@0.13.0";

fn bpf_linker_works() -> bool {
    Command::new("bpf-linker")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn ensure_toolchain() -> Result<()> {
    let packages = [
        ("rustc-web", "/usr/bin/rustc"),
        ("cargo-web", "/usr/bin/cargo"),
        ("rust-web-src", "/usr/lib/rustlib/src/rust/library"),
        ("llvm-22-dev", "/usr/lib/llvm-22/bin/llvm-config"),
    ];
    let install_linker = format!(
        "LLVM_PREFIX=/usr/lib/llvm-22 cargo install {BPF_LINKER} --locked --no-default-features --features llvm-22"
    );
    if !is_root() && (packages.iter().any(|(_, p)| !Path::new(p).exists()) || !bpf_linker_works()) {
        bail!(
            "the eBPF toolchain is missing; as root run:\n  apt-get update && apt-get install -y rustc-web cargo-web rust-web-src llvm-22-dev\n  {install_linker}"
        );
    }
    ensure_packages(&packages)?;
    if !bpf_linker_works() {
        eprintln!("xtask: installing {BPF_LINKER} (about 2 minutes)");
        run(
            Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
                .args([
                    "install",
                    BPF_LINKER,
                    "--locked",
                    "--no-default-features",
                    "--features",
                    "llvm-22",
                ])
                .env("LLVM_PREFIX", "/usr/lib/llvm-22"),
        )?;
    }
    Ok(())
}

/// Builds target/bpfel-unknown-none/release/sensor-ebpf.
pub fn build() -> Result<()> {
    ensure_toolchain()?;
    let flags = [
        "--cfg=bpf_target_arch=\"x86_64\"",
        "-Cdebuginfo=2",
        "-Clink-arg=--btf",
        // Loop bodies called as global functions by the compat programs
        // (sensor-ebpf/src/looping.rs): exported, their BTF linkage stays
        // global and the verifier checks each once.
        "-Clink-arg=--export=snsr_loop_path,snsr_loop_exec_selector,snsr_loop_net_binaries,snsr_loop_connect_selector,snsr_loop_loader_byte,snsr_loop_sys_binaries,snsr_loop_sys_selector,snsr_loop_sys_arg,snsr_loop_sys_lineage,snsr_loop_sys_return",
    ]
    .join("\x1f");
    let mut cmd = Command::new("/usr/bin/cargo");
    cmd.current_dir(root().join("sensor-ebpf"))
        .args([
            "build",
            "--release",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
        ])
        .env("RUSTC", "/usr/bin/rustc")
        .env("RUSTC_BOOTSTRAP", "1")
        .env("CARGO_ENCODED_RUSTFLAGS", flags)
        .env_remove("RUSTFLAGS")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("RUSTUP_TOOLCHAIN");
    run(&mut cmd)
}
