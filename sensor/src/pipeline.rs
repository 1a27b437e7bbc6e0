//! The event pipeline, one way: ring buffer record → decode → process cache →
//! Tetragon events (exec, exit, and one policy event per selector hit that
//! posts) → exporter. Kernel-facing code stays in `load`; this stage only sees
//! bytes.
use std::sync::Arc;

use sensor_common::ExitEvent;

use crate::decode::{decode, ExecRecord, Record};
use crate::export::event::{
    action_name, signal_name, Argument, BinprmArg, Envelope, Event, Process, ProcessExec,
    ProcessExit, ProcessKprobe, ProcessLsm, ProcessTracepoint,
};
use crate::export::Exporter;
use crate::metrics::Metrics;
use crate::policy::{HookPoint, PathArgType, SelectorMeta};
use crate::process::ProcessCache;

pub struct Pipeline {
    pub cache: ProcessCache,
    meta: Vec<SelectorMeta>,
    node: String,
    pub exporter: Exporter,
    pub metrics: Metrics,
}

fn event_kind(e: &Event) -> &'static str {
    match e {
        Event::ProcessExec(_) => "process_exec",
        Event::ProcessExit(_) => "process_exit",
        Event::ProcessKprobe(_) => "process_kprobe",
        Event::ProcessLsm(_) => "process_lsm",
        Event::ProcessTracepoint(_) => "process_tracepoint",
    }
}

impl Pipeline {
    pub fn new(
        cache: ProcessCache,
        meta: Vec<SelectorMeta>,
        node: String,
        exporter: Exporter,
    ) -> Self {
        Pipeline {
            cache,
            meta,
            node,
            exporter,
            metrics: Metrics::default(),
        }
    }

    fn emit(&mut self, event: Event, time: String) {
        self.metrics.event(event_kind(&event));
        let env = Envelope {
            event,
            node_name: self.node.clone(),
            time,
        };
        self.exporter.export(&env);
    }

    /// Handles one ring buffer record.
    pub fn handle(&mut self, bytes: &[u8]) {
        self.metrics.records += 1;
        match decode(bytes) {
            Ok(Record::Exec(r)) => self.exec(&r),
            Ok(Record::Fork(f)) => {
                self.cache.fork(&f);
            }
            Ok(Record::Exit(x)) => self.exit(&x),
            Err(e) => {
                self.metrics.decode_errors += 1;
                tracing::warn!(error = %e, "undecodable ring buffer record");
            }
        }
    }

    fn exec(&mut self, r: &ExecRecord) {
        let (process, parent) = self.cache.exec(r);
        let time = process.start_time.clone();
        let parent_owned = parent.as_deref().cloned();
        self.emit(
            Event::ProcessExec(ProcessExec {
                process: (*process).clone(),
                parent: parent_owned.clone(),
            }),
            time.clone(),
        );
        let hits = r.header.hits;
        for bit in (0..64).filter(|b| hits & (1u64 << b) != 0) {
            let Some(meta) = self.meta.get(bit).cloned() else {
                tracing::warn!(selector = bit, "hit on an unknown selector");
                continue;
            };
            if meta.actions.post {
                let ev = policy_event(&meta, &process, parent_owned.clone(), &r.path);
                self.emit(ev, time.clone());
            }
        }
    }

    fn exit(&mut self, x: &ExitEvent) {
        let Some((process, parent)) = self.cache.exit(x) else {
            return;
        };
        let sig = x.exit_code & 0x7f;
        let time = self.cache.rfc3339(x.ktime);
        let ev = ProcessExit {
            process: Arc::unwrap_or_clone(process),
            parent: parent.as_deref().cloned(),
            signal: if sig != 0 {
                signal_name(sig)
            } else {
                String::new()
            },
            status: (x.exit_code >> 8) & 0xff,
            time: time.clone(),
        };
        self.emit(Event::ProcessExit(ev), time);
    }
}

/// The Tetragon policy event for a selector hit on the exec of `path`.
fn policy_event(
    meta: &SelectorMeta,
    process: &Process,
    parent: Option<Process>,
    path: &str,
) -> Event {
    let args = match meta.path_arg {
        Some(PathArgType::LinuxBinprm) => {
            vec![Argument::LinuxBinprmArg(BinprmArg { path: path.into() })]
        }
        Some(PathArgType::String) => vec![Argument::StringArg(path.into())],
        None => Vec::new(),
    };
    let action = action_name(meta.actions.signal).to_string();
    let process = process.clone();
    let policy_name = meta.policy_name.clone();
    let (message, tags) = (meta.message.clone(), meta.tags.clone());
    match &meta.point {
        HookPoint::Kprobe { function } => Event::ProcessKprobe(ProcessKprobe {
            process,
            parent,
            function_name: function.clone(),
            args,
            action,
            policy_name,
            message,
            tags,
        }),
        HookPoint::Lsm { hook } => Event::ProcessLsm(ProcessLsm {
            process,
            parent,
            function_name: hook.clone(),
            policy_name,
            message,
            args,
            action,
            tags,
        }),
        HookPoint::Tracepoint { subsystem, event } => Event::ProcessTracepoint(ProcessTracepoint {
            process,
            parent,
            subsys: subsystem.clone(),
            event: event.clone(),
            args,
            policy_name,
            message,
            action,
            tags,
        }),
    }
}
