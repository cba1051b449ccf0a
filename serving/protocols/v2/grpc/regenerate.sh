#!/usr/bin/env bash
# Regenerate inference_pb2.py, inference_pb2.pyi and inference_pb2_grpc.py from inference.proto.
#
# grpcio-tools is not a fedguard dependency: install it aside, at a version whose bundled protoc emits
# gencode the pinned protobuf runtime accepts (gencode <= runtime; protobuf==6.33.6 is pinned, and
# grpcio-tools 1.80.0 emits 6.31.1; 1.81 and later emit protobuf 7 gencode, which 6.x refuses at import):
#   pip install --no-deps --target /tmp/grpc-tools grpcio-tools==1.80.0
#   PYTHONPATH=/tmp/grpc-tools serving/protocols/v2/grpc/regenerate.sh
# Run from the repository root.
set -euo pipefail
here=serving/protocols/v2/grpc
python -m grpc_tools.protoc -I "$here" --python_out="$here" --pyi_out="$here" --grpc_python_out="$here" \
    "$here/inference.proto"
# A private descriptor pool: tritonclient's generated code registers the same 'inference.*' names in the
# default pool, and a process that imports both (a test, a client beside a server) must not clash.
sed -i 's/^DESCRIPTOR = _descriptor_pool.Default().AddSerializedFile(/POOL = _descriptor_pool.DescriptorPool()\nDESCRIPTOR = POOL.AddSerializedFile(/' \
    "$here/inference_pb2.py"
# protoc writes a top-level import; the modules live in a package.
sed -i 's/^import inference_pb2 as inference__pb2$/from serving.protocols.v2.grpc import inference_pb2 as inference__pb2/' \
    "$here/inference_pb2_grpc.py"
