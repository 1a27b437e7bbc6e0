//! Bad policies: each is refused with exit status 2 and one message naming
//! the file, the field and the reason. Needs no privileges.
mod common;

use std::process::Command;

use common::{policy_file, TempDir, SENSOR};

const HEAD: &str =
    "apiVersion: cilium.io/v1alpha1\nkind: TracingPolicy\nmetadata:\n  name: bad\nspec:\n";

fn kprobe(selectors: &str) -> String {
    format!(
        "{HEAD}  kprobes:\n  - call: security_bprm_check\n    syscall: false\n    args: [{{index: 0, type: linux_binprm}}]\n    selectors:\n{selectors}"
    )
}

fn check(yaml: &str) -> (i32, String) {
    let dir = TempDir::new();
    let file = policy_file(&dir, "bad.yaml", yaml);
    let out = Command::new(SENSOR)
        .args(["policy", "check", &file])
        .output()
        .unwrap();
    let msg = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert!(msg.contains(&file), "message names the file: {msg}");
    assert_eq!(msg.lines().count(), 1, "one message: {msg}");
    (out.status.code().unwrap_or(-1), msg)
}

/// `sensor policy check` accepts `yaml`; returns its standard output.
fn passes(yaml: &str) -> String {
    let dir = TempDir::new();
    let file = policy_file(&dir, "good.yaml", yaml);
    let out = Command::new(SENSOR)
        .args(["policy", "check", &file])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn refused(yaml: &str, field: &str, reason: &str) {
    let (code, msg) = check(yaml);
    assert_eq!(code, 2, "{msg}");
    assert!(msg.contains(field), "names field {field}: {msg}");
    assert!(msg.contains(reason), "says {reason}: {msg}");
}

#[test]
fn malformed_yaml() {
    refused(&format!("{HEAD}  kprobes: [\n"), "(yaml)", "did not find");
}

#[test]
fn unknown_field() {
    refused(
        &kprobe("    - matchArgz: []\n"),
        "spec.kprobes[0].selectors[0]",
        "unknown field `matchArgz`",
    );
}

#[test]
fn unknown_operator() {
    refused(
        &kprobe("    - matchArgs: [{index: 0, operator: Contains, values: [x]}]\n"),
        "spec.kprobes[0].selectors[0].matchArgs[0].operator",
        "unknown operator `Contains`",
    );
}

#[test]
fn operator_that_does_not_fit_a_path() {
    refused(
        &kprobe("    - matchArgs: [{index: 0, operator: DAddr, values: [10.0.0.1]}]\n"),
        "matchArgs[0].operator",
        "does not apply to a string",
    );
}

#[test]
fn unknown_action() {
    refused(
        &kprobe("    - matchActions: [{action: Explode}]\n"),
        "spec.kprobes[0].selectors[0].matchActions[0].action",
        "unknown action `Explode`",
    );
}

#[test]
fn override_on_exec_needs_the_hook_before_the_exec() {
    // sys_execve's selectors act once the exec happened: too late to refuse it.
    refused(
        &format!(
            "{HEAD}  kprobes:\n  - call: sys_execve\n    syscall: true\n    args: [{{index: 0, type: string}}]\n    selectors:\n    - matchActions: [{{action: Override, argError: -1}}]\n"
        ),
        "spec.kprobes[0].selectors[0].matchActions",
        "security_bprm_check or lsmhook bprm_check_security",
    );
    refused(
        &kprobe("    - matchActions: [{action: Override}]\n"),
        "matchActions[0].argError",
        "Override needs argError",
    );
}

#[test]
fn unsupported_hook() {
    refused(
        &format!("{HEAD}  kprobes:\n  - call: do_sys_openat2\n    syscall: false\n"),
        "spec.kprobes[0].call",
        "unsupported hook `do_sys_openat2`",
    );
    refused(
        &format!("{HEAD}  tracepoints:\n  - subsystem: sched\n    event: sched_switch\n"),
        "spec.tracepoints[0].event",
        "unsupported tracepoint",
    );
    refused(
        &format!("{HEAD}  tracepoints:\n  - subsystem: syscalls\n    event: sys_enter_nonesuch\n"),
        "spec.tracepoints[0].event",
        "x86_64 syscall",
    );
    refused(
        &format!("{HEAD}  uprobes: []\n"),
        "spec.uprobes",
        "not supported",
    );
}

#[test]
fn too_many_values() {
    let values: Vec<String> = (0..300).map(|i| format!("/bin/x{i}")).collect();
    refused(
        &kprobe(&format!(
            "    - matchBinaries: [{{operator: In, values: [{}]}}]\n",
            values.join(", ")
        )),
        "spec.kprobes[0].selectors[0].matchBinaries[0].values",
        "300 values; at most 256",
    );
}

#[test]
fn value_too_long() {
    let long = format!("/{}", "a".repeat(300));
    refused(
        &kprobe(&format!(
            "    - matchArgs: [{{index: 0, operator: Prefix, values: [{long}]}}]\n"
        )),
        "matchArgs[0].values[0]",
        "1 to 254 bytes",
    );
}

#[test]
fn follow_children_needs_in_or_not_in() {
    refused(
        &kprobe(
            "    - matchBinaries: [{operator: Prefix, values: [/bin], followChildren: true}]\n",
        ),
        "matchBinaries[0].followChildren",
        "only with the In or NotIn operator",
    );
}

#[test]
fn match_on_an_undeclared_argument() {
    refused(
        &kprobe("    - matchArgs: [{index: 3, operator: Equal, values: [/x]}]\n"),
        "matchArgs[0].index",
        "argument 3 is not declared",
    );
}

#[test]
fn signal_without_arg_sig() {
    refused(
        &kprobe("    - matchActions: [{action: Signal}]\n"),
        "matchActions[0].argSig",
        "needs argSig",
    );
}

#[test]
fn wrong_api_version_and_kind() {
    refused(
        &HEAD.replace("cilium.io/v1alpha1", "v1"),
        "apiVersion",
        "expected cilium.io/v1alpha1",
    );
    refused(
        &HEAD.replace("TracingPolicy", "Pod"),
        "kind",
        "expected TracingPolicy",
    );
}

#[test]
fn too_many_selectors_in_a_hook() {
    refused(
        &kprobe(&"    - matchActions: [{action: Post}]\n".repeat(6)),
        "spec.kprobes[0].selectors",
        "at most 5",
    );
}

#[test]
fn run_refuses_a_bad_policy_with_status_2() {
    let dir = TempDir::new();
    let file = policy_file(
        &dir,
        "bad.yaml",
        &kprobe("    - matchActions: [{action: Explode}]\n"),
    );
    let out = Command::new(SENSOR)
        .args(["run", "--policy", &file])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("matchActions[0].action"));
}

