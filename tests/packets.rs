//! Packets, with Tetragon's UDP examples as shipped (comments left out):
//! `datagram.yaml` (every packet, both ways), `datagram-with-sock-tracking.yaml`
//! (sockets created and freed, and loopback UDP packets, rate-limited) and
//! `datagram_518.yaml` (the output and socket-filter functions) and
//! `dns-only-specified-servers.yaml` (Sigkill on `ip_output`, over UDP and
//! TCP); and a port rule that IPv6 extension headers do not blind. Each script
//! runs in the test's cgroup, to which the daemon is scoped, inside a
//! network namespace of the test's own.
mod common;

use std::time::Duration;

use common::netns::LoopbackNs;
use common::*;
use serde_json::Value;

const DATAGRAM: &str = r#"apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata:
  name: "datagram"
spec:
  kprobes:
  - call: "__cgroup_bpf_run_filter_skb"
    syscall: false
    args:
      - index: 0
        type: sock
      - index: 1
        type: skb
      - index: 2
        type: int

"#;

const DATAGRAM_WITH_SOCK_TRACKING: &str = r#"apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata:
  name: "datagram"
spec:
  kprobes:
  - call: "sk_alloc"
    syscall: false
    return: true
    args:
      - index: 1
        type: int
        label: "family"
    returnArg:
      index: 0
      type: sock
    returnArgAction: TrackSock
    selectors:
      - matchArgs:
        - index: 1
          operator: "Equal"
          values:
          - "2"
  - call: "__sk_free"
    syscall: false
    args:
      - index: 0
        type: sock
    selectors:
      - matchActions:
        - action: UntrackSock
          argSock: 0
  - call: "__cgroup_bpf_run_filter_skb"
    syscall: false
    args:
      - index: 0
        type: sock
      - index: 1
        type: skb
      - index: 2
        type: int
        label: "send"
    selectors:
      - matchArgs:
        - index: 1
          operator: "DAddr"
          values:
          - "127.0.0.1/32"
        - index: 1
          operator: "Protocol"
          values:
          - "IPPROTO_UDP"
        matchActions:
        - action: Post
          rateLimit: "5"

"#;

const DATAGRAM_518: &str = r#"apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata:
  name: "datagram-518"
spec:
  kprobes:
  - call: "sk_alloc"
    syscall: false
    return: true
    args:
      - index: 1
        type: int
    returnArg:
      index: 0
      type: sock
    returnArgAction: TrackSock
    selectors:
      - matchArgs:
        - index: 1
          operator: "Equal"
          values:
          - "2"
          - "10"
  - call: "__sk_free"
    syscall: false
    args:
      - index: 0
        type: sock
    selectors:
      - matchArgs:
        - index: 0
          operator: "Family"
          values:
          - "2"
          - "10"
      - matchActions:
        - action: UntrackSock
  - call: "sk_filter_trim_cap"
    syscall: false
    args:
    - index: 0
      type: sock
    - index: 1
      type: skb
      label: "datagram"
    selectors:
      - matchArgs:
        - index: 1
          operator: "Protocol"
          values:
          - "IPPROTO_UDP"
        - index: 1
          operator: "DAddr"
          values:
          - "127.0.0.1/32"
          - "::1/128"
  - call: "ip_output"
    syscall: false
    args:
    - index: 1
      type: sock
      label: "sock"
    - index: 2
      type: skb
      label: "datagram"
    selectors:
      - matchArgs:
        - index: 2
          operator: "Protocol"
          values:
          - "IPPROTO_UDP"
        - index: 2
          operator: "DAddr"
          values:
          - "127.0.0.1/32"
          - "::1/128"
  - call: "ip_mc_output"
    syscall: false
    args:
    - index: 1
      type: sock
      label: "sock"
    - index: 2
      type: skb
      label: "datagram"
    selectors:
      - matchArgs:
        - index: 2
          operator: "Protocol"
          values:
          - "IPPROTO_UDP"
        - index: 2
          operator: "DAddr"
          values:
          - "127.0.0.1/32"
          - "::1/128"
  - call: "ip6_output"
    syscall: false
    args:
    - index: 1
      type: sock
      label: "sock"
    - index: 2
      type: skb
      label: "datagram"
    selectors:
      - matchArgs:
        - index: 2
          operator: "Protocol"
          values:
          - "IPPROTO_UDP"
        - index: 2
          operator: "DAddr"
          values:
          - "127.0.0.1/32"
          - "::1/128"

