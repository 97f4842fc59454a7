"""A backend in another language: a Python gRPC client generated from proto/.

Generates the tokengate stubs with grpcio-tools into a temporary directory
(exactly as a backend team would from the repo's proto/ folder), then calls
one RPC and prints the outcome as one JSON object on stdout:

    {"ok": true, "response": {...}}          on success
    {"ok": false, "code": "PERMISSION_DENIED", "message": "...", "reason": "...", "fields": [...]}

`reason` is the google.rpc.ErrorInfo reason (or null); `fields` lists the field
names of a google.rpc.BadRequest (empty without one).

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
    """The ErrorInfo reason and BadRequest field names from the grpc-status-details-bin trailer."""
    from google.rpc import error_details_pb2, status_pb2  # noqa: PLC0415

    reason, fields = None, []
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                info = error_details_pb2.ErrorInfo()
                bad = error_details_pb2.BadRequest()
                if detail.Unpack(info):
                    reason = info.reason
                elif detail.Unpack(bad):
                    fields = [v.field for v in bad.field_violations]
    return reason, fields


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
                reason, fields = error_details(error)
                print(json.dumps({
                    "ok": False,
                    "code": error.code().name,
                    "message": error.details(),
                    "reason": reason,
                    "fields": fields,
                }))
                return
            print(json.dumps({
                "ok": True,
                "response": json_format.MessageToDict(response, preserving_proto_field_name=True),
            }))


if __name__ == "__main__":
    main()
