//! Post's `rateLimit`: a selector's event is not posted again within the
//! window for the same arguments and the same process (or for anyone,
//! with `rateLimitScope: global`). Tetragon keeps this state in the
//! kernel; here the records still come to the daemon, and the repeats are
//! dropped before they are exported. Arguments are compared whole
//! (Tetragon compares the first 40 bytes of each).
use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::export::event::Argument;
use crate::policy::{RateLimit, RateScope};

/// Entries kept before the expired ones are swept.
const SWEEP_AT: usize = 16384;

#[derive(Default)]
pub struct Limiter {
    last: HashMap<Key, (Instant, Duration)>,
}

#[derive(Hash, PartialEq, Eq)]
struct Key {
    selector: String,
    who: u32,
    args: String,
}

impl Limiter {
    /// Whether the event of `selector` (a name unique among the loaded
    /// selectors) for process `pid` with `args` may be posted at `now`;
    /// if so, it starts a new window.
    pub fn admit(
        &mut self,
        selector: String,
        pid: u32,
        args: &[Argument],
        limit: &RateLimit,
        now: Instant,
    ) -> bool {
        let key = Key {
            selector,
            who: match limit.scope {
                RateScope::Global => 0,
                RateScope::Thread | RateScope::Process => pid,
            },
            args: serde_json::to_string(args).unwrap_or_default(),
        };
        if let Some((at, window)) = self.last.get(&key) {
            if now.duration_since(*at) < *window {
                return false;
            }
        }
        if self.last.len() >= SWEEP_AT {
            self.last.retain(|_, (at, w)| now.duration_since(*at) < *w);
        }
        self.last.insert(key, (now, limit.window));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_within_the_window_are_dropped_per_process_and_arguments() {
        let mut l = Limiter::default();
        let limit = RateLimit {
            window: Duration::from_secs(5),
            scope: RateScope::Thread,
        };
        let t0 = Instant::now();
        let a = [Argument::IntArg(1)];
        let b = [Argument::IntArg(2)];
        let sel = || "p/f/0".to_string();
        assert!(l.admit(sel(), 10, &a, &limit, t0));
        assert!(!l.admit(sel(), 10, &a, &limit, t0 + Duration::from_secs(4)));
        assert!(l.admit(sel(), 11, &a, &limit, t0), "another process");
        assert!(l.admit(sel(), 10, &b, &limit, t0), "other arguments");
        assert!(
            l.admit("p/f/1".into(), 10, &a, &limit, t0),
            "another selector"
        );
        assert!(l.admit(sel(), 10, &a, &limit, t0 + Duration::from_secs(5)));
        let global = RateLimit {
            scope: RateScope::Global,
            ..limit
        };
        assert!(l.admit(sel(), 20, &a, &global, t0));
        assert!(!l.admit(sel(), 21, &a, &global, t0), "anyone's repeat");
    }
}
