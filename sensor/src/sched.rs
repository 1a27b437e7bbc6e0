//! The daemon's place in the CPU scheduler. A quarantine takes effect when
//! the daemon writes the kernel map, so the wakeup for a pod's record must not
//! queue behind the very workload it judges: on a busy node that wait, not
//! the daemon's own work, was the tail of the time to isolate a pod (4 ms at
//! p99 on two busy cores).
//!
//! Since Linux 6.12 a task of the normal class may ask for a shorter slice
//! (`sched_attr.sched_runtime`). A waking task with a shorter slice gets an
//! earlier deadline, so it usually preempts the running one rather than
//! waiting for that one's slice (or the next tick) to end. The daemon's share
//! of the CPU stays what it was; only how soon it runs after a wakeup
//! changes. Kernels before 6.12 ignore the request, which is reported.
use std::time::Duration;

/// The shortest slice the kernel accepts: the daemon runs in short bursts.
pub const SLICE: Duration = Duration::from_micros(100);

/// What became of the request.
#[derive(Debug, PartialEq, Eq)]
pub enum Slice {
    /// The kernel runs this thread with this slice.
    Granted(Duration),
    /// The kernel took the request but does not know custom slices.
    Unsupported,
}

/// Asks for `slice` for the calling thread, keeping its nice value; zero
/// asks for the kernel's default slice again.
pub fn request(slice: Duration) -> std::io::Result<Slice> {
    // SAFETY: getpriority has no memory arguments; -1 is also a valid nice
    // value, so errno tells failure apart.
    let nice = unsafe {
        *libc::__errno_location() = 0;
        let n = libc::getpriority(libc::PRIO_PROCESS, 0);
        if *libc::__errno_location() != 0 {
            return Err(std::io::Error::last_os_error());
        }
        n
    };
    let mut attr = empty_attr();
    attr.sched_policy = libc::SCHED_OTHER as u32;
    attr.sched_nice = nice;
    attr.sched_runtime = slice.as_nanos() as u64;
    // SAFETY: a sched_attr whose size field says how much the kernel reads.
    let r = unsafe { libc::syscall(libc::SYS_sched_setattr, 0, &attr, 0) };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut back = empty_attr();
    // SAFETY: as above; the kernel writes at most `size` bytes.
    let r = unsafe {
        libc::syscall(
            libc::SYS_sched_getattr,
            0,
            &mut back,
            std::mem::size_of::<libc::sched_attr>() as u32,
            0,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // Kernels with custom slices report the fair slice in sched_runtime.
    Ok(match back.sched_runtime {
        0 => Slice::Unsupported,
        ns => Slice::Granted(Duration::from_nanos(ns)),
    })
}

fn empty_attr() -> libc::sched_attr {
    libc::sched_attr {
        size: std::mem::size_of::<libc::sched_attr>() as u32,
        sched_policy: 0,
        sched_flags: 0,
        sched_nice: 0,
        sched_priority: 0,
        sched_runtime: 0,
        sched_deadline: 0,
        sched_period: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_slice_is_granted_or_reported_unsupported() {
        // A thread of its own, so that the test harness keeps its slice.
        let got = std::thread::spawn(|| request(SLICE))
            .join()
            .expect("thread");
        match got {
            Ok(Slice::Granted(d)) => assert_eq!(d, SLICE),
            Ok(Slice::Unsupported) => eprintln!("SKIP: this kernel has no custom slices"),
            Err(e) => panic!("sched_setattr: {e}"),
        }
    }
}