#[test]
fn good_policies_pass_check() {
    let out = passes(&kprobe("    - matchBinaries: [{operator: NotIn, values: [/bin/sh]}]\n      matchActions: [{action: Post}]\n"));
    assert!(out.contains("ok:"));
}

fn tcp(selectors: &str) -> String {
    format!("{HEAD}  kprobes:\n  - call: tcp_connect\n    syscall: false\n    args: [{{index: 0, type: sock}}]\n    selectors:\n{selectors}")
}

#[test]
fn invalid_address_and_cidr() {
    refused(
        &tcp("    - matchArgs: [{index: 0, operator: DAddr, values: [10.0.0.0/8, 10.0.0.300]}]\n"),
        "matchArgs[0].values[1]",
        "not an IP address or CIDR",
    );
    refused(
        &tcp("    - matchArgs: [{index: 0, operator: NotDAddr, values: [\"fd00::/129\"]}]\n"),
        "matchArgs[0].values[0]",
        "prefix length must be 0 to 128",
    );
}

#[test]
fn invalid_port_protocol_and_family() {
    refused(
        &tcp("    - matchArgs: [{index: 0, operator: DPort, values: [\"65536\"]}]\n"),
        "matchArgs[0].values[0]",
        "not a port",
    );
    refused(
        &tcp("    - matchArgs: [{index: 0, operator: Protocol, values: [IPPROTO_QUIC]}]\n"),
        "matchArgs[0].values[0]",
        "not a protocol",
    );
    refused(
        &tcp("    - matchArgs: [{index: 0, operator: Family, values: [AF_NETLINK]}]\n"),
        "matchArgs[0].values[0]",
        "not a family",
    );
}

