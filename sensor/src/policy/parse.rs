//! From the raw YAML schema to a [`Policy`]: every hook is mapped onto the
//! hooks this sensor implements, every operator and action is checked against
//! what the argument and the kernel support, and anything else is refused with
//! the field path and the reason.
use super::hooks::{self, HookDef};
use super::net::{self, NetMatch};
use super::raw::*;
use super::{
    limits, Actions, BinaryMatch, EventArg, Hook, HookFamily, HookPoint, Policy, Selector,
    StrMatch, StrOp,
};

/// An error at a field path, before the file name is attached.
pub struct FieldError {
    pub field: String,
    pub reason: String,
}

type Result<T> = std::result::Result<T, FieldError>;

fn err<T>(field: impl Into<String>, reason: impl Into<String>) -> Result<T> {
    Err(FieldError {
        field: field.into(),
        reason: reason.into(),
    })
}

/// Refuses a field Tetragon knows but this sensor does not implement.
fn unsupported<T>(value: &Option<T>, field: String, what: &str) -> Result<()> {
    match value {
        Some(_) => err(field, format!("{what} is not supported by this sensor")),
        None => Ok(()),
    }
}

pub fn policy(raw: RawPolicy) -> Result<Policy> {
    if raw.api_version != "cilium.io/v1alpha1" {
        return err(
            "apiVersion",
            format!("`{}`: expected cilium.io/v1alpha1", raw.api_version),
        );
    }
    let namespace = match raw.kind.as_str() {
        "TracingPolicy" => None,
        "TracingPolicyNamespaced" => Some(raw.metadata.namespace.clone().unwrap_or_default()),
        other => {
            return err(
                "kind",
                format!("`{other}`: expected TracingPolicy or TracingPolicyNamespaced"),
            )
        }
    };
    if raw.metadata.name.is_empty() {
        return err("metadata.name", "must not be empty");
    }
    let s = &raw.spec;
    let no_spec = |name: &str| format!("spec.{name}");
    unsupported(&s.uprobes, no_spec("uprobes"), "uprobes")?;
    unsupported(&s.usdts, no_spec("usdts"), "usdts")?;
    unsupported(
        &s.fentries,
        no_spec("fentries"),
        "fentries (they need a BPF trampoline, which this kernel refuses)",
    )?;
    unsupported(&s.enforcers, no_spec("enforcers"), "enforcers")?;
    unsupported(&s.lists, no_spec("lists"), "lists")?;
    unsupported(&s.options, no_spec("options"), "options")?;
    unsupported(
        &s.pod_selector,
        no_spec("podSelector"),
        "podSelector (until pod context exists)",
    )?;
    unsupported(
        &s.container_selector,
        no_spec("containerSelector"),
        "containerSelector",
    )?;
    unsupported(&s.host_selector, no_spec("hostSelector"), "hostSelector")?;
    unsupported(&s.node_selector, no_spec("nodeSelector"), "nodeSelector")?;
    unsupported(
        &s.selectors_macros,
        no_spec("selectorsMacros"),
        "selectorsMacros",
    )?;
    unsupported(&s.loader, no_spec("loader"), "the loader sensor")?;

    let mut hooks = Vec::new();
    for (i, k) in raw.spec.kprobes.into_iter().enumerate() {
        hooks.push(kprobe(k, &format!("spec.kprobes[{i}]"))?);
    }
    for (i, t) in raw.spec.tracepoints.into_iter().enumerate() {
        hooks.push(tracepoint(t, &format!("spec.tracepoints[{i}]"))?);
    }
    for (i, l) in raw.spec.lsmhooks.into_iter().enumerate() {
        hooks.push(lsm(l, &format!("spec.lsmhooks[{i}]"))?);
    }
    if hooks.is_empty() {
        return err("spec", "no kprobes, tracepoints or lsmhooks");
    }
    Ok(Policy {
        name: raw.metadata.name,
        namespace,
        hooks,
    })
}

fn kprobe(k: RawKprobe, at: &str) -> Result<Hook> {
    let Some(def) = hooks::kprobe(&k.call) else {
        return err(
            format!("{at}.call"),
            format!(
                "unsupported hook `{}`; kprobes: {}",
                k.call,
                hooks::names(hooks::KPROBES)
            ),
        );
    };
    if k.return_ == Some(true) {
        return err(format!("{at}.return"), "return probes are not supported");
    }
    unsupported(&k.return_arg, format!("{at}.returnArg"), "returnArg")?;
    unsupported(
        &k.return_arg_action,
        format!("{at}.returnArgAction"),
        "returnArgAction",
    )?;
    unsupported(&k.data, format!("{at}.data"), "data")?;
    unsupported(&k.ignore, format!("{at}.ignore"), "ignore")?;
    let point = HookPoint::Kprobe {
        function: def.function.to_string(),
    };
    hook(point, def, k.args, k.selectors, k.message, k.tags, at)
}

