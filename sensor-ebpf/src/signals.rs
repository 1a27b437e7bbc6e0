//! Signals for the connect reflex on kernels whose cgroup programs have no
//! `bpf_send_signal` (6.12 and older in the kernel matrix): the deferred
//! and compat connect programs deny the connect and leave the signal in
//! `PENDING_SIGNALS`; this program, on the exit tracepoints of the syscalls
//! that reach those hooks (`connect`, `sendto`, `sendmsg`, `sendmmsg`),
//! sends it to the same thread before it returns to user space, so the
//! process runs no further instruction, as with a signal sent from the hook
//! itself. A connect that no syscall made (io_uring) leaves its signal
//! pending until that thread's next such syscall.
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_send_signal},
    macros::tracepoint,
    programs::TracePointContext,
};

use crate::maps::PENDING_SIGNALS;

#[tracepoint]
pub fn snsr_signal_on_exit(_ctx: TracePointContext) -> u32 {
    let id = bpf_get_current_pid_tgid();
    // SAFETY: plain u32 value.
    if let Some(sig) = unsafe { PENDING_SIGNALS.get(&id) }.copied() {
        let _ = PENDING_SIGNALS.remove(&id);
        // SAFETY: signals the current task, the one leaving the syscall.
        unsafe { bpf_send_signal(sig) };
    }
    0
}