#[test]
fn operator_that_does_not_fit_a_socket() {
    refused(
        &tcp("    - matchArgs: [{index: 0, operator: Prefix, values: [/bin]}]\n"),
        "matchArgs[0].operator",
        "does not apply to a socket",
    );
    refused(
        &format!("{HEAD}  lsmhooks:\n  - hook: socket_connect\n    args: [{{index: 1, type: sockaddr}}]\n    selectors:\n    - matchArgs: [{{index: 1, operator: DPort, values: [\"80\"]}}]\n"),
        "matchArgs[0].operator",
        "does not apply to a sockaddr",
    );
}

#[test]
fn override_on_connect_needs_an_errno() {
    for bad in ["0", "-4096", "5000"] {
        refused(
            &tcp(&format!(
                "    - matchActions: [{{action: Override, argError: {bad}}}]\n"
            )),
            "matchActions[0].argError",
            "not an errno",
        );
    }
}

#[test]
fn placeholders_without_values_skip_the_file_and_bad_values_are_refused() {
    let yaml = tcp("    - matchArgs: [{index: 0, operator: NotDAddr, values: [127.0.0.1, \"${PODCIDR}\"]}]\n      matchActions: [{action: Sigkill}]\n");
    let dir = TempDir::new();
    let file = policy_file(&dir, "egress.yaml", &yaml);
    let out = Command::new(SENSOR)
        .args(["policy", "check", &file])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("needs the variables PODCIDR"));
    let out = Command::new(SENSOR)
        .args(["policy", "check", &file, "--pod-cidr", "10.0.0.1/99"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("values[1]: `10.0.0.1/99`: prefix length must be 0 to 32"));
}

const BRAIN: &str = "apiVersion: sensor.io/v1alpha1\nkind: BrainRule\nmetadata: {name: r}\nspec:\n";

#[test]
fn bad_brain_rules() {
    refused(
        &format!("{BRAIN}  on: exec\n  actions: [explode]\n"),
        "spec.actions[0]",
        "unknown action `explode`",
    );
    refused(
        &format!("{BRAIN}  on: syscall\n  actions: [alert]\n"),
        "spec.on",
        "unknown event `syscall`",
    );
    refused(&format!("{BRAIN}  on: exec\n  actions: [alert]\n  binary: {{operator: Contains, values: [x]}}\n"), "spec.binary.operator", "unknown operator");
    refused(
        &format!(
            "{BRAIN}  on: policy\n  actions: [quarantine]\n  count: {{atLeast: 3, within: 5d}}\n"
        ),
        "spec.count.within",
        "not a duration",
    );
    refused(
        &format!("{BRAIN}  on: exec\n  actions: [alert]\n  ancestry: {{}}\n"),
        "spec",
        "unknown field `ancestry`",
    );
    refused(&format!("{BRAIN}  on: exec\n  actions: [alert]\n  policy: {{actions: [KPROBE_ACTION_SIGKILL]}}\n"), "spec.policy", "only with on: policy");
}

#[test]
fn namespaced_policy_needs_its_namespace() {
    refused(
        &kprobe("    - matchActions: [{action: Post}]\n")
            .replace("kind: TracingPolicy", "kind: TracingPolicyNamespaced"),
        "metadata.namespace",
        "needs the namespace",
    );
}

