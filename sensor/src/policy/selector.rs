//! Selectors of a hook: `matchBinaries`, `matchArgs` on the binary path or
//! the connection, and `matchActions`, each checked against what the hook's
//! arguments and the kernel support.
use std::collections::BTreeSet;

use super::net::{self, NetMatch};
use super::parse::{err, unsupported, FieldError, Result};
use super::raw::*;
use super::syscall_filters;
use super::syscall_hooks::Lists;
use super::{
    limits, Actions, ArgStrMatch, BinaryMatch, EventArg, IntType, RateLimit, RateScope, Selector,
    StrMatch, StrOp, SysArg, UserRead,
};

/// `lists`: the policy's `lists`, given for a syscall hook (whose
/// selectors take integer filters and NotifyEnforcer); `ret`: the return
/// value's type, for a syscall hook with `return: true`
/// (`matchReturnArgs`).
pub fn selector(
    s: RawSelector,
    declared: &[(u32, EventArg)],
    lists: Option<&Lists>,
    ret: Option<IntType>,
    at: &str,
) -> Result<Selector> {
    for (name, v) in [
        ("matchData", &s.match_data),
        ("matchParentBinaries", &s.match_parent_binaries),
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
    let pids = match lists {
        Some(_) => syscall_filters::pid_filters(s.match_pids, &format!("{at}.matchPIDs"))?,
        None if s.match_pids.is_empty() => Vec::new(),
        None => {
            return err(
                format!("{at}.matchPIDs"),
                "matchPIDs is supported on syscall hooks only (exec and connect hooks: use matchBinaries or a pod scope)",
            )
        }
    };
    let namespaces = match lists {
        Some(_) => syscall_filters::namespace_filters(
            s.match_namespaces,
            &format!("{at}.matchNamespaces"),
        )?,
        None if s.match_namespaces.is_empty() => Vec::new(),
        None => {
            return err(
                format!("{at}.matchNamespaces"),
                "matchNamespaces is supported on syscall hooks only here (exec and connect hooks: use matchBinaries or a pod scope)",
            )
        }
    };
    let ret_filter =
        syscall_filters::return_filter(s.match_return_args, ret, &format!("{at}.matchReturnArgs"))?;
    let (mut path, mut net, mut ints, mut strs) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut numbers: Option<BTreeSet<u32>> = None;
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
            EventArg::LinuxBinprm | EventArg::PathString | EventArg::File => {
                path.push(path_filter(m, &f)?)
            }
            EventArg::Nop => {
                return err(
                    format!("{f}.index"),
                    format!("argument {index} is declared nop: not read, so not filtered on"),
                )
            }
            EventArg::Sock if declared.iter().any(|(_, a)| *a == EventArg::Skb) => {
                return err(
                    format!("{f}.index"),
                    format!("argument {index} (the packet's socket) is reported, not filtered on: a packet hook's selectors test the packet; filter on the skb argument"),
                )
            }
            EventArg::Sock | EventArg::Sockaddr => {
                net.push(net_filter(m, arg == EventArg::Sockaddr, &f)?)
            }
            EventArg::Skb => {
                let n = net_filter(m, false, &f)?;
                if matches!(n, NetMatch::State(_)) {
                    return err(
                        format!("{f}.operator"),
                        "State does not apply to a packet; it applies to a sock argument of the TCP hooks",
                    );
                }
                net.push(n)
            }
            EventArg::PacketDirection => {
                return err(
                    format!("{f}.index"),
                    format!("argument {index} (the direction) is reported, not filtered on; hook sk_filter_trim_cap for packets in, ip_output or ip6_output for packets out"),
                )
            }
            EventArg::AddrLen => {
                return err(
                    format!("{f}.index"),
                    format!("argument {index} (the address length) is reported, not filtered on; filter on the address (argument 1)"),
                )
            }
            EventArg::SockFamily | EventArg::NewState => net.push(int_net_filter(m, arg, &f)?),
            // Never declared in `args`: filtering on a return is refused
            // with matchReturnArgs.
            EventArg::ReturnSock => {
                return err(format!("{f}.index"), "the return value is not an argument")
            }
            EventArg::SendSize => {
                return err(
                    format!("{f}.index"),
                    format!("argument {index} (the size sent) is reported, not filtered on; filter on the socket (argument 0)"),
                )
            }
            EventArg::Syscall(SysArg::Number, _) => {
                let set = syscall_filters::number_filter(&m, lists.unwrap_or(&Lists::new()), &f)?;
                numbers = Some(match numbers {
                    Some(n) => n.intersection(&set).copied().collect(),
                    None => set,
                });
            }
            EventArg::Syscall(SysArg::Reg(reg), ty) => {
                ints.push(syscall_filters::int_filter(&m, reg, ty, &f)?)
            }
            EventArg::SyscallUser {
                reg,
                read: UserRead::String | UserRead::Fd,
            } => strs.push(ArgStrMatch {
                reg,
                set: path_filter(m, &f)?,
            }),
            EventArg::SyscallUser { .. } => {
                return err(
                    format!("{f}.index"),
                    format!("argument {index} (a char_buf) is reported, not filtered on, here"),
                )
            }
        }
    }
    Ok(Selector {
        binaries,
        path,
        net,
        ints,
        strs,
        pids,
        namespaces,
        ret: ret_filter,
        numbers,
        actions: actions(s.match_actions, lists.is_some(), at)?,
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
                format!("operator `{other}` does not apply to a string; expected Equal, NotEqual, Prefix, NotPrefix, Postfix or NotPostfix"),
            )
        }
        other => return err(format!("{f}.operator"), format!("unknown operator `{other}`")),
    };
    values(op, m.values, f)
}

