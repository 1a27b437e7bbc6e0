"""A GetEvents client generated from the protos (as a Tetragon user's
client is generated from Tetragon's): it compiles sensor-api/proto with
protoc and grpc's Python plugin, connects to the daemon's unix socket,
asks for the event types and binary given, and prints each event as one
JSON line (protobuf's own JSON printer) until it has seen every type
asked for.

usage: getevents.py SOCKET OUTDIR BINARY_REGEX EVENT_TYPE...
"""
import os
import subprocess
import sys

sock, out, binary, types = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
proto = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "sensor-api", "proto")
files = [os.path.join("tetragon", f) for f in ("capabilities.proto", "tetragon.proto", "events.proto", "sensors.proto")]
subprocess.run(
    ["protoc", "-I", proto, "-I", "/usr/include", "--python_out", out, "--grpc_python_out", out,
     "--plugin=protoc-gen-grpc_python=/usr/bin/grpc_python_plugin"] + files,
    check=True, cwd=proto)
sys.path.insert(0, out)

import grpc  # noqa: E402
from google.protobuf import json_format  # noqa: E402
from tetragon import events_pb2, sensors_pb2_grpc  # noqa: E402

channel = grpc.insecure_channel("unix://" + sock)
stub = sensors_pb2_grpc.FineGuidanceSensorsStub(channel)
request = events_pb2.GetEventsRequest(allow_list=[events_pb2.Filter(
    binary_regex=[binary],
    event_set=[events_pb2.EventType.Value(t) for t in types],
)])
print("subscribed", flush=True)
wanted = {t.lower() for t in types}
for event in stub.GetEvents(request):
    print(json_format.MessageToJson(event, preserving_proto_field_name=True, indent=None), flush=True)
    wanted.discard(event.WhichOneof("event"))
    if not wanted:
        break