/// Self-protection: a kill that would reach the node's agents, PID 1 or the
/// sensor itself is refused with the reason, unless the policy says so.
#[test]
fn a_kill_that_would_reach_protected_binaries_is_refused_unless_annotated() {
    let kubelet = kprobe(
        "    - matchBinaries: [{operator: In, values: [/usr/bin/kubelet]}]\n      matchActions: [{action: Sigkill}]\n",
    );
    refused(
        &kubelet,
        "spec.kprobes[0].selectors[0]",
        "the node agent kubelet",
    );
    refused(
        &kprobe("    - matchActions: [{action: Sigkill}]\n"),
        "spec.kprobes[0].selectors[0]",
        "sensor.io/allow-protected",
    );
    // What the policy's author says goes, and Post alone harms nothing.
    let annotated = kubelet.replace(
        "  name: bad\n",
        "  name: bad\n  annotations: {sensor.io/allow-protected: \"true\"}\n",
    );
    let post = kprobe("    - matchActions: [{action: Post}]\n");
    for ok in [annotated, post] {
        passes(&ok);
    }
}

fn syscall(args: &str, selectors: &str) -> String {
    format!("{HEAD}  kprobes:\n  - call: sys_setuid\n    syscall: true\n    args: {args}\n    selectors:\n{selectors}")
}

