//! Counters of what went through the pipeline, and of what did not: records
//! lost to a full ring buffer, records that failed to decode, events whose
//! process or parent was unknown.
use std::collections::BTreeMap;
use std::fmt;

#[derive(Debug, Default)]
pub struct Metrics {
    pub records: u64,
    pub decode_errors: u64,
    pub events: BTreeMap<&'static str, u64>,
    /// Last value read from the kernel's `LOST` counters, per record kind.
    pub lost: BTreeMap<&'static str, u64>,
}

impl Metrics {
    pub fn event(&mut self, kind: &'static str) {
        *self.events.entry(kind).or_default() += 1;
    }

    pub fn lost_total(&self) -> u64 {
        self.lost.values().sum()
    }
}

impl fmt::Display for Metrics {
    /// `records=N lost=N decode_errors=N process_exec=N ...`, one line for logs
    /// and for `cargo xtask bench` to read.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "records={} lost={} decode_errors={}",
            self.records,
            self.lost_total(),
            self.decode_errors
        )?;
        for (k, v) in &self.events {
            write!(f, " {k}={v}")?;
        }
        Ok(())
    }
}
