//! Kernel time to wall time. Event times from the kernel are CLOCK_MONOTONIC
//! nanoseconds (`bpf_ktime_get_ns`); protojson wants RFC 3339.
use chrono::{DateTime, SecondsFormat, Utc};

#[derive(Debug, Clone, Copy)]
pub struct Clock {
    /// Wall-clock nanoseconds at monotonic zero (boot).
    boot_wall_ns: i128,
}

fn now_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid clock id and a timespec to fill.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
}

impl Clock {
    pub fn new() -> Self {
        Clock {
            boot_wall_ns: now_ns(libc::CLOCK_REALTIME) - now_ns(libc::CLOCK_MONOTONIC),
        }
    }

    /// RFC 3339 in UTC with 0, 3, 6 or 9 fractional digits, as protojson writes.
    pub fn rfc3339(&self, ktime: u64) -> String {
        let ns = self.boot_wall_ns + ktime as i128;
        let dt = DateTime::<Utc>::from_timestamp(
            (ns / 1_000_000_000) as i64,
            (ns % 1_000_000_000) as u32,
        )
        .unwrap_or_default();
        dt.to_rfc3339_opts(SecondsFormat::AutoSi, true)
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ktime_now_maps_to_about_now() {
        let c = Clock::new();
        let s = c.rfc3339(now_ns(libc::CLOCK_MONOTONIC) as u64);
        let t: DateTime<Utc> = s.parse().expect("RFC 3339");
        assert!((Utc::now() - t).num_seconds().abs() < 5, "{s}");
        assert!(s.ends_with('Z'));
    }
}
