//! `sched_process_exec` (raw tracepoint): the exec event (binary path as the kernel
//! resolved it, arguments, cwd) and the exec reflex, which runs here because
//! the new image is in place but has not yet returned to user space.
use aya_ebpf::{
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_get_current_task, bpf_get_current_uid_gid, bpf_ktime_get_ns,
        generated::{bpf_probe_read_kernel, bpf_probe_read_user, bpf_ringbuf_output},
    },
    macros::raw_tracepoint,
    programs::RawTracePointContext,
};
use sensor_common::{
    exec_flags, kind, ns_kind, pod_wakeups, BinaryInfo, Creds, ExecEvent, UserNs, ARGS_MAX,
    NS_KINDS, PATH_MAX, POD_BIT,
};

use crate::kernel::{off, read, read_ptr};
use crate::maps::{count_lost, wakeup_flags, EVENTS, EXEC_DATA_CAP, EXEC_SCRATCH, PATH_SCRATCH};
use crate::{path, reflex};

const HEADER: usize = core::mem::size_of::<ExecEvent>();

// Raw tracepoints attach through a bpf link on every kernel (5.7 and
// later), so the attachment can be pinned and outlive the daemon; a classic
// tracepoint's perf event cannot be pinned before 5.15.
#[raw_tracepoint(tracepoint = "sched_process_exec")]
pub fn snsr_exec(ctx: RawTracePointContext) -> i32 {
    let _ = try_exec::<true>(ctx.arg(2));
    0
}

/// The same program for kernels without `bpf_loop` (see `looping`).
#[raw_tracepoint(tracepoint = "sched_process_exec")]
pub fn snsr_exec_compat(ctx: RawTracePointContext) -> i32 {
    let _ = try_exec::<false>(ctx.arg(2));
    0
}

#[inline(always)]
/// `bprm`: the tracepoint's `struct linux_binprm *`.
fn try_exec<const MODERN: bool>(bprm: *const u8) -> Result<(), i32> {
    let scratch = EXEC_SCRATCH.get_ptr_mut(0).ok_or(0)?;
    let pscratch = PATH_SCRATCH.get_ptr_mut(0).ok_or(0)?;
    // SAFETY: per-CPU scratch owned by this program run.
    let (rec, pbuf) = unsafe { (&mut *scratch, &mut *pscratch) };
    let task = unsafe { bpf_get_current_task() } as *const u8;
    let ev = &mut rec.event;
    fill_header(ev, kind::EXEC, task);
    let tgid = ev.pid;

    let cfg = crate::maps::config().copied().unwrap_or_default();
    ev.creds = if cfg.process_cred != 0 {
        read_creds(task)
    } else {
        Creds::default()
    };
    ev.ns = if cfg.process_ns != 0 {
        read_ns(task)
    } else {
        [0; NS_KINDS]
    };
    let scopes = if cfg.n_scopes != 0 {
        reflex::task_scopes::<MODERN>()
    } else {
        0
    };
    let v_in_pod = scopes & POD_BIT != 0;
    let data = rec.data.as_mut_ptr();
    let mm = read_ptr(task, off!(task_mm))?;

    ev.binary = read_ptr(mm, off!(mm_exe_file))
        .map(|f| binary_info(task, f, bprm))
        .unwrap_or_default();

    // The binary: mm->exe_file->f_path, resolved in the kernel.
    let mut plen = 0usize;
    // What the reflex judges: the binary's path in `pbuf`, once known.
    let mut judged = None;
    match read_ptr(mm, off!(mm_exe_file))
        .and_then(|f| path::resolve::<MODERN>(f.wrapping_add(off!(file_f_path) as usize), pbuf))
    {
        Ok(r) => {
            plen = r.len() & (PATH_MAX - 1);
            if r.truncated {
                ev.flags |= exec_flags::PATH_TRUNCATED;
            }
            unsafe { copy_from(data, 0, &pbuf.buf, r.start, plen) };
            judged = Some((r.start, r.truncated));
        }
        Err(_) => ev.flags |= exec_flags::PATH_ERROR,
    }

    // Arguments: argv as the new image's stack holds them, NUL separated.
    let mut alen = 0usize;
    let arg_start = read::<u64>(mm, off!(mm_arg_start)).unwrap_or(0);
    let arg_end = read::<u64>(mm, off!(mm_arg_end)).unwrap_or(0);
    if arg_end > arg_start {
        let mut want = (arg_end - arg_start) as usize;
        if want > ARGS_MAX - 1 {
            want = ARGS_MAX - 1;
            ev.flags |= exec_flags::ARGS_TRUNCATED;
        }
        let want = want & (ARGS_MAX - 1);
        // SAFETY: plen < 4096 and want < 4096 stay inside data (16 KiB).
        let r = unsafe {
            bpf_probe_read_user(
                data.add(plen & (PATH_MAX - 1)).cast(),
                want as u32,
                arg_start as *const _,
            )
        };
        if r == 0 {
            alen = want;
        } else {
            ev.flags |= exec_flags::ARGS_ERROR;
        }
    }

    // The reflex, on the binary, then (if it did not kill) on the program a
    // dynamic loader runs, read from its arguments as the loader reads
    // them: a policy on the loader itself still holds.
    if let Some((start, truncated)) = judged {
        let v = reflex::on_exec::<MODERN>(&cfg, tgid, pbuf, start, truncated, scopes);
        ev.hits = v.hits;
        ev.signal = v.signal;
        if v.signal == 0 && cfg.n_selectors != 0 && alen != 0 && crate::loader::is_loader(mm) {
            let program = crate::loader::program::<MODERN>(plen & (PATH_MAX - 1), alen, pbuf);
            if let Some((start, truncated)) = program {
                let v = reflex::on_exec::<MODERN>(&cfg, tgid, pbuf, start, truncated, scopes);
                ev.hits |= v.hits;
                ev.signal = v.signal;
            }
        }
    }

    // The working directory: task->fs->pwd.
    let mut clen = 0usize;
    let cwd = read_ptr(task, off!(task_fs))
        .and_then(|fs| path::resolve::<MODERN>(fs.wrapping_add(off!(fs_pwd) as usize), pbuf));
    match cwd {
        Ok(r) => {
            clen = r.len() & (PATH_MAX - 1);
            if r.truncated {
                ev.flags |= exec_flags::CWD_TRUNCATED;
            }
            let at = (plen + alen) & (2 * PATH_MAX - 1);
            unsafe { copy_from(data, at, &pbuf.buf, r.start, clen) };
        }
        Err(_) => ev.flags |= exec_flags::CWD_ERROR,
    }
    ev.path_len = plen as u32;
    ev.args_len = alen as u32;
    ev.cwd_len = clen as u32;

    let size = (HEADER + plen + alen + clen) & (EXEC_DATA_CAP - 1);
    // SAFETY: size < the scratch record's size.
    let r = unsafe {
        bpf_ringbuf_output(
            (&raw const EVENTS).cast_mut().cast(),
            scratch.cast(),
            size as u64,
            wakeup_flags(ev.hits != 0 || (v_in_pod && cfg.pod_wakeups & pod_wakeups::EXEC != 0)),
        )
    };
    if r != 0 {
        count_lost(kind::EXEC);
    }
    Ok(())
}

