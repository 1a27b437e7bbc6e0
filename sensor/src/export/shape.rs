//! The export flags Tetragon users configure, applied to the JSON outputs
//! (stdout and the export file; the gRPC streams have their own filters
//! per request, and the metrics count every event): `--export-allowlist` /
//! `--export-denylist` choose events, `--field-filters` trims their fields,
//! and `--export-rate-limit` caps events per minute, reporting what it
//! dropped in a `rate_limit_info` line.
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::{Map, Value};

use super::filter::Filters;
use super::json::Lines;
use super::{Envelope, Sink};
use crate::metrics::Telemetry;

/// One `--field-filters` entry (Tetragon's `FieldFilter`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldFilter {
    /// Event types it applies to (`PROCESS_EXEC`, ...); all when empty.
    #[serde(default, alias = "eventSet")]
    pub event_set: Vec<String>,
    /// Comma-separated dotted paths inside the event (`process.binary`).
    pub fields: String,
    pub action: FieldAction,
    /// Apply to every type but those of `event_set`.
    #[serde(default, alias = "invertEventSet")]
    pub invert_event_set: bool,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
pub enum FieldAction {
    #[serde(rename = "INCLUDE")]
    Include,
    #[serde(rename = "EXCLUDE")]
    Exclude,
}

/// Parses a `--field-filters` value: JSON objects separated by whitespace.
pub fn parse_field_filters(text: &str) -> Result<Vec<FieldFilter>, String> {
    serde_json::Deserializer::from_str(text)
        .into_iter::<FieldFilter>()
        .enumerate()
        .map(|(i, f)| f.map_err(|e| format!("--field-filters: filter {i}: {e}")))
        .collect()
}

impl FieldFilter {
    fn applies(&self, kind: &str) -> bool {
        let listed = self.event_set.is_empty()
            || self.event_set.iter().any(|t| t.eq_ignore_ascii_case(kind));
        listed != self.invert_event_set
    }

    fn apply(&self, body: &mut Value) {
        let paths: Vec<Vec<&str>> = self
            .fields
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(|p| p.split('.').collect())
            .collect();
        match self.action {
            FieldAction::Exclude => {
                for p in &paths {
                    remove(body, p);
                }
            }
            FieldAction::Include => {
                let mut kept = Value::Object(Map::new());
                for p in &paths {
                    if let Some(v) = get(body, p) {
                        put(&mut kept, p, v.clone());
                    }
                }
                *body = kept;
            }
        }
    }
}

fn get<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, k| v.get(*k))
}

fn remove(v: &mut Value, path: &[&str]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut v = v;
    for k in parents {
        match v.get_mut(*k) {
            Some(next) => v = next,
            None => return,
        }
    }
    if let Some(o) = v.as_object_mut() {
        o.remove(*last);
    }
}

fn put(v: &mut Value, path: &[&str], value: Value) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut v = v;
    for k in parents {
        let Some(o) = v.as_object_mut() else { return };
        v = o
            .entry(k.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
    }
    if let Some(o) = v.as_object_mut() {
        o.insert(last.to_string(), value);
    }
}

/// Events per minute, counted in fixed one-minute windows.
pub struct RateLimit {
    per_minute: u64,
    window: Instant,
    sent: u64,
    dropped: u64,
}

const MINUTE: Duration = Duration::from_secs(60);

impl RateLimit {
    pub fn new(per_minute: u64) -> RateLimit {
        RateLimit {
            per_minute,
            window: Instant::now(),
            sent: 0,
            dropped: 0,
        }
    }

    /// Whether one more event may go out now.
    fn take(&mut self) -> bool {
        if self.sent < self.per_minute {
            self.sent += 1;
            true
        } else {
            self.dropped += 1;
            false
        }
    }

    /// When a window has ended: what it dropped (reported once), and a new
    /// window begins.
    fn roll(&mut self) -> Option<u64> {
        if self.window.elapsed() < MINUTE {
            return None;
        }
        self.window = Instant::now();
        self.sent = 0;
        Some(std::mem::take(&mut self.dropped)).filter(|n| *n > 0)
    }
}

/// What the export flags say, parsed and checked.
#[derive(Debug, Clone, Default)]
pub struct ExportFlags {
    pub allow: Vec<sensor_api::tetragon::Filter>,
    pub deny: Vec<sensor_api::tetragon::Filter>,
    pub fields: Vec<FieldFilter>,
    pub rate_per_minute: Option<u64>,
    /// Which kinds carry ancestors (`--enable-ancestors`), for the filters.
    pub ancestors: super::ancestors::AncestorKinds,
}

impl ExportFlags {
    /// Parses the flags' values; the error names the flag, the filter and
    /// the reason.
    pub fn parse(
        allow: &str,
        deny: &str,
        fields: &str,
        rate_limit: i64,
        ancestors: super::ancestors::AncestorKinds,
    ) -> Result<ExportFlags, String> {
        Ok(ExportFlags {
            allow: super::filter::parse_list("--export-allowlist", allow, ancestors)?,
            deny: super::filter::parse_list("--export-denylist", deny, ancestors)?,
            fields: parse_field_filters(fields)?,
            rate_per_minute: u64::try_from(rate_limit).ok(),
            ancestors,
        })
    }
}