#[test]
fn syscall_policies_refuse_what_cannot_be_done_here() {
    let int = "[{index: 0, type: int}]";
    let post = "    - matchActions: [{action: Post}]\n";
    // User memory is copied as a string or a sized buffer only.
    refused(
        &syscall("[{index: 0, type: filename}]", post),
        "spec.kprobes[0].args[0].type",
        "copied as string or char_buf",
    );
    refused(
        &syscall("[{index: 1, type: char_buf}]", post),
        "spec.kprobes[0].args[0].sizeArgIndex",
        "needs sizeArgIndex",
    );
    refused(
        &syscall("[{index: 1, type: char_buf, sizeArgIndex: 2}]", post),
        "spec.kprobes[0].args[0].sizeArgIndex",
        "another argument",
    );
    refused(
        &syscall(
            "[{index: 1, type: char_buf, sizeArgIndex: 3, returnCopy: true}]",
            post,
        ),
        "spec.kprobes[0].args[0].returnCopy",
        "not supported",
    );
    refused(
        &syscall(
            "[{index: 1, type: char_buf, sizeArgIndex: 3}]",
            "    - matchArgs: [{index: 1, operator: Equal, values: [x]}]\n",
        ),
        "spec.kprobes[0].selectors[0].matchArgs[0].index",
        "reported, not filtered on",
    );
    refused(
        &syscall(
            "[{index: 0, type: string}]",
            "    - matchArgs: [{index: 0, operator: GT, values: [\"1\"]}]\n",
        ),
        "spec.kprobes[0].selectors[0].matchArgs[0].operator",
        "does not apply to a string",
    );
    // matchPIDs: In or NotIn, at most 2 entries of 4 PIDs.
    let pids = |entries: &str| syscall(int, &format!("    - matchPIDs: [{entries}]\n"));
    refused(
        &pids("{operator: Is, values: [1]}"),
        "spec.kprobes[0].selectors[0].matchPIDs[0].operator",
        "expected In or NotIn",
    );
    refused(
        &pids(
            "{operator: In, values: [1]}, {operator: In, values: [2]}, {operator: In, values: [3]}",
        ),
        "spec.kprobes[0].selectors[0].matchPIDs",
        "at most 2",
    );
    refused(
        &pids("{operator: In, values: [init]}"),
        "spec.kprobes[0].selectors[0].matchPIDs[0].values[0]",
        "not a PID",
    );
    refused(
        &pids("{operator: In, values: [1, 2, 3, 4, 5]}"),
        "spec.kprobes[0].selectors[0].matchPIDs[0].values",
        "1 to 4 PIDs",
    );
    refused(
        &kprobe("    - matchPIDs: [{operator: In, values: [1]}]\n"),
        "spec.kprobes[0].selectors[0].matchPIDs",
        "syscall hooks only",
    );
    // An fd's path takes the string operators, not the integer ones.
    refused(
        &syscall(
            "[{index: 0, type: fd}]",
            "    - matchArgs: [{index: 0, operator: GT, values: [\"1\"]}]\n",
        ),
        "spec.kprobes[0].selectors[0].matchArgs[0].operator",
        "does not apply to a string",
    );
    refused(
        &syscall(
            "[{index: 6, type: int}]",
            "    - matchActions: [{action: Post}]\n",
        ),
        "spec.kprobes[0].args[0].index",
        "arguments 0 to 5",
    );
    refused(
        &syscall(
            int,
            "    - matchActions: [{action: Override, argError: -1}]\n",
        ),
        "spec.kprobes[0].selectors[0].matchActions[0].action",
        "error injection",
    );
    refused(
        &syscall(
            int,
            "    - matchActions: [{action: NotifyEnforcer, argError: -1, argSig: 10}]\n",
        ),
        "spec.kprobes[0].selectors[0].matchActions[0].argError",
        "only with argSig 9",
    );
    refused(
        &syscall(int, "    - matchActions: [{action: NotifyEnforcer}]\n"),
        "spec.kprobes[0].selectors[0].matchActions[0].argSig",
        "NotifyEnforcer needs argSig",
    );
    refused(
        &syscall(
            int,
            "    - matchArgs: [{index: 0, operator: Prefix, values: [\"1\"]}]\n",
        ),
        "spec.kprobes[0].selectors[0].matchArgs[0].operator",
        "does not apply to an integer",
    );
    refused(
        &syscall(int, "    - matchArgs: [{index: 0, operator: Equal, values: [\"1\", \"2\", \"3\", \"4\", \"5\"]}]\n"),
        "spec.kprobes[0].selectors[0].matchArgs[0].values",
        "at most 4 values",
    );
    refused(
        &syscall(
            int,
            "    - matchArgs: [{index: 0, operator: Equal, values: [root]}]\n",
        ),
        "spec.kprobes[0].selectors[0].matchArgs[0].values[0]",
        "not an integer",
    );
    // The exit side: return: true with a returnArg of an integer type, and
    // one matchReturnArgs on it.
    let ret = |extra: &str, selectors: &str| {
        format!("{HEAD}  kprobes:\n  - call: sys_setuid\n    syscall: true\n{extra}    args: [{{index: 0, type: int}}]\n    selectors:\n{selectors}")
    };
    refused(
        &ret("    return: true\n", post),
        "spec.kprobes[0].returnArg",
        "needs returnArg",
    );
    refused(
        &ret("    returnArg: {index: 0, type: int}\n", post),
        "spec.kprobes[0].returnArg",
        "with return: true",
    );
    refused(
        &ret(
            "    return: true\n    returnArg: {index: 0, type: string}\n",
            post,
        ),
        "spec.kprobes[0].returnArg.type",
        "does not fit a syscall's return value",
    );
    refused(
        &ret(
            "",
            "    - matchReturnArgs: [{index: 0, operator: GT, values: [\"0\"]}]\n",
        ),
        "spec.kprobes[0].selectors[0].matchReturnArgs",
        "with return: true",
    );
    refused(
        &ret(
            "    return: true\n    returnArg: {index: 0, type: int}\n",
            "    - matchReturnArgs: [{index: 1, operator: GT, values: [\"0\"]}]\n",
        ),
        "spec.kprobes[0].selectors[0].matchReturnArgs[0].index",
        "index 0",
    );
    refused(
        &ret(
            "    return: true\n    returnArg: {index: 0, type: int}\n",
            "    - matchReturnArgs: [{index: 0, operator: Prefix, values: [x]}]\n",
        ),
        "spec.kprobes[0].selectors[0].matchReturnArgs[0].operator",
        "does not apply to an integer",
    );
    let list = |name: &str, ty: &str, value: &str| {
        format!("{HEAD}  lists:\n  - name: {name}\n    type: {ty}\n    values: [{value}]\n  tracepoints:\n  - subsystem: raw_syscalls\n    event: sys_enter\n    args: [{{index: 4, type: syscall64}}]\n    selectors:\n    - matchArgs: [{{index: 0, operator: InMap, values: [\"list:dups\"]}}]\n")
    };
    refused(
        &list("dups", "generated_ftrace", "sys_dup"),
        "spec.lists[0].type",
        "only lists of type syscalls and generated_syscalls",
    );
    refused(
        &list("dups", "syscalls", "sys_nonesuch"),
        "spec.lists[0].values[0]",
        "not an x86_64 syscall",
    );
    refused(
        &list("other", "syscalls", "sys_dup"),
        "spec.tracepoints[0].selectors[0].matchArgs[0].values[0]",
        "no list named `dups`",
    );
    // A kill on every caller of a syscall would reach the node's agents.
    refused(
        &syscall(int, "    - matchActions: [{action: Sigkill}]\n"),
        "spec.kprobes[0].selectors[0]",
        "would reach",
    );
}

