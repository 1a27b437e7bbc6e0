//! The daemon's loop: records from the ring buffer through the pipeline,
//! the brain's decisions to the antibodies, the periodic reconciles, and
//! the signals that end it.
use std::time::Duration;

use aya::maps::{MapData, RingBuf};
use tokio::io::unix::AsyncFd;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc::UnboundedReceiver;

use crate::antibody::{Antibodies, LabelOutcome};
use crate::load::Kernel;
use crate::pipeline::Pipeline;
use crate::reconcile::resources::{ResourceEvent, ResourceOutcome};
use crate::scopes::PodScopes;

/// Longest a routine record waits in the ring buffer.
const DRAIN_INTERVAL: Duration = Duration::from_millis(20);

/// Everything the loop drives.
pub struct Stages {
    pub pipeline: Pipeline,
    pub antibodies: Antibodies,
    pub scopes: Option<PodScopes>,
    pub outcomes: UnboundedReceiver<LabelOutcome>,
    pub policies: super::Policies,
    pub enforcer: super::enforce::Enforcer,
    /// Policy calls from the control API.
    pub calls: tokio::sync::mpsc::Receiver<crate::control::Request>,
    /// TracingPolicy resources, and where their outcomes go.
    pub resources: Option<UnboundedReceiver<ResourceEvent>>,
    pub resource_outcomes: Option<tokio::sync::mpsc::UnboundedSender<ResourceOutcome>>,
    pub telemetry: crate::metrics::Telemetry,
    pub health: crate::health::Health,
}

/// The next resource event, or never when there is no Kubernetes API.
async fn resource_event(
    rx: &mut Option<UnboundedReceiver<ResourceEvent>>,
) -> Option<ResourceEvent> {
    match rx.as_mut() {
        Some(r) => r.recv().await,
        None => std::future::pending().await,
    }
}

/// How long the policy directory must be quiet before it is read again: an
/// editor's save or a ConfigMap update is several events.
const DIR_SETTLE: Duration = Duration::from_millis(30);

/// Waits for a change of the policy directory, forever when there is none.
async fn dir_changed(p: &mut super::Policies) {
    match p.dir.as_mut() {
        Some(d) => {
            if let Err(e) = d.changed().await {
                tracing::error!(error = %e, "watching the policy directory; it is no longer watched");
                p.dir = None;
            }
        }
        None => std::future::pending().await,
    }
}

