//! The event pipeline, one way: ring buffer record → decode → process cache →
//! brain → Tetragon events (exec, exit, and one policy event per selector
//! hit that posts, built by `export::build`; `hits` turns hits into those)
//! → exporter. Kernel-facing code stays in `load`; this stage only sees
//! bytes.
use std::sync::Arc;

use sensor_common::{net_ops, ConnectEvent, ExitEvent, PacketEvent};

use crate::antibody::Decision;
use crate::brain::{Brain, Observation, On};
use crate::decode::{decode, ExecRecord, ImaHash, Record};

mod hits;
mod rate;
use crate::enrich::Enricher;
use crate::export::ancestors::AncestorKinds;
use crate::export::build;
use crate::export::event::{
    signal_name, AlertEvent, Envelope, Event, Process, ProcessExec, ProcessExit,
};
use crate::export::Exporter;
use crate::metrics::Metrics;
use crate::policy::SelectorMeta;
use crate::process::ProcessCache;
use hits::{Subject, Table};

pub struct Pipeline {
    cache: ProcessCache,
    meta: Vec<SelectorMeta>,
    net_meta: Vec<SelectorMeta>,
    sys_meta: Vec<SelectorMeta>,
    node: String,
    enricher: Enricher,
    brain: Brain,
    /// Quarantines the brain decided while handling the current record.
    decisions: Vec<Decision>,
    exporter: Exporter,
    metrics: Metrics,
    telemetry: crate::metrics::Telemetry,
    ancestors: AncestorKinds,
    returns: crate::returns::Returns,
    rate: rate::Limiter,
}

impl Pipeline {
    /// A pipeline with no policies and no brain rules yet (see
    /// [`Pipeline::set_policies`]).
    pub fn new(cache: ProcessCache, node: String, enricher: Enricher, exporter: Exporter) -> Self {
        Pipeline {
            cache,
            meta: Vec::new(),
            net_meta: Vec::new(),
            sys_meta: Vec::new(),
            node,
            enricher,
            brain: Brain::new(Vec::new()),
            decisions: Vec::new(),
            exporter,
            metrics: Metrics::default(),
            telemetry: Default::default(),
            ancestors: AncestorKinds::default(),
            returns: Default::default(),
            rate: Default::default(),
        }
    }

    /// Where the pipeline's Prometheus counters go (a registry nobody
    /// scrapes until this is called).
    pub fn set_telemetry(&mut self, t: crate::metrics::Telemetry) {
        self.telemetry = t;
    }

    /// The process cache's size, capacity, evictions and, of those, live
    /// processes evicted.
    pub fn cache_stats(&self) -> (usize, usize, u64, u64) {
        (
            self.cache.len(),
            self.cache.capacity(),
            self.cache.evictions,
            self.cache.live_evictions,
        )
    }

    /// What the kernel's selector bits mean from now on, and the brain's
    /// rules. Records read after this are read under the new policies; the
    /// daemon drains the ring buffer first.
    pub fn set_policies(
        &mut self,
        compiled: &crate::policy::Compiled,
        rules: Vec<crate::brain::Rule>,
    ) {
        self.meta = compiled.meta.clone();
        self.net_meta = compiled.net_meta.clone();
        self.sys_meta = compiled.sys_meta.clone();
        self.brain = Brain::new(rules);
    }

    /// Which event kinds carry `ancestors` (`--enable-ancestors`).
    pub fn set_ancestors(&mut self, kinds: AncestorKinds) {
        self.ancestors = kinds;
    }

    /// Fills the event's `ancestors` from the cache, if its kind asks.
    fn add_ancestors(&self, event: &mut Event) {
        let k = self.ancestors;
        let wanted = match event {
            Event::ProcessExec(_) | Event::ProcessExit(_) => k.base,
            Event::ProcessKprobe(_) => k.kprobe,
            Event::ProcessTracepoint(_) => k.tracepoint,
            Event::ProcessLsm(_) => k.lsm,
            Event::SensorAlert(_) | Event::SensorQuarantine(_) => false,
        };
        if !wanted {
            return;
        }
        let Some(lineage) = event.process().map(|p| self.cache.ancestors(p)) else {
            return;
        };
        if let Some(a) = event.ancestors_mut() {
            *a = lineage.iter().map(|p| (**p).clone()).collect();
        }
    }

