"""A backend in another language: a Python gRPC client generated from proto/.

Generates the tokengate stubs with grpcio-tools into a temporary directory
(exactly as a backend team would from the repo's proto/ folder), then calls
one RPC and prints the outcome as one JSON object on stdout:

    {"ok": true, "response": {...}}          on success
    {"ok": false, "code": "PERMISSION_DENIED", "message": "...", "reason": "...", "fields": [...],
     "retry_after_ms": null, "quota_subjects": []}

`reason` is the google.rpc.ErrorInfo reason (or null); `fields` lists the field
names of a google.rpc.BadRequest (empty without one); `retry_after_ms` is a
google.rpc.RetryInfo's delay in milliseconds (or null) and `quota_subjects`
the subjects of a google.rpc.QuotaFailure's violations.

Usage: client.py TARGET METHOD REQUEST_JSON   (the JWT comes from $TOKENGATE_JWT)

With $TOKENGATE_TLS_CA (a PEM CA file) the channel is TLS, through
grpc.ssl_channel_credentials; $TOKENGATE_TLS_CERT and $TOKENGATE_TLS_KEY add a
client certificate (mTLS).
"""

import importlib
import json
import os
import sys
import tempfile

import grpc
from grpc_tools import protoc
from google.protobuf import json_format

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
PROTO_DIR = os.path.join(ROOT, "proto")
PROTO = "tokengate/v1/tokengate.proto"


def generate_stubs(out_dir):
    """Runs protoc (bundled with grpcio-tools) on proto/, like `make proto` would."""
    include = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    code = protoc.main([
        "grpc_tools.protoc",
        f"-I{PROTO_DIR}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        PROTO,
    ])
    if code != 0:
        raise SystemExit(f"protoc failed with {code}")
    sys.path.insert(0, out_dir)
    messages = importlib.import_module("tokengate.v1.tokengate_pb2")
    services = importlib.import_module("tokengate.v1.tokengate_pb2_grpc")
    return messages, services


def error_details(error):
    """What the grpc-status-details-bin trailer says: the ErrorInfo reason, the
    BadRequest field names, the RetryInfo delay (ms) and the QuotaFailure subjects."""
    from google.rpc import error_details_pb2, status_pb2  # noqa: PLC0415

    found = {"reason": None, "fields": [], "retry_after_ms": None, "quota_subjects": []}
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                info = error_details_pb2.ErrorInfo()
                bad = error_details_pb2.BadRequest()
                retry = error_details_pb2.RetryInfo()
                quota = error_details_pb2.QuotaFailure()
                if detail.Unpack(info):
                    found["reason"] = info.reason
                elif detail.Unpack(bad):
                    found["fields"] = [v.field for v in bad.field_violations]
                elif detail.Unpack(retry):
                    found["retry_after_ms"] = retry.retry_delay.ToMilliseconds()
                elif detail.Unpack(quota):
                    found["quota_subjects"] = [v.subject for v in quota.violations]
    return found


def open_channel(target):
    """A TLS channel when $TOKENGATE_TLS_CA names a CA file, plaintext otherwise."""
    ca = os.environ.get("TOKENGATE_TLS_CA")
    if not ca:
        return grpc.insecure_channel(target)

    def read(name):
        path = os.environ.get(name)
        if not path:
            return None
        with open(path, "rb") as f:
            return f.read()

    credentials = grpc.ssl_channel_credentials(
        root_certificates=read("TOKENGATE_TLS_CA"),
        private_key=read("TOKENGATE_TLS_KEY"),
        certificate_chain=read("TOKENGATE_TLS_CERT"),
    )
    return grpc.secure_channel(target, credentials)


def main():
    target, method, request_json = sys.argv[1], sys.argv[2], sys.argv[3]
    jwt = os.environ.get("TOKENGATE_JWT", "")
    with tempfile.TemporaryDirectory() as out_dir:
        messages, services = generate_stubs(out_dir)
        request_type = getattr(messages, f"{method}Request")
        request = json_format.Parse(request_json, request_type())
        with open_channel(target) as channel:
            stub = services.TokenServiceStub(channel)
            metadata = [("authorization", f"Bearer {jwt}")] if jwt else []
            try:
                response = getattr(stub, method)(request, metadata=metadata, timeout=10)
            except grpc.RpcError as error:
                print(json.dumps({
                    "ok": False,
                    "code": error.code().name,
                    "message": error.details(),
                    **error_details(error),
                }))
                return
            print(json.dumps({
                "ok": True,
                "response": json_format.MessageToDict(response, preserving_proto_field_name=True),
            }))


if __name__ == "__main__":
    main()
