//! The syscall family's selector filters: `matchArgs` on the syscall
//! number (a set of numbers, decided here), on integer arguments and on
//! the return value (compared in the kernel), `matchPIDs` and
//! `matchNamespaces`.
use std::collections::BTreeSet;

use sensor_common::{
    int_op, ns_kind, INT_VALUES, MAX_NS_FILTERS, MAX_PID_FILTERS, NS_VALUES, PID_VALUES,
    SYSCALL_NRS,
};

use super::parse::{err, FieldError, Result};
use super::raw::{RawMatchArg, RawMatchNamespace, RawMatchPid};
use super::syscall_hooks::Lists;
use super::{syscalls, IntMatch, IntType, NsMatch, NsValue, PidMatch};

/// `matchReturnArgs` of a syscall hook with `return: true` (`ret` its
/// type): one filter on index 0, compared in the kernel at the return.
pub fn return_filter(
    raw: Vec<RawMatchArg>,
    ret: Option<IntType>,
    at: &str,
) -> Result<Option<IntMatch>> {
    let Some(m) = raw.first() else {
        return Ok(None);
    };
    let Some(ty) = ret else {
        return err(
            at,
            "matchReturnArgs applies to a syscall hook with return: true",
        );
    };
    if raw.len() > 1 {
        return err(at, "at most one entry (the return value is index 0)");
    }
    match (m.index, m.args.as_deref()) {
        (Some(0), None) | (None, Some([0])) | (None, None) => {}
        _ => return err(format!("{at}[0].index"), "the return value is index 0"),
    }
    int_filter(m, 0, ty, &format!("{at}[0]")).map(Some)
}

/// `matchPIDs`: In or NotIn, with `followForks` and `isNamespacePID`.
pub fn pid_filters(raw: Vec<RawMatchPid>, at: &str) -> Result<Vec<PidMatch>> {
    if raw.len() > MAX_PID_FILTERS {
        return err(
            at,
            format!("{} entries; at most {MAX_PID_FILTERS}", raw.len()),
        );
    }
    let mut out = Vec::new();
    for (i, p) in raw.into_iter().enumerate() {
        let f = format!("{at}[{i}]");
        let negate = not_in(&p.operator, &f)?;
        if p.values.is_empty() || p.values.len() > PID_VALUES {
            return err(format!("{f}.values"), format!("1 to {PID_VALUES} PIDs"));
        }
        let mut values = Vec::new();
        for (j, v) in p.values.iter().enumerate() {
            let n = v
                .as_u64()
                .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
                .and_then(|n| u32::try_from(n).ok());
            match n {
                Some(n) => values.push(n),
                None => return err(format!("{f}.values[{j}]"), "not a PID"),
            }
        }
        out.push(PidMatch {
            negate,
            follow_forks: p.follow_forks,
            namespace: p.is_namespace_pid,
            values,
        });
    }
    Ok(out)
}

/// A set entry's operator, `In` or `NotIn`: whether it is negated.
fn not_in(operator: &str, f: &str) -> Result<bool> {
    match operator {
        "In" => Ok(false),
        "NotIn" => Ok(true),
        other => err(
            format!("{f}.operator"),
            format!("unknown operator `{other}`; expected In or NotIn"),
        ),
    }
}

/// Tetragon's namespace names, the slot each takes in the kernel's
/// table, and its file under `/proc/PID/ns`.
pub const NAMESPACES: [(&str, usize, &str); 10] = [
    ("Uts", ns_kind::UTS, "uts"),
    ("Ipc", ns_kind::IPC, "ipc"),
    ("Mnt", ns_kind::MNT, "mnt"),
    ("Pid", ns_kind::PID, "pid"),
    (
        "PidForChildren",
        ns_kind::PID_FOR_CHILDREN,
        "pid_for_children",
    ),
    ("Net", ns_kind::NET, "net"),
    ("Time", ns_kind::TIME, "time"),
    (
        "TimeForChildren",
        ns_kind::TIME_FOR_CHILDREN,
        "time_for_children",
    ),
    ("Cgroup", ns_kind::CGROUP, "cgroup"),
    ("User", ns_kind::USER, "user"),
];