fn sock_hook(call: &str, extra_args: &str, selectors: &str) -> String {
    format!("{HEAD}  kprobes:\n  - call: {call}\n    syscall: false\n    args: [{{index: 0, type: sock}}{extra_args}]\n    selectors:\n{selectors}")
}

#[test]
fn socket_life_hooks_refuse_what_their_kernel_hooks_cannot_do() {
    refused(
        &sock_hook("tcp_close", "", "    - matchActions: [{action: Sigkill}]\n"),
        "selectors[0].matchActions",
        "cannot send a signal",
    );
    for call in ["tcp_close", "tcp_sendmsg", "inet_csk_listen_start"] {
        refused(
            &sock_hook(
                call,
                "",
                "    - matchActions: [{action: Override, argError: -1}]\n",
            ),
            "selectors[0].matchActions",
            "Override is not possible on this hook",
        );
    }
    refused(
        &sock_hook(
            "tcp_sendmsg",
            ", {index: 2, type: int}",
            "    - matchArgs: [{index: 2, operator: GT, values: [\"100\"]}]\n",
        ),
        "matchArgs[0].index",
        "the size sent) is reported, not filtered on",
    );
    // A send's signal is sent from a tracing program: accepted.
    passes(&sock_hook(
        "tcp_sendmsg",
        "",
        "    - matchArgs: [{index: 0, operator: DPort, values: [\"25\"]}]\n      matchActions: [{action: Sigkill}]\n",
    ));
}

#[test]
fn socket_lifecycle_hooks_report_and_refuse_what_they_cannot_do() {
    let alloc = |actions: &str| {
        format!("{HEAD}  kprobes:\n  - call: sk_alloc\n    syscall: false\n    return: true\n    args: [{{index: 1, type: int}}]\n    returnArg: {{index: 0, type: sock}}\n    returnArgAction: TrackSock\n    selectors:\n    - matchArgs: [{{index: 1, operator: Equal, values: [\"2\"]}}]\n{actions}")
    };
    // Socket creation posts; tracking actions are accepted.
    passes(&alloc(""));
    passes(&alloc("      matchActions: [{action: NoPost}]\n"));
    refused(
        &alloc("      matchActions: [{action: Sigkill}]\n"),
        "spec.kprobes[0].selectors[0].matchActions",
        "cannot send a signal",
    );
    refused(
        &alloc("").replace("TrackSock", "UntrackSock"),
        "spec.kprobes[0].returnArgAction",
        "only TrackSock applies",
    );
    refused(
        &alloc("").replace("operator: Equal", "operator: NotEqual"),
        "spec.kprobes[0].selectors[0].matchArgs[0].operator",
        "expected Equal",
    );
    refused(
        &alloc("").replace("type: sock}", "type: int}"),
        "spec.kprobes[0].returnArg.type",
        "expected sock",
    );
    let state = |sel: &str| {
        format!("{HEAD}  kprobes:\n  - call: tcp_set_state\n    syscall: false\n    args: [{{index: 0, type: sock}}, {{index: 1, type: int}}]\n    selectors:\n{sel}")
    };
    passes(&state("    - matchArgs:\n      - {index: 0, operator: State, values: [TCP_SYN_RECV]}\n      - {index: 1, operator: NotEqual, values: [\"1\", TCP_CLOSE]}\n"));
    refused(
        &state("    - matchArgs: [{index: 0, operator: State, values: [TCP_SYN_RECEIVED]}]\n"),
        "spec.kprobes[0].selectors[0].matchArgs[0].values[0]",
        "not a TCP state",
    );
    refused(
        &state("    - matchActions: [{action: Sigkill}]\n"),
        "spec.kprobes[0].selectors[0].matchActions",
        "softirq",
    );
    refused(
        &state("    - matchArgs: [{index: 1, operator: GT, values: [\"1\"]}]\n"),
        "spec.kprobes[0].selectors[0].matchArgs[0].operator",
        "Equal or NotEqual",
    );
    // The connect hooks do not see the state.
    refused(
        &format!("{HEAD}  kprobes:\n  - call: tcp_connect\n    syscall: false\n    args: [{{index: 0, type: sock}}]\n    selectors:\n    - matchArgs: [{{index: 0, operator: State, values: [TCP_SYN_SENT]}}]\n"),
        "spec.kprobes[0].selectors[0].matchArgs",
        "does not see the socket's TCP state",
    );
    // TrackSock applies only where a socket is returned.
    refused(
        &format!("{HEAD}  kprobes:\n  - call: tcp_close\n    syscall: false\n    args: [{{index: 0, type: sock}}]\n    returnArgAction: TrackSock\n"),
        "spec.kprobes[0].returnArgAction",
        "does not return a socket",
    );
}

