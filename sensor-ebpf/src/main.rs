//! Kernel programs of `sensor`, one module per hook family:
//! `exec` (the exec event and the exec reflex), `lifecycle` (fork and exit),
//! `lsm` (Override on exec through BPF-LSM, where the kernel has it),
//! `connect` (connects and sends, and the connect reflex), `sock` (a TCP
//! socket's close, listen and sends), `signals` (a connect reflex's signal
//! on kernels whose cgroup programs cannot send one), `quarantine` (the
//! node-local antibody), `syscall` (policies on syscalls, on the raw
//! `sys_enter` tracepoint).
//! Shared pieces: `reflex` evaluates compiled exec selectors and `netsel`
//! network ones, `path` resolves kernel paths, `cgroups` walks the current
//! task's cgroups, `kernel` reads struct fields at offsets the loader found
//! in BTF, `looping` builds each looping program for old and new verifiers,
//! and `maps` declares everything userspace shares with these programs.
#![no_std]
#![no_main]

mod budget;
mod cgroups;
mod connect;
mod exec;
mod kernel;
mod lifecycle;
mod loader;
mod looping;
mod lsm;
mod maps;
mod netsel;
mod packet;
mod path;
mod quarantine;
mod reflex;
mod signals;
mod sock;
mod syscall;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // SAFETY: the programs avoid panicking operations; the verifier would reject
    // any path that reached here anyway.
    unsafe { core::hint::unreachable_unchecked() }
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