fn tracepoint(t: RawTracepoint, at: &str) -> Result<Hook> {
    if (t.subsystem.as_str(), t.event.as_str()) != ("sched", "sched_process_exec") {
        return err(
            format!("{at}.event"),
            format!(
                "unsupported tracepoint `{}/{}`; exec tracepoint: sched/sched_process_exec",
                t.subsystem, t.event
            ),
        );
    }
    if t.raw == Some(true) {
        return err(format!("{at}.raw"), "raw tracepoints are not supported");
    }
    let point = HookPoint::Tracepoint {
        subsystem: t.subsystem,
        event: t.event,
    };
    hook(
        point,
        &hooks::EXEC_TRACEPOINT,
        t.args,
        t.selectors,
        t.message,
        t.tags,
        at,
    )
}

fn lsm(l: RawLsmHook, at: &str) -> Result<Hook> {
    let Some(def) = hooks::lsm(&l.hook) else {
        return err(
            format!("{at}.hook"),
            format!(
                "unsupported LSM hook `{}`; LSM hooks: {}",
                l.hook,
                hooks::names(hooks::LSM_HOOKS)
            ),
        );
    };
    let point = HookPoint::Lsm { hook: l.hook };
    hook(point, def, l.args, l.selectors, l.message, l.tags, at)
}