/// Fills an exec record's header with the current task's identity; hits,
/// signal, flags and lengths start at zero.
#[inline(always)]
pub fn fill_header(ev: &mut ExecEvent, record: u32, task: *const u8) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    ev.kind = record;
    ev.pid = (pid_tgid >> 32) as u32;
    ev.tid = pid_tgid as u32;
    ev.uid = uid_gid as u32;
    ev.gid = (uid_gid >> 32) as u32;
    ev.ktime = unsafe { bpf_ktime_get_ns() };
    ev.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    ev.comm = bpf_get_current_comm().unwrap_or_default();
    ev.flags = 0;
    ev.hits = 0;
    ev.signal = 0;
    ev.path_len = 0;
    ev.args_len = 0;
    ev.cwd_len = 0;
    ev.creds = Creds::default();
    ev.ns = [0; NS_KINDS];
    ev.nspid = own_pid(task).map_or(0, |(nr, _)| nr);
    ev._pad = 0;
    ev.binary = BinaryInfo::default();
    ev.ppid = read_ptr(task, off!(task_real_parent))
        .and_then(|p| read::<u32>(p, off!(task_tgid)))
        .unwrap_or(0);
    let loginuid = off!(task_loginuid);
    ev.auid = if loginuid == 0 {
        AUID_UNSET
    } else {
        read::<u32>(task, loginuid).unwrap_or(AUID_UNSET)
    };
}

/// The current task's credentials (the new image's, at this point of the
/// exec).
#[inline(always)]
fn read_creds(task: *const u8) -> Creds {
    let at = off!(cred_uid);
    let Ok(cred) = read_ptr(task, off!(task_cred)) else {
        return Creds::default();
    };
    if at == 0 {
        return Creds::default();
    }
    Creds {
        ids: read::<[u32; 8]>(cred, at).unwrap_or_default(),
        securebits: read::<u32>(cred, off!(cred_securebits)).unwrap_or(0),
        valid: 1,
        cap_permitted: read::<u64>(cred, off!(cred_cap_permitted)).unwrap_or(0),
        cap_effective: read::<u64>(cred, off!(cred_cap_effective)).unwrap_or(0),
        cap_inheritable: read::<u64>(cred, off!(cred_cap_inheritable)).unwrap_or(0),
        user_ns: read_ptr(cred, off!(cred_user_ns))
            .map(|ns| UserNs {
                level: read::<u32>(ns, off!(user_ns_level)).unwrap_or(0),
                owner: read::<u32>(ns, off!(user_ns_owner)).unwrap_or(0),
                group: read::<u32>(ns, off!(user_ns_group)).unwrap_or(0),
                inum: read::<u32>(ns, off!(user_ns_common) + off!(ns_inum)).unwrap_or(0),
            })
            .unwrap_or_default(),
    }
}

