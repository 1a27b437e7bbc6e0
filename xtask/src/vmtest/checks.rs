//! What the matrix checks on every kernel, and how one check's output is
//! judged. The checks are the end-to-end tests themselves (the same test
//! binaries the host runs), picked by name, plus the sensor's own probe.
use std::path::Path;

/// One row of the table.
pub struct Check {
    pub name: &'static str,
    pub run: Run,
}

pub enum Run {
    /// `sensor ARGS`.
    Sensor(&'static [&'static str]),
    /// Tests of one integration test target, by exact name.
    Tests {
        target: &'static str,
        names: &'static [&'static str],
    },
}

pub const CHECKS: &[Check] = &[
    Check {
        name: "programs verify and attach",
        run: Run::Sensor(&["probe", "--load"]),
    },
    Check {
        name: "attach and detach under syscall load",
        run: Run::Tests {
            target: "attach",
            names: &["syscall_tracepoints_attach_and_detach_under_syscall_load"],
        },
    },
    Check {
        name: "exec and exit events",
        run: Run::Tests {
            target: "exec",
            names: &[
                "exec_event_carries_binary_args_cwd_uid_and_lineage",
                "exec_event_carries_the_login_uid",
                "enable_process_cred_puts_the_credentials_in_events",
                "enable_process_ns_puts_the_namespaces_in_events",
                "binary_properties_report_set_user_id_and_memfd_execs",
                "exit_reports_status_and_signal",
            ],
        },
    },
    Check {
        name: "exec reflex kills (137)",
        run: Run::Tests {
            target: "reflex",
            names: &[
                "shipped_reflex_kills_curl_in_scope_only",
                "a_path_too_deep_to_resolve_fails_closed",
                "tetragons_elf_begin_example_reports_the_binary_that_runs",
            ],
        },
    },
    Check {
        name: "process states kept, full map reported",
        run: Run::Tests {
            target: "reflex",
            names: &["a_full_process_map_keeps_live_states_and_reports_the_refused"],
        },
    },
    Check {
        name: "evasions seen (loader, script, memfd)",
        run: Run::Tests {
            target: "evasions",
            names: &[
                "loader_script_and_memfd_runs_of_curl_are_caught",
                "a_policy_on_the_loader_itself_still_holds",
            ],
        },
    },
    Check {
        name: "kprobe events (connect Post)",
        run: Run::Tests {
            target: "connect",
            names: &["post_reports_the_backend_and_lets_the_request_through"],
        },
    },
    Check {
        name: "connect Override errno",
        run: Run::Tests {
            target: "connect",
            names: &[
                "override_denies_the_cidr_with_its_errno_and_nothing_else",
                "tetragons_block_others_example_denies_curl_with_its_positive_arg_error",
            ],
        },
    },
    Check {
        name: "connect Sigkill",
        run: Run::Tests {
            target: "connect",
            names: &["sigkill_kills_before_a_packet_leaves"],
        },
    },
    Check {
        name: "socket life (create, send, accept, state, close, listen, kill on send)",
        run: Run::Tests {
            target: "sockets",
            names: &[
                "tetragons_tcp_connect_example_reports_connect_send_and_close",
                "tetragons_tcp_connect_with_selectors_example_reports_loopback_only",
                "tetragons_tcp_listen_example_reports_listens_on_its_ports",
                "sigkill_on_tcp_sendmsg_kills_the_sender_before_the_call_returns",
                "tetragons_tcp_accept_example_reports_sockets_children_and_state_changes",
                "an_accept_made_in_another_tasks_context_names_the_listening_process",
            ],
        },
    },
    Check {
        name: "packets (in, out, by function, rate limit, kill on send, IPv6 ext headers)",
        run: Run::Tests {
            target: "packets",
            names: &[
                "tetragons_datagram_example_reports_a_packet_out_and_in",
                "tetragons_datagram_with_sock_tracking_example_rate_limits_repeats",
                "tetragons_datagram_518_example_reports_each_output_function_and_the_socket_filter",
                "tetragons_dns_only_specified_servers_example_drops_the_query_and_kills_the_sender",
                "ipv6_extension_headers_do_not_hide_the_ports_from_a_port_rule",
            ],
        },
    },
    Check {
        name: "packets of accepted sockets name the listener",
        run: Run::Tests {
            target: "packet_owners",
            names: &["packets_of_an_accepted_socket_name_the_listening_process"],
        },
    },
    Check {
        name: "syscall policies (Post, lists, kill, strings, fds, PIDs, namespaces, returns)",
        run: Run::Tests {
            target: "syscalls",
            names: &[
                "setuid_and_ptrace_post_their_integer_arguments",
                "a_syscall_list_selects_numbers_on_raw_sys_enter",
                "killer_kills_the_binary_it_names_in_the_syscall",
                "integer_filters_are_decided_in_the_kernel",
                "the_syscall_program_is_attached_only_while_a_syscall_policy_is_loaded",
                "an_adopted_set_attaches_its_pinned_syscall_program_and_it_outlives_the_daemon",
                "strings_from_user_memory_are_posted_and_matched_in_the_kernel",
                "match_pids_follows_the_lineage_in_the_pid_namespace",
                "a_hook_with_return_posts_at_the_return_and_filters_on_it",
                "an_fd_argument_is_resolved_to_its_file_and_matched_by_path",
                "match_namespaces_posts_only_calls_outside_the_hosts_pid_namespace",
            ],
        },
    },
    Check {
        name: "quarantine cuts connects and packets",
        run: Run::Tests {
            target: "quarantine",
            names: &["a_labelled_pod_loses_the_network_until_the_label_goes"],
        },
    },
    Check {
        name: "pod-scoped policies",
        run: Run::Tests {
            target: "pods",
            names: &["namespaced_and_pod_selector_policies_act_only_on_their_pods"],
        },
    },
    Check {
        name: "pinned set survives kill -9",
        run: Run::Tests {
            target: "persist",
            names: &[
                "kill_9_leaves_the_reflex_and_the_quarantine_enforcing_and_the_next_daemon_adopts_them",
            ],
        },
    },
    Check {
        name: "upgrade swaps sets with no gap",
        run: Run::Tests {
            target: "persist",
            names: &["an_upgrade_swaps_the_pinned_set_with_no_gap_and_a_plain_stop_removes_it"],
        },
    },
    Check {
        name: "policy changes live, whole",
        run: Run::Tests {
            target: "api",
            names: &[
                "policy_calls_take_effect_before_they_return_and_a_bad_one_changes_nothing",
                "a_policy_switch_is_whole_in_the_kernel_with_no_moment_of_a_mix",
            ],
        },
    },
    Check {
        name: "LSM exec Override (EPERM)",
        run: Run::Tests {
            target: "lsm",
            names: &["lsm_override_fails_the_exec_and_the_caller_lives"],
        },
    },
    Check {
        name: "kprobe bprm Override via LSM",
        run: Run::Tests {
            target: "lsm",
            names: &["kprobe_security_bprm_check_override_goes_through_lsm"],
        },
    },
    Check {
        name: "LSM imaHash (lsm_bprm_check.yaml, Post only)",
        run: Run::Tests {
            target: "lsm",
            names: &[
                "lsm_bprm_check_yaml_refuses_the_exec_and_posts_the_binarys_ima_hash",
                "a_posted_ima_hash_lets_the_exec_run",
            ],
        },
    },
];

