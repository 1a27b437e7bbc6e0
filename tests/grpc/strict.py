"""Parses JSON event lines with the project's protos, as a Tetragon user's
pipeline generated from them would, in strict mode: protobuf's own JSON
parser (json_format.Parse) with unknown fields rejected. Prints the event
kinds seen, one per line; exits 1 naming the first line that fails.

usage: strict.py OUTDIR < EVENTS
"""
import os
import subprocess
import sys

out = sys.argv[1]
proto = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "sensor-api", "proto")
files = [os.path.join("tetragon", f) for f in ("capabilities.proto", "tetragon.proto", "events.proto", "sensors.proto")]
subprocess.run(["protoc", "-I", proto, "-I", "/usr/include", "--python_out", out] + files, check=True, cwd=proto)
sys.path.insert(0, out)

from google.protobuf import json_format  # noqa: E402
from tetragon import events_pb2  # noqa: E402

kinds = set()
for n, line in enumerate(sys.stdin, 1):
    if not line.strip():
        continue
    event = events_pb2.GetEventsResponse()
    try:
        json_format.Parse(line, event, ignore_unknown_fields=False)
    except json_format.ParseError as e:
        print(f"line {n}: {e}\n{line}", file=sys.stderr)
        sys.exit(1)
    kind = event.WhichOneof("event")
    if kind is None:
        print(f"line {n}: no event in it\n{line}", file=sys.stderr)
        sys.exit(1)
    kinds.add(kind)
for k in sorted(kinds):
    print(k)
