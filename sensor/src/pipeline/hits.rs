//! Policy events from selector hits: which table a record's hit bits
//! index, whom the events are about, and the syscall records (held for
//! their return where their hooks wait for it).
use std::sync::Arc;

use super::Pipeline;
use crate::brain::On;
use crate::decode::{ImaHash, SyscallRecord};
use crate::export::build;
use crate::export::event::{Argument, Event, Process};
use crate::policy::{EventArg, HookPoint, ReturnArg};

/// Whom a record's policy events are about: the process, and for an exec
/// the caller too (the image before it, with its parent), which the exec
/// path's kprobe and LSM events show, as Tetragon's do: those hooks run
/// before the new image replaces it. The brain reads the process.
pub(super) struct Subject<'a> {
    pub process: &'a Process,
    pub parent: Option<Process>,
    pub caller: Option<(Arc<Process>, Option<Process>)>,
    /// The binary's IMA hash, for the selectors that asked for it.
    pub ima: Option<&'a ImaHash>,
}

/// Which selector table a record's hit bits index.
#[derive(Debug, Clone, Copy)]
pub(super) enum Table {
    Exec,
    Net,
    /// Of the syscall with this number, and its return value where the
    /// record waited for it.
    Sys {
        nr: u32,
        ret: Option<u64>,
    },
}

impl Pipeline {
    /// An event's `ima_hash`: none, counted and logged, when IMA could not
    /// hash the binary or the record came unhashed (the kernel's map of
    /// execs waiting for their hash was full).
    fn ima_text(&self, ima: Option<&ImaHash>) -> Option<String> {
        match ima {
            Some(ImaHash::Digest(text)) => Some(text.clone()),
            Some(ImaHash::Failed(code)) => {
                self.telemetry.error("ima_hash_failed");
                tracing::warn!(code, "IMA gave no hash for a binary (a negative errno, or an algorithm not known here)");
                None
            }
            None => {
                self.telemetry.error("ima_hash_failed");
                tracing::warn!(
                    "an exec came unhashed: too many execs waited for their hash at once"
                );
                None
            }
        }
    }

    /// The subject of a hit whose process is the one that acted, with
    /// its parent from the cache.
    pub(super) fn acting<'a>(&self, process: &'a Process) -> Subject<'a> {
        Subject {
            process,
            parent: self.cache.parent_of(process).as_deref().cloned(),
            caller: None,
            ima: None,
        }
    }

    /// A syscall record (or one joined with its return): events for the
    /// hits that do not wait for the return; the record is held for those
    /// that do.
    pub(super) fn syscall(&mut self, mut r: SyscallRecord) {
        if r.ret.is_none() && r.header.returning != 0 {
            let now = r.header.hits & !r.header.returning;
            self.returns.hold(r.clone());
            r.header.hits = now;
            if now == 0 {
                return;
            }
        }
        let r = &r;
        let c = &r.header;
        let Some(process) = self.cache.by_pid(c.pid) else {
            self.miss();
            tracing::warn!(
                pid = c.pid,
                nr = c.nr,
                "syscall policy hit from an unknown process"
            );
            return;
        };
        let time = self.cache.rfc3339(c.ktime);
        let subject = self.acting(&process);
        self.post_hits(
            c.hits,
            Table::Sys {
                nr: c.nr,
                ret: r.ret,
            },
            subject,
            &time,
            build::syscall_arg(r),
        );
    }

    /// One policy event for each hit selector that posts.
    pub(super) fn post_hits(
        &mut self,
        hits: u64,
        table: Table,
        subject: Subject,
        time: &str,
        arg: impl Fn(EventArg) -> Option<Argument>,
    ) {
        let process = subject.process;
        for bit in (0..64).filter(|b| hits & (1u64 << b) != 0) {
            let metas = match table {
                Table::Exec => &self.meta,
                Table::Net => &self.net_meta,
                Table::Sys { .. } => &self.sys_meta,
            };
            let Some(mut meta) = metas.get(bit).cloned() else {
                tracing::warn!(selector = bit, ?table, "hit on an unknown selector");
                continue;
            };
            if let (Table::Sys { nr, .. }, HookPoint::Kprobe { function }) =
                (&table, &mut meta.point)
            {
                // A kprobe on a list: the event names the syscall.
                if function == crate::policy::syscalls::LIST_CALL {
                    *function = crate::policy::syscalls::function_name(*nr).unwrap_or_default();
                }
            }
            let action = meta.actions.name();
            self.metrics.policy_hit(
                &meta.policy_name,
                meta.actions.post,
                meta.actions.signal.is_some(),
                meta.actions.errno.is_some(),
                meta.monitor,
            );
            if meta.actions.post {
                let args: Vec<Argument> = meta.args.iter().filter_map(|a| arg(*a)).collect();
                if let Some(limit) = &meta.actions.rate_limit {
                    let selector = format!("{}/{table:?}/{bit}", meta.policy_name);
                    let now = std::time::Instant::now();
                    if !self.rate.admit(selector, process.pid, &args, limit, now) {
                        self.think(On::Policy, process, Some((action, &meta.policy_name)), time);
                        continue;
                    }
                }
                let (shown, parent) = match (&meta.point, &subject.caller) {
                    (HookPoint::Kprobe { .. } | HookPoint::Lsm { .. }, Some((c, p))) => {
                        (&**c, p.clone())
                    }
                    _ => (process, subject.parent.clone()),
                };
                let mut ev = build::policy_event(&meta, shown, parent, args);
                if let (Table::Sys { ret: Some(v), .. }, Some(ty), Event::ProcessKprobe(k)) =
                    (&table, meta.return_type, &mut ev)
                {
                    k.return_ = Some(build::int_argument(*v, ty));
                }
                if let (ReturnArg::Sock, Event::ProcessKprobe(k)) = (meta.return_arg, &mut ev) {
                    k.return_ = arg(EventArg::ReturnSock);
                }
                if let (true, Event::ProcessLsm(l)) = (meta.actions.ima_hash, &mut ev) {
                    l.ima_hash = self.ima_text(subject.ima);
                }
                self.emit(ev, time.to_string());
            }
            self.think(On::Policy, process, Some((action, &meta.policy_name)), time);
        }
    }
}
