//! Signals for the connect reflex on kernels whose cgroup programs have no
//! `bpf_send_signal` (6.12 and older in the kernel matrix): the deferred
//! and compat connect programs deny the connect and leave the signal in
//! `PENDING_SIGNALS`; this program, on the raw `sys_exit` tracepoint (a
//! bpf link, so it can be pinned on every kernel), for the syscalls that
//! reach those hooks (`connect`, `sendto`, `sendmsg`, `sendmmsg`), sends it to the same thread before it returns to user space, so the
//! process runs no further instruction, as with a signal sent from the hook
//! itself. A connect that no syscall made (io_uring) leaves its signal
//! pending until that thread's next such syscall.
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_send_signal},
    macros::raw_tracepoint,
    programs::RawTracePointContext,
};

use crate::kernel::read;
use crate::maps::PENDING_SIGNALS;

/// `pt_regs.orig_ax` on x86_64: the syscall number.
const ORIG_AX: u32 = 15 * 8;
/// x86_64 numbers of connect, sendto, sendmsg and sendmmsg.
const SYSCALLS: [u64; 4] = [42, 44, 46, 307];

/// `sys_exit(struct pt_regs *regs, long ret)`, for every syscall: the map
/// lookup is made only for the four that can leave a signal.
#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn snsr_signal_on_exit(ctx: RawTracePointContext) -> i32 {
    let regs: *const u8 = ctx.arg(0);
    let Ok(nr) = read::<u64>(regs, ORIG_AX) else {
        return 0;
    };
    if !SYSCALLS.contains(&nr) {
        return 0;
    }
    let id = bpf_get_current_pid_tgid();
    // SAFETY: plain u32 value.
    if let Some(sig) = unsafe { PENDING_SIGNALS.get(&id) }.copied() {
        let _ = PENDING_SIGNALS.remove(&id);
        // SAFETY: signals the current task, the one leaving the syscall.
        unsafe { bpf_send_signal(sig) };
    }
    0
}
