//! Kernel programs of `sensor`, one module per hook family:
//! `exec` (the exec event and the exec reflex), `lifecycle` (fork and exit),
//! `connect` (connects and sends, and the connect reflex), `quarantine` (the
//! node-local antibody).
//! `reflex` evaluates compiled policy selectors, `path` resolves kernel paths,
//! `kernel` reads struct fields at offsets the loader found in BTF, and `maps`
//! declares everything userspace shares with these programs.
#![no_std]
#![no_main]

mod connect;
mod exec;
mod kernel;
mod lifecycle;
mod maps;
mod path;
mod quarantine;
mod reflex;

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