#[test]
fn packet_hooks_filter_the_packet_and_only_report() {
    let pkt = |call: &str, args: &str, sel: &str| {
        format!("{HEAD}  kprobes:\n  - call: {call}\n    syscall: false\n    args: {args}\n    selectors:\n{sel}")
    };
    let skb = "[{index: 0, type: sock}, {index: 1, type: skb}, {index: 2, type: int}]";
    let out = "[{index: 1, type: sock}, {index: 2, type: skb}]";
    passes(&pkt(
        "__cgroup_bpf_run_filter_skb",
        skb,
        "    - matchArgs: [{index: 1, operator: DAddr, values: [127.0.0.1/8]}, {index: 1, operator: Protocol, values: [IPPROTO_UDP]}]\n      matchActions: [{action: Post, rateLimit: 1m, rateLimitScope: global}]\n",
    ));
    // An outgoing packet can be dropped and its sender killed; a received
    // one cannot be taken back.
    passes(&pkt("ip_output", out, "    - matchArgs: [{index: 2, operator: DPort, values: [\"53\"]}]\n      matchActions: [{action: Sigkill}]\n"));
    refused(
        &pkt(
            "sk_filter_trim_cap",
            "[{index: 0, type: sock}, {index: 1, type: skb}]",
            "    - matchArgs: [{index: 1, operator: DPort, values: [\"53\"]}]\n      matchActions: [{action: Sigkill}]\n",
        ),
        "spec.kprobes[0].selectors[0].matchActions",
        "a received packet",
    );
    refused(
        &pkt(
            "sk_filter_trim_cap",
            "[{index: 0, type: sock}, {index: 1, type: skb}]",
            "    - matchArgs: [{index: 0, operator: DPort, values: [\"53\"]}]\n",
        ),
        "spec.kprobes[0].selectors[0].matchArgs[0].index",
        "filter on the skb argument",
    );
    refused(
        &pkt(
            "__cgroup_bpf_run_filter_skb",
            skb,
            "    - matchArgs: [{index: 2, operator: Equal, values: [\"1\"]}]\n",
        ),
        "spec.kprobes[0].selectors[0].matchArgs[0].index",
        "the direction",
    );
    refused(
        &pkt(
            "__cgroup_bpf_run_filter_skb",
            skb,
            "    - matchArgs: [{index: 1, operator: State, values: [TCP_CLOSE]}]\n",
        ),
        "spec.kprobes[0].selectors[0].matchArgs[0].operator",
        "does not apply to a packet",
    );
    // ip_output implies IPv4 and a unicast destination: two filters more.
    refused(
        &pkt("ip_output", out, "    - matchArgs:\n      - {index: 2, operator: DPort, values: [\"53\"]}\n      - {index: 2, operator: SPort, values: [\"53\"]}\n      - {index: 2, operator: Protocol, values: [IPPROTO_UDP]}\n      - {index: 2, operator: SAddr, values: [10.0.0.0/8]}\n"),
        "spec.kprobes[0].selectors[0].matchArgs",
        "that ip_output implies",
    );
    let rate = |action: &str| {
        pkt(
            "__cgroup_bpf_run_filter_skb",
            skb,
            &format!("    - matchActions: [{action}]\n"),
        )
    };
    refused(
        &rate("{action: Post, rateLimit: 5d}"),
        "spec.kprobes[0].selectors[0].matchActions[0].rateLimit",
        "not a time period",
    );
    refused(
        &rate("{action: Post, rateLimitScope: process}"),
        "spec.kprobes[0].selectors[0].matchActions[0].rateLimitScope",
        "needs rateLimit",
    );
    refused(
        &rate("{action: NoPost, rateLimit: \"5\"}"),
        "spec.kprobes[0].selectors[0].matchActions[0].rateLimit",
        "applies only to Post",
    );
    refused(
        &rate("{action: Post, rateLimit: \"5\", rateLimitScope: cluster}"),
        "spec.kprobes[0].selectors[0].matchActions[0].rateLimitScope",
        "thread, process or global",
    );
}

