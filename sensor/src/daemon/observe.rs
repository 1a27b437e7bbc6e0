//! The gauges the loop refreshes on its slow tick: what the kernel, the
//! process cache, the antibodies and the policy set hold now, and the
//! programs' run counters. Counters the stages bump as things happen are
//! not here (see `metrics::registry`).
use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::load::Kernel;
use crate::metrics::registry::{MapName, ProgramLabels, Refusal, State};
use crate::metrics::Telemetry;

/// Counting map entries walks every key; this often is plenty for a
/// gauge that moves with policy changes and pod churn.
const MAP_EVERY: Duration = Duration::from_secs(10);

pub struct Observer {
    t: Telemetry,
    /// Per program: runs and run time at the last reading.
    programs: HashMap<String, (u64, Duration)>,
    evictions: u64,
    live_evictions: u64,
    /// The kernel's quarantine refusals at the last reading, per kind.
    refusals: HashMap<&'static str, u64>,
    maps_at: Option<Instant>,
}

impl Observer {
    pub fn new(t: Telemetry) -> Observer {
        Observer {
            t,
            programs: HashMap::new(),
            evictions: 0,
            live_evictions: 0,
            refusals: HashMap::new(),
            maps_at: None,
        }
    }

    pub fn refresh(&mut self, kernel: &Kernel, s: &super::serve::Stages) {
        let t = &self.t;
        let (size, capacity, evictions, live) = s.pipeline.cache_stats();
        t.cache_size.set(size as i64);
        t.cache_capacity.set(capacity as i64);
        t.cache_evictions
            .inc_by(evictions.saturating_sub(self.evictions));
        self.evictions = evictions;
        if live > self.live_evictions {
            // Their next events come without a lineage: worth a word.
            tracing::warn!(
                evicted = live - self.live_evictions,
                total = live,
                capacity,
                "process cache full of live processes: least recently used evicted (--process-cache-size)"
            );
        }
        self.live_evictions = live;

        let (pending, isolated) = s.antibodies.counts();
        t.pending_labels.set(pending as i64);
        t.quarantined_cgroups.set(isolated as i64);

        match kernel.refusals() {
            Ok(now) => {
                for (kind, n) in now {
                    let before = self.refusals.insert(kind, n).unwrap_or(0);
                    // Lower than before: a new set (an upgrade) counts
                    // from zero again.
                    let grew = if n < before { n } else { n - before };
                    t.quarantine_refusals
                        .get_or_create(&Refusal { kind: kind.into() })
                        .inc_by(grew);
                }
            }
            Err(e) => tracing::debug!(error = %e, "reading quarantine refusals"),
        }

        let set = &s.policies.set;
        let (mut enabled, mut disabled) = (0, 0);
        for (_, p) in set.policies() {
            if set.is_enabled(&p.name) {
                enabled += 1;
            } else {
                disabled += 1;
            }
        }
        // Tetragon's four states; `error` (a policy that failed after it
        // loaded) cannot happen here: a set is taken whole or not at all.
        let load_error = set.refused_count() as i64;
        for (state, n) in [
            ("enabled", enabled),
            ("disabled", disabled),
            ("load_error", load_error),
            ("error", 0),
        ] {
            t.policies_loaded
                .get_or_create(&State {
                    state: state.into(),
                })
                .set(n);
        }

        // The kernel counts while run-time statistics are on (the sysctl
        // kernel.bpf_stats_enabled, or --program-stats); zero otherwise.
        for (name, runs, time) in kernel.program_stats() {
            let (runs0, time0) = self.programs.get(&name).copied().unwrap_or_default();
            // A count lower than before is a program replaced by an
            // upgrade: it counts from zero again.
            let (dr, dt) = if runs < runs0 {
                (runs, time)
            } else {
                (runs - runs0, time.saturating_sub(time0))
            };
            let labels = ProgramLabels {
                policy: String::new(),
                policy_namespace: String::new(),
                sensor: "sensor".into(),
                attach: name.clone(),
                section: name.clone(),
            };
            t.program_runs.get_or_create(&labels).inc_by(dr);
            t.program_seconds
                .get_or_create(&labels)
                .inc_by(dt.as_secs_f64());
            self.programs.insert(name, (runs, time));
        }

        if self.maps_at.is_none_or(|at| at.elapsed() >= MAP_EVERY) {
            self.maps_at = Some(Instant::now());
            for (map, entries, cap) in kernel.map_usage() {
                let l = MapName { map: map.into() };
                t.map_entries.get_or_create(&l).set(entries as i64);
                t.map_capacity.get_or_create(&l).set(cap as i64);
            }
        }
    }
}