/// The executed file's inode, the credentials the exec gave, and whether
/// the kernel judged the exec privileged (`bprm->per_clear`).
#[inline(always)]
fn binary_info(task: *const u8, file: *const u8, bprm: *const u8) -> BinaryInfo {
    let Ok(inode) = read_ptr(file, off!(file_f_inode)) else {
        return BinaryInfo::default();
    };
    let cred = read_ptr(task, off!(task_cred)).unwrap_or(core::ptr::null());
    let ids = off!(cred_uid);
    // euid and egid are the fifth and sixth of the eight ids.
    let id = |i: u32| {
        if ids == 0 {
            0
        } else {
            read::<u32>(cred, ids + 4 * i).unwrap_or(0)
        }
    };
    BinaryInfo {
        ino: read::<u64>(inode, off!(inode_i_ino)).unwrap_or(0),
        nlink: read::<u32>(inode, off!(inode_i_nlink)).unwrap_or(1),
        mode: read::<u16>(inode, off!(inode_i_mode)).unwrap_or(0) as u32,
        file_uid: read::<u32>(inode, off!(inode_i_uid)).unwrap_or(0),
        file_gid: read::<u32>(inode, off!(inode_i_gid)).unwrap_or(0),
        euid: id(4),
        egid: id(5),
        cap_permitted: read::<u64>(cred, off!(cred_cap_permitted)).unwrap_or(0),
        cap_ambient: read::<u64>(cred, off!(cred_cap_ambient)).unwrap_or(0),
        valid: (ids != 0) as u32,
        per_clear: read::<u32>(bprm, off!(binprm_per_clear)).unwrap_or(0),
    }
}

/// The task's PID in its own PID namespace, and that namespace
/// (`struct pid_namespace *`).
#[inline(always)]
fn own_pid(task: *const u8) -> Result<(u32, *const u8), i32> {
    let pid = read_ptr(task, off!(task_thread_pid))?;
    let level = read::<u32>(pid, off!(pid_level))? & 63;
    let upid = off!(pid_numbers) + level * off!(upid_size);
    Ok((
        read::<u32>(pid, upid)?,
        read_ptr(pid, upid + off!(upid_ns))?,
    ))
}

/// The inode numbers of `task`'s namespaces (0 where one
/// cannot be read or the kernel has none of that kind).
#[inline(always)]
pub fn read_ns(task: *const u8) -> [u32; NS_KINDS] {
    let mut out = [0u32; NS_KINDS];
    let inum = off!(ns_inum);
    let at = off!(nsproxy_ns);
    let common = off!(ns_common_at);
    if let Ok(nsproxy) = read_ptr(task, off!(task_nsproxy)) {
        for (i, slot) in ns_kind::FROM_NSPROXY.iter().enumerate() {
            if at[i] == 0 {
                continue;
            }
            if let Ok(ns) = read_ptr(nsproxy, at[i]) {
                out[*slot] = read::<u32>(ns, common[i] + inum).unwrap_or(0);
            }
        }
    }
    // The PID namespace the task is in (nsproxy's is its children's).
    if let Ok((_, ns)) = own_pid(task) {
        out[ns_kind::PID] = read::<u32>(ns, common[3] + inum).unwrap_or(0);
    }
    let user_ns = read_ptr(task, off!(task_cred)).and_then(|c| read_ptr(c, off!(cred_user_ns)));
    if let Ok(ns) = user_ns {
        out[ns_kind::USER] = read::<u32>(ns, off!(user_ns_common) + inum).unwrap_or(0);
    }
    out
}

/// audit's "no login uid" (`(uid_t)-1`), as Tetragon reports it.
const AUID_UNSET: u32 = u32::MAX;

/// Copies `len` bytes of a resolved path from `src[start..]` to `dst[at..]`.
///
/// # Safety
/// `at < 2 * PATH_MAX` and `len < PATH_MAX`, so the write stays in the record.
#[inline(always)]
pub unsafe fn copy_from(
    dst: *mut u8,
    at: usize,
    src: &[u8; PATH_MAX + 256],
    start: usize,
    len: usize,
) {
    unsafe {
        bpf_probe_read_kernel(
            dst.add(at).cast(),
            (len & (PATH_MAX - 1)) as u32,
            src.as_ptr().add(start & (PATH_MAX - 1)).cast(),
        );
    }
}
