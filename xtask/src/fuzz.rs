//! Fuzzing: the cargo-fuzz targets in `fuzz/` (policy files, brain rules,
//! ring-buffer records, `sensor compact`'s input), each run for a bounded
//! time from its corpus in the repository. New inputs libFuzzer finds go
//! under `target/fuzz-corpus/` (the repository's corpus is read, not
//! written); a crash is a failed check, with its input saved by libFuzzer
//! under `fuzz/artifacts/`.
//!
//! No sanitizer (`-s none`): the stable toolchain has none, and the code
//! under test is safe Rust but for the decoder's bounds-checked reads, so
//! a panic or an abort is what the fuzzer finds.
use anyhow::{Context, Result};

use crate::{cargo, root, run, vmtest::Counts};

pub const TARGETS: &[&str] = &["policy", "brain_rule", "decode", "compact"];

/// Seconds each target runs in the test command.
pub const TEST_SECONDS: u64 = 30;

/// `cargo xtask fuzz [SECONDS]`.
pub fn main(args: &[String]) -> Result<()> {
    let seconds = match args.first() {
        Some(s) => s.parse().context("fuzz SECONDS")?,
        None => TEST_SECONDS,
    };
    let c = fuzz(seconds)?;
    if c.failed > 0 {
        anyhow::bail!("{} fuzz targets failed", c.failed);
    }
    Ok(())
}

/// Builds the targets once, then runs each for `seconds`.
pub fn fuzz(seconds: u64) -> Result<Counts> {
    if !has_cargo_fuzz() {
        run(cargo().args(["install", "cargo-fuzz", "--locked"]))?;
    }
    let dir = root().join("fuzz");
    run(cargo()
        .current_dir(&dir)
        .args(["fuzz", "build", "-s", "none"]))?;
    let mut c = Counts::default();
    for t in TARGETS {
        let found = root().join("target/fuzz-corpus").join(t);
        std::fs::create_dir_all(&found)?;
        let ok = cargo()
            .current_dir(&dir)
            .args(["fuzz", "run", "-s", "none", t])
            .arg(&found)
            .arg(dir.join("corpus").join(t))
            .arg("--")
            .arg(format!("-max_total_time={seconds}"))
            .status()
            .with_context(|| format!("running fuzz target {t}"))?
            .success();
        if ok {
            println!("fuzz {t}: {seconds} s, no crash");
            c.passed += 1;
        } else {
            eprintln!("xtask: FAIL fuzz {t}: a crash (its input is under fuzz/artifacts/{t}/)");
            c.failed += 1;
        }
    }
    Ok(c)
}

fn has_cargo_fuzz() -> bool {
    cargo()
        .args(["fuzz", "--version"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}