"#;

/// Tetragon's `dns-only-specified-servers.yaml`, as shipped (comments left
/// out).
const DNS_ONLY_SPECIFIED_SERVERS: &str = r#"apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata:
  name: "dns-only-specified-servers"
spec:
  kprobes:
  - call: "ip_output"
    syscall: false
    args:
    - index: 2
      type: "skb"
    selectors:
    - matchArgs:
      - index: 2
        operator: "Protocol"
        values:
        - "IPPROTO_TCP"
        - "IPPROTO_UDP"
      - index: 2
        operator: "DPort"
        values:
        - "53"
      - index: 2
        operator: "NotDAddr"
        values:
        - "127.0.0.53"
      matchActions:
      - action: "Sigkill"
"#;

/// A DNS query to `argv[1]` port 53 over `argv[2]` (`udp` or `tcp`) from
/// a forked child, with a server there; the parent prints the child's pid,
/// the signal that ended it (or minus its exit status), and whether the
/// query arrived. A child whose send or connect fails waits to be killed;
/// a TCP connect whose SYN is dropped waits in the kernel's retries.
const DNS_QUERY: &str = r#"
import os, socket, sys, time
addr, proto = sys.argv[1], sys.argv[2]
kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
server = socket.socket(socket.AF_INET, kind)
server.bind((addr, 53))
server.settimeout(1)
if proto == "tcp":
    server.listen()
pid = os.fork()
if pid == 0:
    client = socket.socket(socket.AF_INET, kind)
    try:
        if proto == "tcp":
            client.settimeout(5)
            client.connect((addr, 53))
            client.sendall(b"query")
        else:
            client.sendto(b"query", (addr, 53))
        os.write(1, b"sent\n")
        os._exit(0)
    except OSError as e:
        # One write: the daemon may kill this child at any moment, and
        # print() can be cut between its pieces.
        os.write(1, b"errno %d\n" % (e.errno or 0))
    time.sleep(10)
    os._exit(0)
_, status = os.waitpid(pid, 0)
try:
    if proto == "tcp":
        conn, _ = server.accept()
        conn.settimeout(1)
        got = "received" if conn.recv(16) else "nothing"
    else:
        server.recvfrom(16)
        got = "received"
except socket.timeout:
    got = "nothing"
end = os.WTERMSIG(status) if os.WIFSIGNALED(status) else -os.WEXITSTATUS(status)
print(pid, end, got)
"#;

/// Sends `count` datagrams of 4 bytes from a client socket to a server
/// socket on `addr` port 9999, each received; prints the client's port.
/// With a third argument, `exthdr`, an IPv6 client's datagrams carry two
/// extension headers (hop-by-hop and destination options, each one PadN
/// option) between the IPv6 and the UDP header.
const UDP: &str = r#"
import socket, sys
family = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
server = socket.socket(family, socket.SOCK_DGRAM)
server.bind((sys.argv[1], 9999))
client = socket.socket(family, socket.SOCK_DGRAM)
if sys.argv[3:] == ["exthdr"]:
    padn = bytes([0, 0, 1, 4, 0, 0, 0, 0])
    client.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_HOPOPTS, padn)
    client.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_DSTOPTS, padn)
for _ in range(int(sys.argv[2])):
    client.sendto(b"ping", (sys.argv[1], 9999))
    server.recvfrom(16)
print(client.getsockname()[1])
client.close()
server.close()
"#;

/// Runs `UDP` in the test's cgroup inside `ns`; returns the client's port.
fn udp(cg: &TestCgroup, ns: &LoopbackNs, addr: &str, count: u32) -> u64 {
    udp_with(cg, ns, &[addr, &count.to_string()])
}