/// `Equal` / `NotEqual` on an `int` a network hook reads from the socket:
/// `sk_alloc`'s family (as `Family`) or `tcp_set_state`'s new state.
fn int_net_filter(m: RawMatchArg, arg: EventArg, f: &str) -> Result<NetMatch> {
    let negate = match m.operator.as_str() {
        "Equal" => false,
        "NotEqual" if arg == EventArg::NewState => true,
        op => {
            let allowed = if arg == EventArg::NewState {
                "Equal or NotEqual"
            } else {
                "Equal"
            };
            return err(
                format!("{f}.operator"),
                format!("operator `{op}` does not apply to this argument; expected {allowed}"),
            );
        }
    };
    if m.values.is_empty() || m.values.len() > limits::VALUES_PER_FILTER {
        return err(
            format!("{f}.values"),
            format!("1 to {} values", limits::VALUES_PER_FILTER),
        );
    }
    let mut numbers = Vec::new();
    for (i, v) in m.values.iter().enumerate() {
        let n = if arg == EventArg::NewState {
            net::tcp_state(v).map(u16::from)
        } else {
            v.parse::<u16>()
                .map_err(|_| format!("`{v}` is not a family number (AF_INET is 2)"))
        };
        numbers.push(n.map_err(|e| FieldError {
            field: format!("{f}.values[{i}]"),
            reason: e,
        })?);
    }
    Ok(if arg == EventArg::NewState {
        NetMatch::NewState {
            negate,
            states: numbers.into_iter().map(|n| n as u8).collect(),
        }
    } else {
        NetMatch::Family(numbers)
    })
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

/// `syscall`: the selector is on a syscall hook, where NotifyEnforcer
/// sends its `argSig`.
/// Post's `rateLimit` (seconds, or with an `s`, `m` or `h` suffix) and
/// `rateLimitScope` (`thread`, `process` or `global`).
fn rate_limit(a: &RawAction, f: &str) -> Result<Option<RateLimit>> {
    let Some(v) = &a.rate_limit else {
        if a.rate_limit_scope.is_some() {
            return err(format!("{f}.rateLimitScope"), "needs rateLimit");
        }
        return Ok(None);
    };
    if !a.action.eq_ignore_ascii_case("post") {
        return err(format!("{f}.rateLimit"), "applies only to Post");
    }
    let text = match v {
        serde_yaml::Value::String(s) => s.trim().to_string(),
        serde_yaml::Value::Number(n) => n.to_string(),
        _ => String::new(),
    };
    let (digits, unit) = match text.char_indices().last() {
        Some((i, c @ ('s' | 'm' | 'h'))) => (&text[..i], c),
        _ => (text.as_str(), 's'),
    };
    let window = match digits.parse::<u64>() {
        Ok(n @ 1..) => n * match unit {
            'm' => 60,
            'h' => 3600,
            _ => 1,
        },
        _ => {
            return err(
                format!("{f}.rateLimit"),
                format!("`{text}` is not a time period (a positive number of seconds, or with an s, m or h suffix)"),
            )
        }
    };
    let scope = match a.rate_limit_scope.as_ref().map(|s| s.as_str()) {
        None | Some(Some("thread")) => RateScope::Thread,
        Some(Some("process")) => RateScope::Process,
        Some(Some("global")) => RateScope::Global,
        _ => {
            return err(
                format!("{f}.rateLimitScope"),
                "expected thread, process or global",
            )
        }
    };
    Ok(Some(RateLimit {
        window: std::time::Duration::from_secs(window),
        scope,
    }))
}

fn actions(raw: Vec<RawAction>, syscall: bool, at: &str) -> Result<Actions> {
    let mut out = Actions::POST;
    for (i, a) in raw.into_iter().enumerate() {
        let f = format!("{at}.matchActions[{i}]");
        if let Some(r) = rate_limit(&a, &f)? {
            out.rate_limit = Some(r);
        }
        for (name, v) in [
            ("kernelStackTrace", &a.kernel_stack_trace),
            ("userStackTrace", &a.user_stack_trace),
        ] {
            unsupported(v, format!("{f}.{name}"), name)?;
        }
        match &a.ima_hash {
            None | Some(serde_yaml::Value::Bool(false)) => {}
            Some(serde_yaml::Value::Bool(true)) if syscall => {
                return err(
                    format!("{f}.imaHash"),
                    "imaHash: a syscall has no binary to hash (Tetragon hashes in LSM hooks only)",
                )
            }
            Some(serde_yaml::Value::Bool(true)) => out.ima_hash = true,
            Some(_) => return err(format!("{f}.imaHash"), "expected true or false"),
        }
        match a.action.to_ascii_lowercase().as_str() {
            "post" => {}
            "nopost" => out.post = false,
            // Socket tracking changes nothing here: see `returns`.
            "tracksock" | "untracksock" => {}
            "sigkill" => out.signal = Some(libc::SIGKILL as u32),
            "signal" => match a.arg_sig {
                Some(sig @ 1..=64) => {
                    if out.signal.is_none() {
                        out.signal = Some(sig);
                    }
                }
                Some(sig) => {
                    return err(
                        format!("{f}.argSig"),
                        format!("{sig} is not a signal number (1 to 64)"),
                    )
                }
                None => return err(format!("{f}.argSig"), "Signal needs argSig"),
            },
            "override" if syscall => {
                return err(
                    format!("{f}.action"),
                    "Override on a syscall needs error injection (bpf_override_return or fmod_ret on the syscall, both behind CONFIG_FUNCTION_ERROR_INJECTION, which Debian's kernels are built without), which this sensor does not use; use Sigkill, Signal or NotifyEnforcer with argSig",
                )
            }
            // A connect is denied in the cgroup hook; an exec in the BPF-LSM
            // hook, which the hook's parser and the kernel check require. A
            // positive argError is its errno too: Tetragon's own example
            // (security-socket-connect-block-others.yaml) writes 1, which
            // its kprobe would return as is, a success value to the caller.
            "override" => match a.arg_error {
                Some(e @ (-4095..=-1 | 1..=4095)) => out.errno = Some(e.unsigned_abs()),
                Some(e) => {
                    return err(
                        format!("{f}.argError"),
                        format!("{e} is not an errno (-1 to -4095, or 1 to 4095)"),
                    )
                }
                None => return err(format!("{f}.argError"), "Override needs argError"),
            },
            // Tetragon's enforcer makes the syscall return argError and
            // sends argSig. Here the signal is sent from sys_enter; the
            // return value would need error injection (bpf_override_return
            // or fmod_ret), so argError is taken only with SIGKILL, whose
            // caller never sees a return value.
            "notifyenforcer" if syscall => {
                match (a.arg_sig, a.arg_error) {
                    (Some(9), _) => out.signal = Some(9),
                    (Some(sig @ 1..=64), None) => {
                        if out.signal.is_none() {
                            out.signal = Some(sig);
                        }
                    }
                    (Some(sig @ 1..=64), Some(_)) => {
                        return err(
                            format!("{f}.argError"),
                            format!("a syscall's return value cannot be changed here (no error injection); argError is taken only with argSig 9 (SIGKILL), not {sig}"),
                        )
                    }
                    (Some(sig), _) => {
                        return err(
                            format!("{f}.argSig"),
                            format!("{sig} is not a signal number (1 to 64)"),
                        )
                    }
                    (None, _) => {
                        return err(
                            format!("{f}.argSig"),
                            "NotifyEnforcer needs argSig: a syscall's return value cannot be changed here (no error injection)",
                        )
                    }
                }
                out.notify = true;
                continue;
            }
            "geturl"
            | "dnslookup"
            | "followfd"
            | "unfollowfd"
            | "copyfd"
            | "notifyenforcer"
            | "cleanupenforcernotification"
            | "set" => {
                return err(
                    format!("{f}.action"),
                    format!("action `{}` is not supported by this sensor", a.action),
                )
            }
            _ => {
                return err(
                    format!("{f}.action"),
                    format!(
                        "unknown action `{}`; expected Post, NoPost, Sigkill or Signal",
                        a.action
                    ),
                )
            }
        }
        if a.arg_error.is_some() && !a.action.eq_ignore_ascii_case("override") {
            return err(format!("{f}.argError"), "argError applies only to Override");
        }
    }
    Ok(out)
}