    fn emit(&mut self, mut event: Event, time: String) {
        self.add_ancestors(&mut event);
        self.metrics.event(event.kind());
        let env = Envelope {
            event,
            node_name: self.node.clone(),
            time,
        };
        let exporter = &mut self.exporter;
        self.enricher.push(env, &mut |e| exporter.export(e));
    }

    /// Hands on events that waited for their pod and may now have it.
    pub fn tick(&mut self) {
        let before = self.exporter.exported;
        let exporter = &mut self.exporter;
        self.enricher.flush(&mut |e| exporter.export(e));
        if self.exporter.exported != before {
            self.exporter.flush();
        }
    }

    /// Emits an event the daemon made (a quarantine outcome) now, and
    /// writes it out at once.
    pub fn announce(&mut self, event: Event) {
        let time = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true);
        self.emit(event, time);
        self.exporter.flush();
    }

    /// Writes out what the exporters buffered.
    pub fn flush(&mut self) {
        self.exporter.flush();
    }

    /// Whether the brain has a rule on `on` records.
    pub fn wants(&self, on: crate::brain::On) -> bool {
        self.brain.wants(on)
    }

    /// Whether every brain rule on `on` is about pods.
    pub fn pods_only(&self, on: crate::brain::On) -> bool {
        self.brain.pods_only(on)
    }

    /// Takes the kernel's lost-record total for `kind`; returns how much it
    /// grew since the last reading.
    pub fn lost(&mut self, kind: &'static str, total: u64) -> u64 {
        let before = self.metrics.lost.insert(kind, total).unwrap_or(0);
        total.saturating_sub(before)
    }

    /// Takes the kernel's suppressed totals by cgroup; returns, for each
    /// cgroup, how much its total grew since the last reading.
    pub fn suppressed(&mut self, totals: &[(u64, u64)]) -> Vec<(u64, u64)> {
        let seen = &mut self.metrics.suppressed;
        let grew = totals
            .iter()
            .filter_map(|&(id, n)| {
                // An entry the LRU dropped and made again starts from zero.
                let before = seen.get(&id).copied().filter(|b| *b <= n).unwrap_or(0);
                (n > before).then_some((id, n - before))
            })
            .collect();
        *seen = totals.iter().copied().collect();
        grew
    }

    /// Records of one cgroup not sent: a `sensor_alert` with the count and,
    /// through the cgroup, the pod (`rule` says why: `record-budget` for a
    /// pod over its budget, `ring-buffer-full`).
    pub fn announce_loss(&mut self, rule: &str, cgroup_id: u64, count: u64, why: &str) {
        let process = Process {
            cgroup_id,
            ..Default::default()
        };
        let alert = Event::SensorAlert(AlertEvent {
            rule: rule.to_string(),
            description: why.to_string(),
            process,
            parent: None,
            exec_ids: Vec::new(),
            killed: Vec::new(),
            count,
        });
        self.announce(alert);
    }

    /// A pod over its record budget (`count` records not sent since the
    /// last report), shown to the brain's `on: flood` rules: their alerts
    /// carry the count.
    pub fn flooding(&mut self, cgroup_id: u64, count: u64) {
        let process = Process {
            cgroup_id,
            ..Default::default()
        };
        let time = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true);
        self.think_counted(On::Flood, &process, None, &time, count);
        self.exporter.flush();
    }

    /// What each policy's selectors did so far.
    pub fn action_counters(&self, policy: &str) -> crate::metrics::ActionCounters {
        self.metrics
            .policies
            .get(policy)
            .copied()
            .unwrap_or_default()
    }

    /// Counters for the log line at stop.
    pub fn summary(&self) -> String {
        format!(
            "{} cache_misses={} without_pod={}",
            self.metrics, self.cache.misses, self.enricher.unresolved
        )
    }

    /// Handles one ring buffer record; returns the quarantines the brain
    /// decided on it, for the daemon to carry out at once.
    pub fn handle(&mut self, bytes: &[u8]) -> Vec<Decision> {
        self.handle_record(bytes);
        std::mem::take(&mut self.decisions)
    }

    fn handle_record(&mut self, bytes: &[u8]) {
        self.metrics.records += 1;
        self.telemetry.ringbuf_received.inc();
        match decode(bytes) {
            Ok(Record::Exec(r)) => self.exec(&r),
            Ok(Record::ExecDenied(r, ima)) => self.exec_denied(&r, ima.as_ref()),
            Ok(Record::Fork(f)) => {
                self.cache.fork(&f);
            }
            Ok(Record::Exit(x)) => self.exit(&x),
            Ok(Record::Connect(c)) => self.connect(&c),
            Ok(Record::Packet(p)) => self.packet(&p),
            Ok(Record::Syscall(c)) => self.syscall(c),
            Ok(Record::SyscallReturn(r)) => {
                if let Some(joined) = self.returns.join(&r) {
                    self.syscall(joined);
                }
            }
            Err(e) => {
                self.metrics.decode_errors += 1;
                self.telemetry.error("event_decode_failed");
                tracing::warn!(error = %e, "undecodable ring buffer record");
            }
        }
    }

    fn exec(&mut self, r: &ExecRecord) {
        // Before the cache takes the new image: the caller, which
        // Tetragon's exec-path kprobe and LSM events show (only for a
        // record with hits: most execs post nothing).
        let caller = (r.header.hits != 0)
            .then(|| self.cache.by_pid(r.header.pid))
            .flatten()
            .map(|c| {
                let parent = self.cache.parent_of(&c).as_deref().cloned();
                (c, parent)
            });
        let (process, parent) = self.cache.exec(r);
        let time = process.start_time.clone();
        let parent_owned = parent.as_deref().cloned();
        self.emit(
            Event::ProcessExec(ProcessExec {
                process: (*process).clone(),
                parent: parent_owned.clone(),
                ancestors: Vec::new(),
            }),
            time.clone(),
        );
        self.think(On::Exec, &process, None, &time);
        let subject = Subject {
            process: &process,
            parent: parent_owned,
            caller,
            ima: None,
        };
        self.post_hits(
            r.header.hits,
            Table::Exec,
            subject,
            &time,
            build::binary_arg(&r.path),
        );
    }

    /// An exec hit decided before the exec (Override refused it, or its
    /// event carries the binary's hash): the policy event shows the
    /// caller, and the binary it tried.
    fn exec_denied(&mut self, r: &ExecRecord, ima: Option<&ImaHash>) {
        let Some(process) = self.cache.by_pid(r.header.pid) else {
            self.miss();
            tracing::warn!(pid = r.header.pid, binary = %r.path, "exec refused for an unknown process");
            return;
        };
        let time = self.cache.rfc3339(r.header.ktime);
        let subject = Subject {
            ima,
            ..self.acting(&process)
        };
        self.post_hits(
            r.header.hits,
            Table::Exec,
            subject,
            &time,
            build::binary_arg(&r.path),
        );
    }

    /// A record whose process the cache does not know.
    fn miss(&mut self) {
        self.cache.misses += 1;
        self.telemetry
            .cache_misses
            .get_or_create(&crate::metrics::registry::Operation {
                operation: "get".into(),
            })
            .inc();
    }

    /// Shows an event to the brain, and acts on what it says.
    fn think(&mut self, on: On, process: &Process, policy: Option<(&str, &str)>, time: &str) {
        self.think_counted(on, process, policy, time, 0);
    }

    /// [`Self::think`], with the count the alerts carry.
    fn think_counted(
        &mut self,
        on: On,
        process: &Process,
        policy: Option<(&str, &str)>,
        time: &str,
        count: u64,
    ) {
        if !self.brain.wants(on) {
            return;
        }
        let pod = self.enricher.pod_of(process.cgroup_id);
        if pod.is_none() && self.brain.pods_only(on) {
            return;
        }
        let mut ancestors = Vec::new();
        let mut p = self.cache.parent_of(process);
        while let Some(a) = p {
            if ancestors.len() >= 16 {
                break;
            }
            p = self.cache.parent_of(&a);
            ancestors.push((*a).clone());
        }
        let o = Observation {
            on,
            process,
            pod: pod.as_ref(),
            ancestors: &ancestors,
            policy,
        };
        for v in self.brain.observe(&o, time) {
            self.telemetry
                .rule_matches
                .get_or_create(&crate::metrics::registry::RuleName { rule: v.rule })
                .inc();
            let killed = v.kill.map(|p| self.kill_tree(&p)).unwrap_or_default();
            if let Some(mut alert) = v.alert {
                if let Event::SensorAlert(a) = &mut alert {
                    a.killed = killed;
                    a.count = count;
                }
                self.emit(alert, time.to_string());
            }
            self.decisions.extend(v.decision);
        }
    }

    /// Kills `p` and everything it started (a brain rule's `kill`), the
    /// offender first so that it cannot start more; returns the exec ids
    /// killed. The tree holds only the processes the cache has as their
    /// pid's current one, so no pid reused by another process is signalled.
    fn kill_tree(&self, p: &Process) -> Vec<String> {
        let mut tree = self.cache.tree_of(p);
        tree.sort_by_key(|q| q.exec_id != p.exec_id);
        let protected = crate::policy::protect::Protected::of_this_node();
        let me = std::process::id();
        tree.into_iter()
            .filter(|q| {
                let spare = q.pid <= 1 || q.pid == me || protected.covers(&q.binary);
                if spare {
                    tracing::warn!(pid = q.pid, binary = %q.binary, "a kill spares a protected process");
                }
                !spare
            })
            .filter(|q| crate::antibody::procs::sigkill(q.pid))
            .map(|q| q.exec_id.to_string())
            .collect()
    }

    /// A network record (connect, send, listen, close): a connect is
    /// shown to the brain; every record gives policy events for the
    /// selectors that posted.
    fn connect(&mut self, c: &ConnectEvent) {
        let Some(process) = self.network_process(c) else {
            return;
        };
        let connect = net_ops::of(c.op) == net_ops::CONNECT;
        if connect && self.brain.wants(On::Connect) {
            let time = self.cache.rfc3339(c.ktime);
            self.think(On::Connect, &process, None, &time);
        }
        if c.hits == 0 {
            return;
        }
        let time = self.cache.rfc3339(c.ktime);
        let sock = build::sock_arg(c);
        let subject = self.acting(&process);
        self.post_hits(
            c.hits,
            Table::Net,
            subject,
            &time,
            build::connect_arg(&sock, c),
        );
    }

    /// A packet a packet hook matched: policy events for the selectors
    /// that posted, naming its socket's creator.
    fn packet(&mut self, p: &PacketEvent) {
        let c = &p.net;
        let process = self.network_process(c);
        if c.signal != 0 {
            self.signal_sender(process.as_deref(), c.signal);
        }
        let Some(process) = process else {
            return;
        };
        let time = self.cache.rfc3339(c.ktime);
        let (sock, skb) = build::packet_args(p);
        let subject = self.acting(&process);
        let args = build::packet_arg(&sock, &skb, p.direction);
        self.post_hits(c.hits, Table::Net, subject, &time, args);
    }

    /// The sender of a packet that a signalling selector dropped in the
    /// kernel, signalled here (a cgroup_skb program cannot signal); a
    /// protected binary, the daemon and init are spared, as by the
    /// brain's kills.
    fn signal_sender(&self, process: Option<&Process>, sig: u32) {
        let Some(p) = process else {
            self.telemetry.error("packet_sender_unknown");
            tracing::warn!(
                sig,
                "a packet was dropped, but its sender is not known: no one signalled"
            );
            return;
        };
        let protected = crate::policy::protect::Protected::of_this_node();
        if p.pid <= 1 || p.pid == std::process::id() || protected.covers(&p.binary) {
            tracing::warn!(pid = p.pid, binary = %p.binary, "a packet's signal spares a protected process");
            return;
        }
        crate::antibody::procs::signal(p.pid, sig as i32);
    }

    /// The process a network record names. Pid 0 has none: a TCP state
    /// change in softirq that interrupted the idle task, or a packet of a
    /// socket made before the sensor started (its creator is not known).
    /// Those hits are counted, not logged, because on a busy node they can
    /// be many.
    fn network_process(&mut self, c: &ConnectEvent) -> Option<Arc<Process>> {
        let process = self.cache.by_pid(c.pid);
        if process.is_none() && c.hits != 0 {
            self.miss();
            if c.pid != 0 {
                tracing::warn!(pid = c.pid, "network policy hit from an unknown process");
            }
        }
        process
    }

    fn exit(&mut self, x: &ExitEvent) {
        let Some((process, parent)) = self.cache.exit(x) else {
            return;
        };
        let sig = x.exit_code & 0x7f;
        let time = self.cache.rfc3339(x.ktime);
        if sig != 0 {
            let name = signal_name(sig);
            self.think(On::Exit, &process, Some((&name, "")), &time);
        }
        let ev = ProcessExit {
            process: Arc::unwrap_or_clone(process),
            parent: parent.as_deref().cloned(),
            ancestors: Vec::new(),
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