/// Runs `UDP` with `args`; returns the client's port.
fn udp_with(cg: &TestCgroup, ns: &LoopbackNs, args: &[&str]) -> u64 {
    ns.run_python(cg, UDP, args)
        .trim()
        .parse()
        .expect("the client's port")
}

#[test]
fn tetragons_datagram_example_reports_a_packet_out_and_in() {
    if !can_run("tetragons_datagram_example_reports_a_packet_out_and_in") {
        return;
    }
    let ns = LoopbackNs::new();
    let (daemon, cg, _d) = daemon_in_own_cgroup(DATAGRAM);
    let client = udp(&cg, &ns, "127.0.0.1", 1);
    let f = "__cgroup_bpf_run_filter_skb";
    eventually("both packets", || kprobe_events(&daemon, f).len() >= 2);
    std::thread::sleep(Duration::from_millis(500));
    let packets = kprobe_events(&daemon, f);
    assert_eq!(packets.len(), 2, "one datagram, out then in: {packets:?}");
    let python = resolved("/usr/bin/python3");
    for (k, direction) in packets.iter().zip([1, 0]) {
        assert_eq!(kprobe_arg(k, "int_arg"), direction, "{k}");
        let skb = kprobe_arg(k, "skb_arg");
        assert_eq!(skb["family"], "AF_INET", "{k}");
        assert_eq!(skb["protocol"], "IPPROTO_UDP", "{k}");
        assert_eq!(skb["proto"], 17, "{k}");
        assert_eq!(skb["len"], 20 + 8 + 4, "IP, UDP and the payload: {k}");
        assert_eq!(skb["saddr"], "127.0.0.1", "{k}");
        assert_eq!(skb["sport"], client, "{k}");
        assert_eq!(skb["dport"], 9999, "{k}");
        assert_eq!(k["process"]["binary"], python, "the socket's creator");
    }
    // The socket each packet belongs to: the client's out, the server's in.
    assert_eq!(kprobe_arg(&packets[0], "sock_arg")["sport"], client);
    assert_eq!(kprobe_arg(&packets[1], "sock_arg")["sport"], 9999);
    assert_eq!(kprobe_arg(&packets[1], "sock_arg")["type"], "SOCK_DGRAM");
}

#[test]
fn tetragons_datagram_with_sock_tracking_example_rate_limits_repeats() {
    if !can_run("tetragons_datagram_with_sock_tracking_example_rate_limits_repeats") {
        return;
    }
    let ns = LoopbackNs::new();
    let (daemon, cg, _d) = daemon_in_own_cgroup(DATAGRAM_WITH_SOCK_TRACKING);
    udp(&cg, &ns, "127.0.0.1", 3);
    eventually("both sockets freed", || {
        kprobe_events(&daemon, "__sk_free").len() >= 2
    });
    std::thread::sleep(Duration::from_millis(500));
    // Two AF_INET sockets made and freed.
    let allocs = kprobe_events(&daemon, "sk_alloc");
    assert_eq!(allocs.len(), 2, "{allocs:?}");
    assert!(
        allocs.iter().all(|k| kprobe_arg(k, "int_arg") == 2),
        "{allocs:?}"
    );
    assert!(allocs
        .iter()
        .all(|k| k["return"]["sock_arg"]["type"] == "SOCK_DGRAM"));
    assert_eq!(kprobe_events(&daemon, "__sk_free").len(), 2);
    // Three identical datagrams to 127.0.0.1 within rateLimit's 5 s: one
    // posted out, one in.
    let packets = kprobe_events(&daemon, "__cgroup_bpf_run_filter_skb");
    let ways: Vec<&Value> = packets.iter().map(|k| kprobe_arg(k, "int_arg")).collect();
    assert_eq!(ways, [1, 0], "{packets:?}");
}

