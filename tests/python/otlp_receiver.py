"""A real OTLP/gRPC trace receiver for the telemetry tests.

Serves the official `opentelemetry.proto.collector.trace.v1.TraceService`
(the generated definitions of the PyPI package `opentelemetry-proto`) with
grpcio on 127.0.0.1 and an ephemeral port, so the exporter under test is the
real one speaking the real protocol.

Prints `listening PORT` on stdout once it serves, then one JSON object per
received span, a line each, flushed at once:

    {"service": "...", "resource": {...}, "trace_id": "hex", "span_id": "hex",
     "parent_span_id": "hex or empty", "name": "...", "kind": 2,
     "attributes": {"key": value, ...}, "status": 0}

It exits when its standard input closes (the test holds the pipe), or after
LIFETIME seconds (the first argument, 120 by default), whichever is first,
so it never outlives a failed test.
"""

import json
import sys
import threading
from concurrent import futures

import grpc
from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

LOCK = threading.Lock()


def value(any_value):
    """An AnyValue as plain JSON."""
    kind = any_value.WhichOneof("value")
    if kind is None:
        return None
    if kind in ("array_value", "kvlist_value"):
        return json_format.MessageToDict(getattr(any_value, kind))
    if kind == "bytes_value":
        return any_value.bytes_value.hex()
    return getattr(any_value, kind)


def attributes(key_values):
    return {kv.key: value(kv.value) for kv in key_values}


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    def Export(self, request, context):
        lines = []
        for resource_spans in request.resource_spans:
            resource = attributes(resource_spans.resource.attributes)
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    lines.append(json.dumps({
                        "service": resource.get("service.name"),
                        "resource": resource,
                        "trace_id": span.trace_id.hex(),
                        "span_id": span.span_id.hex(),
                        "parent_span_id": span.parent_span_id.hex(),
                        "name": span.name,
                        "kind": span.kind,
                        "attributes": attributes(span.attributes),
                        "events": [
                            {"name": e.name, "attributes": attributes(e.attributes)}
                            for e in span.events
                        ],
                        "status": span.status.code,
                    }))
        with LOCK:
            for line in lines:
                sys.stdout.write(line + "\n")
            sys.stdout.flush()
        return trace_service_pb2.ExportTraceServiceResponse()


def main():
    lifetime = float(sys.argv[1]) if len(sys.argv) > 1 else 120.0
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Receiver(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    with LOCK:
        sys.stdout.write(f"listening {port}\n")
        sys.stdout.flush()
    closed = threading.Event()

    def watch_stdin():
        sys.stdin.read()
        closed.set()

    threading.Thread(target=watch_stdin, daemon=True).start()
    closed.wait(lifetime)
    server.stop(grace=None)


if __name__ == "__main__":
    main()
