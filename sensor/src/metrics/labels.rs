//! Which pod and binary labels the event metrics carry (Tetragon's
//! `--metrics-label-filter`): each one multiplies the series a scrape
//! holds, so a cluster with many pods or binaries can drop them.
use std::str::FromStr;

/// The labels Tetragon enables by default, and the only ones it knows.
pub const KNOWN: [&str; 4] = ["namespace", "workload", "pod", "binary"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LabelFilter {
    pub namespace: bool,
    pub workload: bool,
    pub pod: bool,
    pub binary: bool,
}

impl Default for LabelFilter {
    fn default() -> Self {
        LabelFilter {
            namespace: true,
            workload: true,
            pod: true,
            binary: true,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("--metrics-label-filter: unknown label {0:?} (known: namespace, workload, pod, binary)")]
pub struct UnknownLabel(String);

impl FromStr for LabelFilter {
    type Err = UnknownLabel;

    /// A comma-separated list; the empty string drops them all. Tetragon
    /// ignores an unknown name; this refuses it, since a typo would
    /// otherwise silently keep a label the operator meant to drop.
    fn from_str(s: &str) -> Result<Self, UnknownLabel> {
        let mut f = LabelFilter {
            namespace: false,
            workload: false,
            pod: false,
            binary: false,
        };
        for name in s.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            match name {
                "namespace" => f.namespace = true,
                "workload" => f.workload = true,
                "pod" => f.pod = true,
                "binary" => f.binary = true,
                other => return Err(UnknownLabel(other.to_string())),
            }
        }
        Ok(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_subsets_and_refuses_unknown_names() {
        let f: LabelFilter = "namespace, pod".parse().unwrap();
        assert!(f.namespace && f.pod && !f.workload && !f.binary);
        let none: LabelFilter = "".parse().unwrap();
        assert!(!none.namespace && !none.binary);
        let all: LabelFilter = KNOWN.join(",").parse().unwrap();
        assert_eq!(all, LabelFilter::default());
        let e = "namespace,container".parse::<LabelFilter>().unwrap_err();
        assert!(e.to_string().contains("\"container\""), "{e}");
    }
}