async fn at(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Puts a changed policy set in force, after reading (a bounded number of)
/// the records written under the old one.
fn enforce(
    kernel: &mut Kernel,
    fd: &mut AsyncFd<RingBuf<MapData>>,
    s: &mut Stages,
    active: &crate::reconcile::Active,
) {
    // Bounded, like every drain: under a flood a few records written just
    // before the switch are read under the new policies.
    for _ in 0..16 {
        if !drain(fd.get_mut(), s, kernel) {
            break;
        }
    }
    let r = kernel
        .apply(&active.compiled, &s.enforcer.scope)
        .map_err(anyhow::Error::from)
        .and_then(|()| {
            s.enforcer.enforce(
                kernel,
                &mut s.pipeline,
                &mut s.scopes,
                active,
                super::enforce::Tables::Stale,
            )
        });
    match r {
        Ok(()) => tracing::info!(
            exec_selectors = active.compiled.selectors.len(),
            connect_selectors = active.compiled.net_selectors.len(),
            rules = active.rules.len(),
            "policies changed: in force"
        ),
        Err(e) => {
            s.telemetry.error("policy_apply_failed");
            tracing::error!(error = %e, "putting changed policies in force")
        }
    }
}

/// SIGTERM and Ctrl-C, caught from before the daemon says it is ready.
pub struct Stop {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Stop {
    pub fn catch() -> std::io::Result<Stop> {
        Ok(Stop {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }
}

/// Runs until SIGTERM or Ctrl-C, then drains what the kernel wrote before.
pub async fn run(
    kernel: &mut Kernel,
    fd: &mut AsyncFd<RingBuf<MapData>>,
    s: &mut Stages,
    stop: &mut Stop,
) -> anyhow::Result<()> {
    let mut lost_tick = tokio::time::interval(Duration::from_secs(2));
    // The kernel wakes us only for policy hits and a filling buffer; routine
    // records are drained on this tick.
    let mut drain_tick = tokio::time::interval(DRAIN_INTERVAL);
    let mut reread_at = None;
    let mut observer = super::observe::Observer::new(s.telemetry.clone());
    // The first scrape sees the gauges, not zeros.
    observer.refresh(kernel, s);
    // More records were waiting when the last batch ended.
    let mut backlog = false;
    loop {
        tokio::select! {
            // Yields first: the API server, the health and metrics servers
            // are tasks on this thread, and a flood that always leaves a
            // backlog would otherwise never let them run.
            _ = tokio::task::yield_now(), if backlog => {
                backlog = drain(fd.get_mut(), s, kernel);
            }
            _ = dir_changed(&mut s.policies) => {
                reread_at = Some(tokio::time::Instant::now() + DIR_SETTLE);
            }
            Some(req) = s.calls.recv() => {
                let pipeline = &s.pipeline;
                let (reply, active) = crate::control::handle(
                    &mut s.policies.set,
                    &s.policies.vars,
                    req.call,
                    &|name| pipeline.action_counters(name),
                );
                if let Some(active) = active {
                    enforce(kernel, fd, s, &active);
                }
                // The change is in the kernel before the caller hears of it.
                let _ = req.reply.send(reply);
            }
            event = resource_event(&mut s.resources) => match event {
                Some(ResourceEvent::Change(change)) => {
                    let (active, outcome) = crate::reconcile::resources::take(
                        &mut s.policies.set,
                        &s.policies.vars,
                        change,
                    );
                    if let Some(active) = active {
                        enforce(kernel, fd, s, &active);
                    }
                    if let (Some(o), Some(tx)) = (outcome, &s.resource_outcomes) {
                        let _ = tx.send(o);
                    }
                }
                Some(ResourceEvent::Synced) => {}
                // The Kubernetes thread is gone.
                None => s.resources = None,
            },
            _ = at(reread_at) => {
                reread_at = None;
                let p = &mut s.policies;
                if let Some(active) = p.dir.as_mut().and_then(|d| d.sync(&mut p.set, &p.vars)) {
                    enforce(kernel, fd, s, &active);
                }
            }
            guard = fd.readable_mut() => {
                let mut guard = guard?;
                backlog = drain(guard.get_inner_mut(), s, kernel);
                guard.clear_ready();
            }
            _ = drain_tick.tick() => {
                s.health.beat();
                backlog = drain(fd.get_mut(), s, kernel);
                if let Err(e) = kernel.settle(false) {
                    tracing::error!(error = %e, "emptying the policy bank switched away from");
                }
                s.pipeline.tick();
                if let Some(scopes) = s.scopes.as_mut() {
                    if let Err(e) = scopes.reconcile(kernel) {
                        tracing::error!(error = %e, "updating pod scopes");
                    }
                }
                for e in s.antibodies.reconcile(kernel) {
                    s.pipeline.announce(e);
                }
            }
            Some(o) = s.outcomes.recv() => {
                let result = match (&o.error, o.retrying) {
                    (None, _) => "ok",
                    (Some(_), true) => "retrying",
                    (Some(_), false) => "failed",
                };
                s.telemetry
                    .label_patches
                    .get_or_create(&crate::metrics::registry::Outcome { result: result.into() })
                    .inc();
                let e = s.antibodies.labelled(o);
                s.pipeline.announce(e);
            }
            _ = lost_tick.tick() => {
                report_lost(kernel, s);
                observer.refresh(kernel, s);
            }
            _ = stop.term.recv() => break,
            _ = stop.int.recv() => break,
        }
    }
    // Drain what the kernel wrote before the signal (a bounded amount, so
    // that a flood cannot hold the daemon up), and what waits for pods.
    for _ in 0..64 {
        if !drain(fd.get_mut(), s, kernel) {
            break;
        }
    }
    s.pipeline.tick();
    s.pipeline.flush();
    report_lost(kernel, s);
    Ok(())
}

/// Moves the records the ring buffer holds through the pipeline, up to
/// [`BATCH`]; returns whether more may be waiting. A quarantine is carried
/// out as soon as its record is read, before the rest of the batch and
/// before anything is written out.
fn drain(rb: &mut RingBuf<MapData>, s: &mut Stages, kernel: &mut Kernel) -> bool {
    let mut n = 0;
    while n < BATCH {
        let Some(item) = rb.next() else {
            break;
        };
        let decisions = s.pipeline.handle(&item);
        drop(item);
        for d in decisions {
            let at = std::time::Instant::now();
            let events = s.antibodies.decide(kernel, d);
            s.telemetry
                .decision_seconds
                .observe(at.elapsed().as_secs_f64());
            for e in events {
                s.pipeline.announce(e);
            }
        }
        n += 1;
    }
    if n > 0 {
        s.pipeline.flush();
    }
    n == BATCH
}

/// Records read before the loop looks at its other work (API calls,
/// policy changes, signals): a flood of records must not starve them.
const BATCH: usize = 1024;

/// Reads the kernel's lost-record counters, counts what grew, and warns.
fn report_lost(kernel: &Kernel, s: &mut Stages) {
    use crate::metrics::registry::{msg_op, MsgOp, MsgOpError};
    match kernel.lost() {
        Ok(counts) => {
            for (kind, n) in counts {
                let grew = s.pipeline.lost(kind, n);
                if grew > 0 {
                    let t = &s.telemetry;
                    let op = msg_op(kind).to_string();
                    t.missed
                        .get_or_create(&MsgOp { msg_op: op.clone() })
                        .inc_by(grew);
                    // The ring buffer had no room: Tetragon's ENOSPC.
                    let full = MsgOpError {
                        msg_op: op,
                        error: "ENOSPC".into(),
                    };
                    t.bpf_missed.get_or_create(&full).inc_by(grew);
                    t.ringbuf_lost.inc_by(grew);
                    tracing::warn!(
                        kind,
                        lost = grew,
                        total = n,
                        "ring buffer full: records lost"
                    );
                    s.pipeline.announce_loss(
                        "ring-buffer-full",
                        0,
                        grew,
                        &format!("{kind} records lost: the ring buffer was full"),
                    );
                }
            }
        }
        Err(e) => {
            s.telemetry.error("map_read_failed");
            tracing::warn!(error = %e, "reading lost counters")
        }
    }
    match kernel.refused_states() {
        Ok(n) => {
            let grew = s.pipeline.lost("process_state", n);
            if grew > 0 {
                // A refused state is a process whose matchBinaries or
                // followChildren selectors will not hold: said out loud.
                s.telemetry.errors_by("process_state_map_full", grew);
                tracing::warn!(refused = grew, total = n, "kernel process map full");
                s.pipeline.announce_loss(
                    "process-state-full",
                    0,
                    grew,
                    "process states refused: the kernel's process map was full",
                );
            }
        }
        Err(e) => tracing::warn!(error = %e, "reading refused process states"),
    }
    match kernel.suppressed() {
        Ok(totals) => {
            for (cgroup, grew) in s.pipeline.suppressed(&totals) {
                s.telemetry.records_suppressed.inc_by(grew);
                s.pipeline.announce_loss(
                    "record-budget",
                    cgroup,
                    grew,
                    "connect and send records over this pod's budget, not sent",
                );
                s.pipeline.flooding(cgroup, grew);
            }
        }
        Err(e) => {
            s.telemetry.error("map_read_failed");
            tracing::warn!(error = %e, "reading record budgets")
        }
    }
}