#[test]
fn tetragons_datagram_518_example_reports_each_output_function_and_the_socket_filter() {
    if !can_run("tetragons_datagram_518_example_reports_each_output_function_and_the_socket_filter")
    {
        return;
    }
    let ns = LoopbackNs::new();
    let (daemon, cg, _d) = daemon_in_own_cgroup(DATAGRAM_518);
    let v4 = udp(&cg, &ns, "127.0.0.1", 1);
    let v6 = udp(&cg, &ns, "::1", 1);
    eventually("four packets", || {
        kprobe_events(&daemon, "sk_filter_trim_cap").len() >= 2
            && !kprobe_events(&daemon, "ip6_output").is_empty()
    });
    std::thread::sleep(Duration::from_millis(500));
    let out4 = kprobe_events(&daemon, "ip_output");
    assert_eq!(out4.len(), 1, "the IPv4 datagram: {out4:?}");
    assert_eq!(kprobe_arg(&out4[0], "skb_arg")["sport"], v4);
    assert_eq!(kprobe_arg(&out4[0], "skb_arg")["daddr"], "127.0.0.1");
    let out6 = kprobe_events(&daemon, "ip6_output");
    assert_eq!(out6.len(), 1, "the IPv6 datagram: {out6:?}");
    assert_eq!(kprobe_arg(&out6[0], "skb_arg")["family"], "AF_INET6");
    assert_eq!(kprobe_arg(&out6[0], "skb_arg")["daddr"], "::1");
    assert_eq!(kprobe_arg(&out6[0], "skb_arg")["sport"], v6);
    assert_eq!(kprobe_arg(&out6[0], "sock_arg")["family"], "AF_INET6");
    let filtered = kprobe_events(&daemon, "sk_filter_trim_cap");
    let mut senders: Vec<u64> = filtered
        .iter()
        .map(|k| kprobe_arg(k, "skb_arg")["sport"].as_u64().unwrap_or(0))
        .collect();
    senders.sort();
    let mut expected = vec![v4, v6];
    expected.sort();
    assert_eq!(senders, expected, "both received: {filtered:?}");
    assert!(
        kprobe_events(&daemon, "ip_mc_output").is_empty(),
        "no multicast"
    );
    // Four sockets, AF_INET and AF_INET6, made and freed.
    assert_eq!(kprobe_events(&daemon, "sk_alloc").len(), 4);
    assert_eq!(kprobe_events(&daemon, "__sk_free").len(), 4);
}

/// Both directions of IPv6 datagrams to port 9999, chosen by port only:
/// what a port rule on IPv6 looks like.
const IPV6_PORT: &str = r#"apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata:
  name: "ipv6-port"
spec:
  kprobes:
  - call: "ip6_output"
    syscall: false
    args:
    - index: 2
      type: "skb"
    selectors:
    - matchArgs:
      - index: 2
        operator: "DPort"
        values:
        - "9999"
  - call: "sk_filter_trim_cap"
    syscall: false
    args:
    - index: 1
      type: "skb"
    selectors:
    - matchArgs:
      - index: 1
        operator: "DPort"
        values:
        - "9999"
"#;

/// Extension headers between the IPv6 and the transport header do not
/// hide the ports: a sender that adds them (a routing header needs no
/// privilege) is still matched by a port rule, both ways.
#[test]
fn ipv6_extension_headers_do_not_hide_the_ports_from_a_port_rule() {
    if !can_run("ipv6_extension_headers_do_not_hide_the_ports_from_a_port_rule") {
        return;
    }
    let ns = LoopbackNs::new();
    let (daemon, cg, _d) = daemon_in_own_cgroup(IPV6_PORT);
    let client = udp_with(&cg, &ns, &["::1", "1", "exthdr"]);
    eventually("the datagram out and in", || {
        !kprobe_events(&daemon, "ip6_output").is_empty()
            && !kprobe_events(&daemon, "sk_filter_trim_cap").is_empty()
    });
    std::thread::sleep(Duration::from_millis(300));
    for function in ["ip6_output", "sk_filter_trim_cap"] {
        let seen = kprobe_events(&daemon, function);
        assert_eq!(seen.len(), 1, "{function}: {seen:?}");
        let skb = kprobe_arg(&seen[0], "skb_arg");
        assert_eq!(skb["protocol"], "IPPROTO_UDP", "{function}: {skb}");
        assert_eq!(skb["sport"], client, "{function}: {skb}");
        assert_eq!(skb["dport"], 9999, "{function}: {skb}");
        assert_eq!(skb["daddr"], "::1", "{function}: {skb}");
    }
}

