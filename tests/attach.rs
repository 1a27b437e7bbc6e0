//! Attaching and detaching at syscall entry and exit while every CPU makes
//! syscalls. Each daemon does both at start and stop (the packet-socket
//! guard before 5.15 on `sys_enter`, the deferred signals on `sys_exit`),
//! and each first attach and last detach patches the kernel's code on the
//! syscall path (a static key; on 5.10 also a static call). The kernel
//! matrix's 5.10 guests were seen stuck exactly there, so this runs that
//! patching thousands of times in one place where a hang names its cause.
mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aya::programs::RawTracePoint;

/// The project's eBPF object, as the daemon embeds it.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sensor-ebpf.o"));

/// How long to attach and detach: each round patches the syscall path
/// twice per program, and daemons in one matrix run do it a few dozen times,
/// so even an emulated guest's few thousand rounds are a hundred runs' worth.
const BUDGET: Duration = Duration::from_secs(30);

#[test]
fn syscall_tracepoints_attach_and_detach_under_syscall_load() {
    if !common::can_run("syscall_tracepoints_attach_and_detach_under_syscall_load") {
        return;
    }
    let mut ebpf = aya::EbpfLoader::new()
        .load(OBJECT)
        .expect("loading the eBPF object's maps");
    for name in ["snsr_q_socket_raw", "snsr_signal_on_exit"] {
        let p: &mut RawTracePoint = ebpf
            .program_mut(name)
            .unwrap_or_else(|| panic!("{name} in the object"))
            .try_into()
            .expect("a raw tracepoint");
        p.load().unwrap_or_else(|e| panic!("loading {name}: {e}"));
    }
    // Every CPU busy in syscalls, so each patch meets CPUs on the site.
    let stop = Arc::new(AtomicBool::new(false));
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    let spinners: Vec<_> = (0..cpus)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut calls = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    // SAFETY: getppid has no arguments and no effects.
                    unsafe { libc::syscall(libc::SYS_getppid) };
                    calls += 1;
                }
                calls
            })
        })
        .collect();
    let started = Instant::now();
    let mut rounds = 0u64;
    while started.elapsed() < BUDGET {
        rounds += 1;
        let mut links = Vec::new();
        for (name, point) in [
            ("snsr_q_socket_raw", "sys_enter"),
            ("snsr_signal_on_exit", "sys_exit"),
        ] {
            let p: &mut RawTracePoint = ebpf
                .program_mut(name)
                .and_then(|p| p.try_into().ok())
                .expect("loaded above");
            let id = p
                .attach(point)
                .unwrap_or_else(|e| panic!("attaching {name}: {e}"));
            links.push((name, id));
        }
        for (name, id) in links {
            let p: &mut RawTracePoint = ebpf
                .program_mut(name)
                .and_then(|p| p.try_into().ok())
                .expect("loaded above");
            p.detach(id)
                .unwrap_or_else(|e| panic!("detaching {name}: {e}"));
        }
    }
    let took = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let calls: u64 = spinners
        .into_iter()
        .map(|s| s.join().expect("spinner"))
        .sum();
    eprintln!("{rounds} rounds in {took:?}, {calls} syscalls meanwhile");
    // The spinners must have run through the patching, or it proved nothing.
    assert!(
        calls > rounds,
        "only {calls} syscalls ran during {rounds} rounds"
    );
}