/// `matchNamespaces`: In or NotIn, on inode numbers or `host_ns`.
pub fn namespace_filters(raw: Vec<RawMatchNamespace>, at: &str) -> Result<Vec<NsMatch>> {
    if raw.len() > MAX_NS_FILTERS {
        return err(
            at,
            format!("{} entries; at most {MAX_NS_FILTERS}", raw.len()),
        );
    }
    let mut out = Vec::new();
    for (i, m) in raw.into_iter().enumerate() {
        let f = format!("{at}[{i}]");
        let Some(&(_, kind, _)) = NAMESPACES.iter().find(|(n, _, _)| *n == m.namespace) else {
            let names: Vec<&str> = NAMESPACES.iter().map(|(n, _, _)| *n).collect();
            return err(
                format!("{f}.namespace"),
                format!(
                    "unknown namespace `{}`; expected {}",
                    m.namespace,
                    names.join(", ")
                ),
            );
        };
        let negate = not_in(&m.operator, &f)?;
        if m.values.is_empty() || m.values.len() > NS_VALUES {
            return err(
                format!("{f}.values"),
                format!("1 to {NS_VALUES} namespaces (inode numbers or host_ns)"),
            );
        }
        let mut values = Vec::new();
        for (j, v) in m.values.iter().enumerate() {
            let text = v.as_str().map(str::trim);
            let value = if text == Some("host_ns") {
                Some(NsValue::Host)
            } else {
                v.as_u64()
                    .or_else(|| text.and_then(|s| s.parse().ok()))
                    .and_then(|n| u32::try_from(n).ok())
                    .map(NsValue::Inode)
            };
            match value {
                Some(v) => values.push(v),
                None => {
                    return err(
                        format!("{f}.values[{j}]"),
                        "not a namespace inode number or host_ns",
                    )
                }
            }
        }
        out.push(NsMatch {
            kind,
            negate,
            values,
        });
    }
    Ok(out)
}

/// An integer value: decimal (signed) or 0x hex.
fn int_value(v: &str) -> Option<u64> {
    let v = v.trim();
    match v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => v
            .parse::<u64>()
            .ok()
            .or_else(|| v.parse::<i64>().ok().map(|n| n as u64)),
    }
}

/// A `lo:hi` range, or a single value as a range of one.
fn range(v: &str) -> Option<(u64, u64)> {
    match v.split_once(':') {
        Some((lo, hi)) => Some((int_value(lo)?, int_value(hi)?)),
        None => int_value(v).map(|n| (n, n)),
    }
}

/// A `matchArgs` entry on the syscall number, decided here: the numbers it
/// admits. Values are numbers, syscall names, `lo:hi` ranges or
/// `list:NAME`.
pub fn number_filter(m: &RawMatchArg, lists: &Lists, f: &str) -> Result<BTreeSet<u32>> {
    if m.values.is_empty() {
        return err(format!("{f}.values"), "must not be empty");
    }
    let mut named = BTreeSet::new();
    let mut ranges = Vec::new();
    for (i, v) in m.values.iter().enumerate() {
        if let Some(l) = v.strip_prefix("list:") {
            match lists.get(l) {
                Some(set) => named.extend(set),
                None => {
                    return err(
                        format!("{f}.values[{i}]"),
                        format!("no list named `{l}` in spec.lists"),
                    )
                }
            }
        } else if let Some(nr) = syscalls::number(v).filter(|_| int_value(v).is_none()) {
            named.insert(nr);
        } else if let Some(r) = range(v) {
            ranges.push(r);
        } else {
            return err(
                format!("{f}.values[{i}]"),
                format!("`{v}` is not a syscall, a number, a range or list:NAME"),
            );
        }
    }
    let first = int_value(&m.values[0]);
    let single = |what: &str| -> Result<u64> {
        match (m.values.len(), first) {
            (1, Some(n)) => Ok(n),
            _ => err(format!("{f}.values"), format!("{what} takes one number")),
        }
    };
    let is = |nr: u32| {
        named.contains(&nr)
            || ranges
                .iter()
                .any(|(lo, hi)| (*lo..=*hi).contains(&(nr as u64)))
    };
    let all = 0..SYSCALL_NRS as u32;
    Ok(match m.operator.as_str() {
        "Equal" | "InMap" | "InRange" => all.filter(|nr| is(*nr)).collect(),
        "NotEqual" | "NotInMap" | "NotInRange" => all.filter(|nr| !is(*nr)).collect(),
        "GT" | "GreaterThan" => {
            let n = single("GT")?;
            all.filter(|nr| *nr as u64 > n).collect()
        }
        "LT" | "LessThan" => {
            let n = single("LT")?;
            all.filter(|nr| (*nr as u64) < n).collect()
        }
        other => {
            return err(
                format!("{f}.operator"),
                format!("operator `{other}` does not apply to the syscall number; expected Equal, NotEqual, InMap, NotInMap, InRange, NotInRange, GT or LT"),
            )
        }
    })
}