/// A JSON line output behind the export flags.
pub struct Shaped<L: Lines> {
    filters: Option<Filters>,
    fields: Vec<FieldFilter>,
    rate: Option<RateLimit>,
    node: String,
    out: L,
    telemetry: Telemetry,
    /// The line being written, kept for its allocation.
    buf: Vec<u8>,
}

impl<L: Lines> Shaped<L> {
    pub fn new(
        flags: &ExportFlags,
        node: String,
        out: L,
        telemetry: Telemetry,
    ) -> Result<Self, String> {
        let filters = Filters::lists(
            &flags.allow,
            &flags.deny,
            ("allowlist", "denylist"),
            flags.ancestors,
        )?;
        Ok(Shaped {
            filters: (!filters.is_empty()).then_some(filters),
            fields: flags.fields.clone(),
            rate: flags.rate_per_minute.map(RateLimit::new),
            node,
            out,
            telemetry,
            buf: Vec::with_capacity(1024),
        })
    }

    fn write_value(&mut self, v: &Value) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(v)?;
        line.push(b'\n');
        self.out.line(&line)
    }

    /// Tetragon's `rate_limit_info` event, for what a window dropped.
    fn report_dropped(&mut self) -> std::io::Result<()> {
        let Some(n) = self.rate.as_mut().and_then(RateLimit::roll) else {
            return Ok(());
        };
        let v = rate_limit_info(n, &self.node);
        self.write_value(&v)
    }
}

/// Tetragon's `rate_limit_info` event: `n` events dropped on `node`.
pub fn rate_limit_info(n: u64, node: &str) -> Value {
    let time = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true);
    serde_json::json!({
        "rate_limit_info": {"number_of_dropped_process_events": n.to_string()},
        "node_name": node,
        "time": time,
    })
}

impl<L: Lines> Sink for Shaped<L> {
    fn write(&mut self, event: &Envelope) -> std::io::Result<()> {
        if let Some(f) = &self.filters {
            let proto = super::stream::to_proto(event).map_err(std::io::Error::other)?;
            if !f.pass(&proto) {
                return Ok(());
            }
        }
        self.report_dropped()?;
        if let Some(r) = self.rate.as_mut() {
            if !r.take() {
                self.telemetry.export_dropped.inc();
                return Ok(());
            }
        }
        self.telemetry.exported.inc();
        let kind = event.event.kind();
        if !self.fields.iter().any(|f| f.applies(kind)) {
            // The common case, straight to bytes: a detour through a JSON
            // value doubles the cost of every event.
            let mut line = std::mem::take(&mut self.buf);
            line.clear();
            serde_json::to_writer(&mut line, event)?;
            line.push(b'\n');
            let r = self.out.line(&line);
            self.buf = line;
            return r;
        }
        let mut v = serde_json::to_value(event)?;
        if let Some(body) = v.get_mut(kind) {
            for f in self.fields.iter().filter(|f| f.applies(kind)) {
                f.apply(body);
            }
        }
        self.write_value(&v)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.report_dropped()?;
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_filters_include_and_exclude_dotted_paths() {
        let fs = parse_field_filters(
            r#"{"event_set":["PROCESS_EXEC"],"fields":"process.binary,process.pid","action":"INCLUDE"}
               {"fields":"process.pod.pod_labels","action":"EXCLUDE","event_set":["PROCESS_EXEC"],"invert_event_set":true}"#,
        )
        .unwrap();
        let mut exec = serde_json::json!({"process": {"binary": "/bin/x", "pid": 3, "cwd": "/"}, "parent": {}});
        for f in fs.iter().filter(|f| f.applies("process_exec")) {
            f.apply(&mut exec);
        }
        assert_eq!(
            exec,
            serde_json::json!({"process": {"binary": "/bin/x", "pid": 3}})
        );
        let mut exit = serde_json::json!({"process": {"binary": "/bin/x", "pod": {"name": "p", "pod_labels": {"a": "b"}}}});
        for f in fs.iter().filter(|f| f.applies("process_exit")) {
            f.apply(&mut exit);
        }
        assert_eq!(
            exit,
            serde_json::json!({"process": {"binary": "/bin/x", "pod": {"name": "p"}}})
        );
    }

    #[test]
    fn bad_field_filters_name_the_problem() {
        let e = parse_field_filters(r#"{"fields":"a","action":"KEEP"}"#).unwrap_err();
        assert!(e.contains("filter 0") && e.contains("KEEP"), "{e}");
        let e = parse_field_filters(r#"{"fields":"a","action":"INCLUDE","colour":1}"#).unwrap_err();
        assert!(e.contains("colour"), "{e}");
    }

    #[test]
    fn the_rate_limit_counts_what_it_drops() {
        let mut r = RateLimit::new(2);
        assert!(r.take() && r.take());
        assert!(!r.take() && !r.take());
        assert_eq!(r.roll(), None, "the window is still open");
        r.window -= MINUTE;
        assert_eq!(r.roll(), Some(2));
        assert!(r.take(), "a new window");
    }
}