#[test]
fn ima_hash_is_computed_only_on_the_lsm_exec_hook() {
    // `security_bprm_check` is a kprobe: Tetragon hashes in LSM hooks only.
    refused(
        &kprobe("    - matchActions: [{action: Post, imaHash: true}]\n"),
        "spec.kprobes[0].selectors[0].matchActions",
        "only on lsmhook bprm_check_security",
    );
    refused(
        &syscall(
            "[{index: 0, type: int}]",
            "    - matchActions: [{action: Post, imaHash: true}]\n",
        ),
        "spec.kprobes[0].selectors[0].matchActions[0].imaHash",
        "a syscall has no binary to hash",
    );
    let lsm = |action: &str| {
        format!("{HEAD}  lsmhooks:\n  - hook: bprm_check_security\n    args: [{{index: 0, type: linux_binprm}}]\n    selectors:\n    - matchActions: [{action}]\n")
    };
    refused(
        &lsm("{action: Post, imaHash: sha256}"),
        "spec.lsmhooks[0].selectors[0].matchActions[0].imaHash",
        "expected true or false",
    );
    // On paper it passes; whether this kernel can hash is decided at load.
    passes(&lsm("{action: Post, imaHash: true}"));
    passes(&lsm("{action: Post, imaHash: false}"));
}

#[test]
fn match_namespaces_is_checked_and_only_on_syscall_hooks() {
    let ns = |entry: &str| {
        syscall(
            "[{index: 0, type: int}]",
            &format!("    - matchNamespaces: [{entry}]\n"),
        )
    };
    passes(&ns("{namespace: Pid, operator: NotIn, values: [host_ns]}"));
    passes(&ns(
        "{namespace: Mnt, operator: In, values: [\"4026531841\", 4026531840]}",
    ));
    refused(
        &ns("{namespace: Pids, operator: In, values: [host_ns]}"),
        "spec.kprobes[0].selectors[0].matchNamespaces[0].namespace",
        "unknown namespace `Pids`",
    );
    refused(
        &ns("{namespace: Net, operator: Is, values: [host_ns]}"),
        "spec.kprobes[0].selectors[0].matchNamespaces[0].operator",
        "expected In or NotIn",
    );
    refused(
        &ns("{namespace: Net, operator: In, values: [host]}"),
        "spec.kprobes[0].selectors[0].matchNamespaces[0].values[0]",
        "not a namespace inode number or host_ns",
    );
    refused(
        &ns("{namespace: Net, operator: In, values: [1, 2, 3, 4, 5]}"),
        "spec.kprobes[0].selectors[0].matchNamespaces[0].values",
        "1 to 4 namespaces",
    );
    refused(
        &kprobe("    - matchNamespaces: [{namespace: Pid, operator: NotIn, values: [host_ns]}]\n"),
        "spec.kprobes[0].selectors[0].matchNamespaces",
        "syscall hooks only",
    );
}