/// A `matchArgs` entry on integer argument `reg`, compared in the kernel.
pub fn int_filter(m: &RawMatchArg, reg: u8, ty: IntType, f: &str) -> Result<IntMatch> {
    let bad = |i: usize, v: &str| -> FieldError {
        FieldError {
            field: format!("{f}.values[{i}]"),
            reason: format!("`{v}` is not an integer (decimal or 0x hex)"),
        }
    };
    let values = |ranges: bool| -> Result<Vec<u64>> {
        let mut out = Vec::new();
        for (i, v) in m.values.iter().enumerate() {
            if ranges {
                let (lo, hi) = range(v).ok_or_else(|| bad(i, v))?;
                out.extend([lo, hi]);
            } else {
                out.push(int_value(v).ok_or_else(|| bad(i, v))?);
            }
        }
        Ok(out)
    };
    let (op, values) = match m.operator.as_str() {
        "Equal" | "InMap" => (int_op::EQUAL, values(false)?),
        "NotEqual" | "NotInMap" => (int_op::NOT_EQUAL, values(false)?),
        "GT" | "GreaterThan" => (int_op::GT, values(false)?),
        "LT" | "LessThan" => (int_op::LT, values(false)?),
        "Mask" => (int_op::MASK, values(false)?),
        "InRange" => (int_op::IN_RANGE, values(true)?),
        "NotInRange" => (int_op::NOT_IN_RANGE, values(true)?),
        other => {
            return err(
                format!("{f}.operator"),
                format!("operator `{other}` does not apply to an integer; expected Equal, NotEqual, InMap, NotInMap, GT, LT, Mask, InRange or NotInRange"),
            )
        }
    };
    if values.is_empty() {
        return err(format!("{f}.values"), "must not be empty");
    }
    let one = matches!(op, int_op::GT | int_op::LT);
    if one && values.len() != 1 {
        return err(
            format!("{f}.values"),
            format!("{} takes one value", m.operator),
        );
    }
    if values.len() > INT_VALUES {
        return err(
            format!("{f}.values"),
            format!(
                "at most {} values ({} ranges) on a syscall argument",
                INT_VALUES,
                INT_VALUES / 2
            ),
        );
    }
    Ok(IntMatch {
        reg,
        ty,
        op,
        values,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arg(operator: &str, values: &[&str]) -> RawMatchArg {
        RawMatchArg {
            index: Some(0),
            args: None,
            operator: operator.into(),
            values: values.iter().map(|v| v.to_string()).collect(),
        }
    }

    #[test]
    fn the_number_filter_is_a_set_of_numbers() {
        let mut lists = Lists::new();
        lists.insert("dups".into(), [32, 33].into());
        let set = number_filter(&arg("InMap", &["list:dups"]), &lists, "f").unwrap();
        assert_eq!(set, [32, 33].into());
        let set = number_filter(&arg("Equal", &["sys_setuid", "101"]), &lists, "f").unwrap();
        assert_eq!(set, [101, 105].into());
        let set = number_filter(&arg("NotInRange", &["1:510"]), &lists, "f").unwrap();
        assert_eq!(set, [0, 511].into());
        let e = number_filter(&arg("InMap", &["list:nope"]), &lists, "f").unwrap_err();
        assert_eq!(e.field, "f.values[0]");
    }

    #[test]
    fn integer_filters_take_their_values() {
        let m = int_filter(&arg("InRange", &["1:5", "0x10:0x20"]), 2, IntType::Int, "f").unwrap();
        assert_eq!((m.op, m.values), (int_op::IN_RANGE, vec![1, 5, 16, 32]));
        let m = int_filter(&arg("Equal", &["-1"]), 0, IntType::Int, "f").unwrap();
        assert_eq!(m.values, vec![u64::MAX]);
        assert!(int_filter(&arg("GT", &["1", "2"]), 0, IntType::Int, "f").is_err());
        assert!(int_filter(
            &arg("Equal", &["1", "2", "3", "4", "5"]),
            0,
            IntType::Int,
            "f"
        )
        .is_err());
        assert!(int_filter(&arg("Prefix", &["1"]), 0, IntType::Int, "f").is_err());
        assert!(int_filter(&arg("Equal", &["x"]), 0, IntType::Int, "f").is_err());
    }
}
