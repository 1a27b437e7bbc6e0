//! The daemon's health, as the kubelet's probes ask for it: `/healthz`
//! says the loop is alive (it beat recently), `/readyz` says the sensor
//! does its job (programs attached, policies in the kernel, and in a
//! cluster the pod watcher synced). The loop and setup set it; the health
//! server reads it from its own task.
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::StatusCode;

/// A loop silent for this long is stuck: its ticks come every 20 ms, and
/// setup beats between its steps (the longest, waiting for the
/// Kubernetes API, gives up after 10 s).
pub const STALE: Duration = Duration::from_secs(15);

/// Whether the pod watcher matters, and where it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Watcher {
    /// No Kubernetes API: nothing to wait for.
    None = 0,
    Syncing = 1,
    Synced = 2,
}

#[derive(Clone)]
pub struct Health(Arc<State>);

pub struct State {
    start: Instant,
    /// Milliseconds since `start` at the last beat.
    beat: AtomicU64,
    attached: AtomicBool,
    policies: AtomicBool,
    watcher: AtomicU8,
}

impl Default for Health {
    fn default() -> Self {
        Health(Arc::new(State {
            start: Instant::now(),
            beat: AtomicU64::new(0),
            attached: AtomicBool::new(false),
            policies: AtomicBool::new(false),
            watcher: AtomicU8::new(Watcher::None as u8),
        }))
    }
}

impl Health {
    /// The loop (or setup) is alive now.
    pub fn beat(&self) {
        let ms = self.0.start.elapsed().as_millis() as u64;
        self.0.beat.store(ms, Ordering::Relaxed);
    }

    pub fn set_attached(&self, on: bool) {
        self.0.attached.store(on, Ordering::Relaxed);
    }

    pub fn set_policies(&self, on: bool) {
        self.0.policies.store(on, Ordering::Relaxed);
    }

    pub fn set_watcher(&self, w: Watcher) {
        self.0.watcher.store(w as u8, Ordering::Relaxed);
    }

    fn since_beat(&self) -> Duration {
        let beat = Duration::from_millis(self.0.beat.load(Ordering::Relaxed));
        self.0.start.elapsed().saturating_sub(beat)
    }

    /// `/healthz`: 200 while the loop beats.
    pub fn live(&self) -> (StatusCode, String) {
        let since = self.since_beat();
        if since < STALE {
            (StatusCode::OK, "ok\n".into())
        } else {
            (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("loop silent for {} ms\n", since.as_millis()),
            )
        }
    }

    /// `/readyz`: 200 when everything the sensor needs is in place, and a
    /// line per check either way.
    pub fn ready(&self) -> (StatusCode, String) {
        let s = &self.0;
        let watcher = match s.watcher.load(Ordering::Relaxed) {
            0 => ("pod watcher", true, "no Kubernetes API"),
            1 => ("pod watcher", false, "syncing"),
            _ => ("pod watcher", true, "synced"),
        };
        let yes_no = |b: bool| if b { "yes" } else { "no" };
        let checks = [
            ("loop alive", self.since_beat() < STALE, ""),
            ("programs attached", s.attached.load(Ordering::Relaxed), ""),
            (
                "policies in the kernel",
                s.policies.load(Ordering::Relaxed),
                "",
            ),
            watcher,
        ];
        let mut body = String::new();
        for (name, ok, detail) in checks {
            let detail = if detail.is_empty() {
                yes_no(ok)
            } else {
                detail
            };
            body.push_str(&format!("{name}: {detail}\n"));
        }
        let ok = checks.iter().all(|c| c.1);
        let status = if ok {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        (status, body)
    }

    /// The health server's routes.
    pub fn route(&self) -> crate::http::Route {
        let h = self.clone();
        Arc::new(move |path| {
            let (status, body) = match path {
                "/healthz" | "/livez" => h.live(),
                "/readyz" => h.ready(),
                _ => (StatusCode::NOT_FOUND, "try /healthz or /readyz\n".into()),
            };
            (status, crate::http::TEXT, body)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_when_every_check_holds() {
        let h = Health::default();
        h.beat();
        assert_eq!(h.live().0, StatusCode::OK);
        assert_eq!(h.ready().0, StatusCode::SERVICE_UNAVAILABLE);
        h.set_attached(true);
        h.set_policies(true);
        assert_eq!(h.ready().0, StatusCode::OK, "{}", h.ready().1);
        h.set_watcher(Watcher::Syncing);
        let (status, body) = h.ready();
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("pod watcher: syncing"), "{body}");
        h.set_watcher(Watcher::Synced);
        assert_eq!(h.ready().0, StatusCode::OK);
    }
}