fn hook(
    point: HookPoint,
    def: &HookDef,
    args: Vec<RawArg>,
    selectors: Vec<RawSelector>,
    message: Option<String>,
    tags: Vec<String>,
    at: &str,
) -> Result<Hook> {
    let mut declared: Vec<(u32, EventArg)> = Vec::new();
    let available = || {
        def.args
            .iter()
            .map(|a| a.index.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    for (i, a) in args.iter().enumerate() {
        let f = format!("{at}.args[{i}]");
        let Some(d) = def.args.iter().find(|d| d.index == a.index) else {
            return err(
                format!("{f}.index"),
                format!(
                    "argument {} is not available; this hook exposes argument {}",
                    a.index,
                    available()
                ),
            );
        };
        let ty = a.type_.as_deref().unwrap_or("auto");
        if !d.types.contains(&ty) {
            return err(
                format!("{f}.type"),
                format!(
                    "type `{ty}` does not fit argument {}; expected {}",
                    a.index,
                    d.types.join(" or ")
                ),
            );
        }
        for (name, v) in [
            ("resolve", &a.resolve),
            ("btfType", &a.btf_type),
            ("sizeArgIndex", &a.size_arg_index),
            ("returnCopy", &a.return_copy),
            ("maxData", &a.max_data),
            ("source", &a.source),
        ] {
            unsupported(v, format!("{f}.{name}"), name)?;
        }
        if declared.iter().any(|(idx, _)| *idx == a.index) {
            return err(
                format!("{f}.index"),
                format!("argument {} is declared twice", a.index),
            );
        }
        declared.push((a.index, d.arg));
    }
    if selectors.len() > limits::SELECTORS_PER_HOOK {
        return err(
            format!("{at}.selectors"),
            format!(
                "{} selectors; at most {} per hook",
                selectors.len(),
                limits::SELECTORS_PER_HOOK
            ),
        );
    }
    if message.as_ref().is_some_and(|m| m.len() > 256) {
        return err(format!("{at}.message"), "longer than 256 characters");
    }
    if tags.len() > 16 {
        return err(format!("{at}.tags"), "more than 16 tags");
    }
    let mut parsed = Vec::new();
    for (i, s) in selectors.into_iter().enumerate() {
        parsed.push(selector(
            s,
            def.family,
            &declared,
            &format!("{at}.selectors[{i}]"),
        )?);
    }
    if parsed.is_empty() {
        // A hook without selectors posts every call, as in Tetragon.
        parsed.push(Selector {
            binaries: None,
            path: Vec::new(),
            net: Vec::new(),
            actions: Actions::POST,
        });
    }
    Ok(Hook {
        point,
        family: def.family,
        binaries_of_new_image: def.binaries_of_new_image,
        args: declared.into_iter().map(|(_, a)| a).collect(),
        selectors: parsed,
        message,
        tags,
    })
}

fn selector(
    s: RawSelector,
    family: HookFamily,
    declared: &[(u32, EventArg)],
    at: &str,
) -> Result<Selector> {
    for (name, v) in [
        ("matchPIDs", &s.match_pids),
        ("matchData", &s.match_data),
        ("matchReturnArgs", &s.match_return_args),
        ("matchParentBinaries", &s.match_parent_binaries),
        ("matchNamespaces", &s.match_namespaces),
        ("matchCapabilities", &s.match_capabilities),
        ("matchNamespaceChanges", &s.match_namespace_changes),
        ("matchCapabilityChanges", &s.match_capability_changes),
        ("matchWorkloads", &s.match_workloads),
        ("matchReturnActions", &s.match_return_actions),
        ("macros", &s.macros),
    ] {
        unsupported(v, format!("{at}.{name}"), name)?;
    }
    if s.match_binaries.len() > 1 {
        return err(
            format!("{at}.matchBinaries"),
            "at most one matchBinaries per selector",
        );
    }
    let binaries = match s.match_binaries.into_iter().next() {
        None => None,
        Some(b) => {
            let f = format!("{at}.matchBinaries[0]");
            let op = match b.operator.as_str() {
                "In" => StrOp::Equal,
                "NotIn" => StrOp::NotEqual,
                "Prefix" => StrOp::Prefix,
                "NotPrefix" => StrOp::NotPrefix,
                "Postfix" => StrOp::Postfix,
                "NotPostfix" => StrOp::NotPostfix,
                other => {
                    return err(
                        format!("{f}.operator"),
                        format!("unknown operator `{other}`; expected In, NotIn, Prefix, NotPrefix, Postfix or NotPostfix"),
                    )
                }
            };
            let follow_children = b.follow_children.unwrap_or(false);
            if follow_children && !matches!(op, StrOp::Equal | StrOp::NotEqual) {
                return err(
                    format!("{f}.followChildren"),
                    "only with the In or NotIn operator",
                );
            }
            Some(BinaryMatch {
                set: values(op, b.values, &f)?,
                follow_children,
            })
        }
    };
    if s.match_args.len() > limits::MAX_ARG_FILTERS {
        return err(
            format!("{at}.matchArgs"),
            format!(
                "{} entries; at most {}",
                s.match_args.len(),
                limits::MAX_ARG_FILTERS
            ),
        );
    }
    let (mut path, mut net) = (Vec::new(), Vec::new());
    for (i, m) in s.match_args.into_iter().enumerate() {
        let f = format!("{at}.matchArgs[{i}]");
        let index = match (m.index, m.args.as_deref()) {
            (Some(i), None) => i,
            (None, Some([i])) => *i,
            (None, None) => return err(format!("{f}.index"), "missing"),
            _ => return err(format!("{f}.args"), "give either index or one args entry"),
        };
        let Some(&(_, arg)) = declared.iter().find(|(idx, _)| *idx == index) else {
            return err(
                format!("{f}.index"),
                format!("argument {index} is not declared in args"),
            );
        };
        match arg {
            EventArg::LinuxBinprm | EventArg::PathString => path.push(path_filter(m, &f)?),
            EventArg::Sock | EventArg::Sockaddr => {
                net.push(net_filter(m, arg == EventArg::Sockaddr, &f)?)
            }
        }
    }
    Ok(Selector {
        binaries,
        path,
        net,
        actions: actions(s.match_actions, family, at)?,
    })
}

const OTHER_OPERATORS: &[&str] = &[
    "GT",
    "GreaterThan",
    "LT",
    "LessThan",
    "Mask",
    "InRange",
    "NotInRange",
    "SPort",
    "NotSPort",
    "SPortPriv",
    "NotSportPriv",
    "DPort",
    "NotDPort",
    "DPortPriv",
    "NotDPortPriv",
    "SAddr",
    "NotSAddr",
    "DAddr",
    "NotDAddr",
    "Protocol",
    "Family",
    "State",
    "InMap",
    "NotInMap",
    "CapabilitiesGained",
    "SubString",
    "SubStringIgnCase",
    "CelExpr",
    "FileType",
    "NotFileType",
    "Equal",
    "NotEqual",
    "Prefix",
    "NotPrefix",
    "Postfix",
    "NotPostfix",
];

fn path_filter(m: RawMatchArg, f: &str) -> Result<StrMatch> {
    let op = match m.operator.as_str() {
        "Equal" => StrOp::Equal,
        "NotEqual" => StrOp::NotEqual,
        "Prefix" => StrOp::Prefix,
        "NotPrefix" => StrOp::NotPrefix,
        "Postfix" => StrOp::Postfix,
        "NotPostfix" => StrOp::NotPostfix,
        other if OTHER_OPERATORS.contains(&other) => {
            return err(
                format!("{f}.operator"),
                format!("operator `{other}` does not apply to a path; expected Equal, NotEqual, Prefix, NotPrefix, Postfix or NotPostfix"),
            )
        }
        other => return err(format!("{f}.operator"), format!("unknown operator `{other}`")),
    };
    values(op, m.values, f)
}

fn net_filter(m: RawMatchArg, sockaddr: bool, f: &str) -> Result<NetMatch> {
    if m.values.is_empty() && !m.operator.contains("PortPriv") && !m.operator.contains("portPriv") {
        return err(format!("{f}.values"), "must not be empty");
    }
    if m.values.len() > limits::VALUES_PER_FILTER {
        return err(
            format!("{f}.values"),
            format!(
                "{} values; at most {}",
                m.values.len(),
                limits::VALUES_PER_FILTER
            ),
        );
    }
    match net::parse(&m.operator, &m.values, sockaddr) {
        Ok(Some(n)) => Ok(n),
        Ok(None) => {
            let expected = if sockaddr {
                net::SOCKADDR_OPERATORS
            } else {
                net::SOCK_OPERATORS
            };
            let what = if OTHER_OPERATORS.contains(&m.operator.as_str()) {
                "does not apply to a socket"
            } else {
                "is unknown"
            };
            err(
                format!("{f}.operator"),
                format!("operator `{}` {what}; expected {expected}", m.operator),
            )
        }
        Err((Some(i), reason)) => err(format!("{f}.values[{i}]"), reason),
        Err((None, reason)) => err(format!("{f}.operator"), reason),
    }
}

fn values(op: StrOp, values: Vec<String>, at: &str) -> Result<StrMatch> {
    if values.is_empty() {
        return err(format!("{at}.values"), "must not be empty");
    }
    if values.len() > limits::VALUES_PER_FILTER {
        return err(
            format!("{at}.values"),
            format!(
                "{} values; at most {}",
                values.len(),
                limits::VALUES_PER_FILTER
            ),
        );
    }
    for (i, v) in values.iter().enumerate() {
        if v.is_empty() || v.len() > limits::MAX_VALUE_LEN || v.contains('\0') {
            return err(
                format!("{at}.values[{i}]"),
                format!("must be 1 to {} bytes without NUL", limits::MAX_VALUE_LEN),
            );
        }
    }
    Ok(StrMatch { op, values })
}

fn actions(raw: Vec<RawAction>, family: HookFamily, at: &str) -> Result<Actions> {
    let mut out = Actions::POST;
    for (i, a) in raw.into_iter().enumerate() {
        let f = format!("{at}.matchActions[{i}]");
        for (name, v) in [
            ("rateLimit", &a.rate_limit),
            ("rateLimitScope", &a.rate_limit_scope),
            ("kernelStackTrace", &a.kernel_stack_trace),
            ("userStackTrace", &a.user_stack_trace),
            ("imaHash", &a.ima_hash),
        ] {
            unsupported(v, format!("{f}.{name}"), name)?;
        }
        match a.action.to_ascii_lowercase().as_str() {
            "post" => {}
            "nopost" => out.post = false,
            "sigkill" => out.signal = Some(libc::SIGKILL as u32),
            "signal" => match a.arg_sig {
                Some(sig @ 1..=64) => {
                    if out.signal.is_none() {
                        out.signal = Some(sig);
                    }
                }
                Some(sig) => return err(format!("{f}.argSig"), format!("{sig} is not a signal number (1 to 64)")),
                None => return err(format!("{f}.argSig"), "Signal needs argSig"),
            },
            // A connect is denied in the cgroup hook, which needs neither.
            "override" if family == HookFamily::Connect => match a.arg_error {
                Some(e @ -4095..=-1) => out.errno = Some(e.unsigned_abs()),
                Some(e) => return err(format!("{f}.argError"), format!("{e} is not a negative errno (-1 to -4095)")),
                None => return err(format!("{f}.argError"), "Override needs argError"),
            },
            "override" => {
                return err(
                    format!("{f}.action"),
                    "Override needs BPF-LSM or kprobe error injection, which this kernel lacks; use Sigkill",
                )
            }
            "geturl" | "dnslookup" | "followfd" | "unfollowfd" | "copyfd" | "tracksock"
            | "untracksock" | "notifyenforcer" | "cleanupenforcernotification" | "set" => {
                return err(format!("{f}.action"), format!("action `{}` is not supported by this sensor", a.action))
            }
            _ => {
                return err(
                    format!("{f}.action"),
                    format!("unknown action `{}`; expected Post, NoPost, Sigkill or Signal", a.action),
                )
            }
        }
        if a.arg_error.is_some() && !a.action.eq_ignore_ascii_case("override") {
            return err(format!("{f}.argError"), "argError applies only to Override");
        }
    }
    Ok(out)
}