impl Check {
    /// The command line, given the sensor and the test binaries' paths.
    pub fn argv(&self, sensor: &Path, test_bin: impl Fn(&str) -> Option<String>) -> Vec<String> {
        match &self.run {
            Run::Sensor(args) => std::iter::once(sensor.display().to_string())
                .chain(args.iter().map(|s| s.to_string()))
                .collect(),
            Run::Tests { target, names } => {
                let mut v =
                    vec![test_bin(target).unwrap_or_else(|| format!("missing-test-{target}"))];
                v.extend(["--exact", "--test-threads=1", "--nocapture"].map(String::from));
                v.extend(names.iter().map(|s| s.to_string()));
                v
            }
        }
    }
}

/// The outcome of one check on one kernel.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    Pass,
    Fail(String),
    Skip(String),
}

impl Outcome {
    /// Judges a check from its exit status and output. A test that cannot
    /// run on this kernel says `SKIP <test>: <why>` and passes; that is a
    /// skip, with the reason, never a pass.
    pub fn judge(exit_ok: bool, output: &str) -> Outcome {
        if !exit_ok {
            return Outcome::Fail(failure_reason(output));
        }
        if let Some(why) = output
            .lines()
            .find_map(|l| l.split_once("SKIP ").map(|(_, rest)| rest))
            .map(|l| l.split_once(": ").map_or(l, |(_, why)| why))
        {
            return Outcome::Skip(why.to_string());
        }
        if output.contains("running 0 tests") {
            return Outcome::Fail("no test of that name".into());
        }
        Outcome::Pass
    }

    pub fn cell(&self) -> String {
        match self {
            Outcome::Pass => "pass".into(),
            Outcome::Fail(_) => "FAIL".into(),
            Outcome::Skip(_) => "skip".into(),
        }
    }
}

/// The most telling line of a failed check's output.
fn failure_reason(output: &str) -> String {
    let lines: Vec<&str> = output.lines().map(str::trim).collect();
    let pick = |pat: &str| {
        lines
            .iter()
            .find(|l| l.contains(pat))
            .map(|l| l.to_string())
    };
    // A verifier refusal: the program, and the verifier's last word (the
    // line before its closing "verification time").
    let program = lines.iter().find_map(|l| {
        let rest = &l[l.find("error: program ")? + "error: program ".len()..];
        rest.split(':').next().map(str::to_string)
    });
    let complaint = lines
        .iter()
        .position(|l| l.contains("verification time"))
        .and_then(|i| lines[..i].iter().rev().find(|l| !l.is_empty()));
    if let (Some(p), Some(c)) = (&program, complaint) {
        return format!("program {p}: {}", c.trim_start_matches("[sensor] "));
    }
    pick("verifier")
        .or_else(|| pick("error:"))
        .or_else(|| pick("panicked at"))
        .or_else(|| {
            lines
                .iter()
                .rev()
                .find(|l| !l.is_empty())
                .map(|l| l.to_string())
        })
        .unwrap_or_else(|| "no output".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_skip_line_makes_a_skip_not_a_pass() {
        let out = "running 1 test\nSKIP t: this kernel lacks BPF-LSM\ntest t ... ok\n";
        assert_eq!(
            Outcome::judge(true, out),
            Outcome::Skip("this kernel lacks BPF-LSM".into())
        );
        assert_eq!(
            Outcome::judge(true, "running 1 test\ntest t ... ok"),
            Outcome::Pass
        );
        assert!(
            matches!(Outcome::judge(false, "x\npanicked at y\n"), Outcome::Fail(r) if r.contains("panicked"))
        );
        assert!(matches!(
            Outcome::judge(true, "running 0 tests\n"),
            Outcome::Fail(_)
        ));
        let refused = "[sensor] error: program snsr_exec: the BPF_PROG_LOAD syscall returned EACCES. Verifier output: 0: R1=ctx()\n[sensor] 12: (85) call\n[sensor] R2 unbounded memory access\n[sensor] verification time 10 usec\n";
        assert_eq!(
            Outcome::judge(false, refused),
            Outcome::Fail("program snsr_exec: R2 unbounded memory access".into())
        );
    }
}