/// Runs `DNS_QUERY` to `addr` over `proto` in the test's cgroup inside
/// `ns`: the child's report, its pid, how it ended and whether the query
/// arrived.
fn dns_query(
    cg: &TestCgroup,
    ns: &LoopbackNs,
    addr: &str,
    proto: &str,
) -> (String, u64, i32, String) {
    let text = ns.run_python(cg, DNS_QUERY, &[addr, proto]);
    let lines: Vec<&str> = text.lines().collect();
    let last: Vec<&str> = lines
        .last()
        .expect("the parent's line")
        .split(' ')
        .collect();
    // The child's line is missing when it was killed before it could say.
    let said = if lines.len() > 1 { lines[0] } else { "" };
    (
        said.to_string(),
        last[0]
            .parse()
            .unwrap_or_else(|e| panic!("pid ({e}) in {text:?}")),
        last[1]
            .parse()
            .unwrap_or_else(|e| panic!("end ({e}) in {text:?}")),
        last[2].to_string(),
    )
}

#[test]
fn tetragons_dns_only_specified_servers_example_drops_the_query_and_kills_the_sender() {
    if !can_run("tetragons_dns_only_specified_servers_example_drops_the_query_and_kills_the_sender")
    {
        return;
    }
    let ns = LoopbackNs::new();
    let (daemon, cg, _d) = daemon_in_own_cgroup(DNS_ONLY_SPECIFIED_SERVERS);
    // The example matches UDP and TCP alike.
    for (proto, protocol) in [("udp", "IPPROTO_UDP"), ("tcp", "IPPROTO_TCP")] {
        // The approved server: the query arrives and the sender lives.
        let (said, _, end, got) = dns_query(&cg, &ns, "127.0.0.53", proto);
        assert_eq!(
            (said.as_str(), end, got.as_str()),
            ("sent", 0, "received"),
            "{proto} to the approved server"
        );

        // Any other: the query never leaves and the sender is killed. A UDP
        // send fails with EPERM; a TCP connect waits for a SYN that was
        // dropped (the kernel retries it).
        let (said, pid, end, got) = dns_query(&cg, &ns, "127.0.0.1", proto);
        assert!(
            said == "errno 1" || said.is_empty(),
            "{proto}: the kernel dropped the packet (the sender's send failed, or it was killed first): {said}"
        );
        assert_eq!(end, 9, "{proto}: the sender was killed");
        assert_eq!(got, "nothing", "{proto}");
        let k = daemon.wait_for(&format!("the {proto} ip_output event"), |e| {
            body(e, "process_kprobe")
                .is_some_and(|k| k["function_name"] == "ip_output" && k["process"]["pid"] == pid)
        });
        let k = &k["process_kprobe"];
        assert_eq!(k["action"], "KPROBE_ACTION_SIGKILL");
        assert_eq!(k["policy_name"], "dns-only-specified-servers");
        assert_eq!(k["process"]["binary"], resolved("/usr/bin/python3"));
        let skb = kprobe_arg(k, "skb_arg");
        assert_eq!(skb["daddr"], "127.0.0.1");
        assert_eq!(skb["dport"], 53);
        assert_eq!(skb["protocol"], protocol);
    }
    // Only the two refused queries were matched: every event is one of
    // theirs (a SYN the kernel retried before the kill lands may repeat).
    let matched = kprobe_events(&daemon, "ip_output");
    assert!(
        matched
            .iter()
            .all(|k| kprobe_arg(k, "skb_arg")["daddr"] == "127.0.0.1"),
        "the approved queries were not matched: {matched:?}"
    );
    let udp = matched
        .iter()
        .filter(|k| kprobe_arg(k, "skb_arg")["protocol"] == "IPPROTO_UDP")
        .count();
    assert_eq!(udp, 1, "one UDP query: {matched:?}");
}
