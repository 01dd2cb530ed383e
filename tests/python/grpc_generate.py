"""Streams one lcserve.v1.Generation/Generate call through grpcio stubs generated from proto/.

Usage: grpc_generate.py ADDRESS STUBS_DIR REQUEST_JSON

REQUEST_JSON is a GenerateRequest in protobuf's JSON mapping; STUBS_DIR holds the modules that
`python -m grpc_tools.protoc -I proto --python_out=DIR --grpc_python_out=DIR lcserve/v1/generation.proto`
wrote. Prints the stream as one JSON object: the token ids and texts, the kind of every event in
order, and the terminal event.
"""

import json
import sys


def main(address, stubs_dir, request_json):
    sys.path.insert(0, stubs_dir)
    import grpc
    from google.protobuf import json_format
    from lcserve.v1 import generation_pb2, generation_pb2_grpc

    request = json_format.Parse(request_json, generation_pb2.GenerateRequest())
    tokens, text, events, terminal = [], "", [], None
    with grpc.insecure_channel(address) as channel:
        stub = generation_pb2_grpc.GenerationStub(channel)
        for response in stub.Generate(request, timeout=60):
            event = response.WhichOneof("event")
            events.append(event)
            if event == "token":
                tokens.append(response.token.id)
                text += response.token.text
            else:
                terminal = json_format.MessageToDict(
                    getattr(response, event),
                    preserving_proto_field_name=True,
                    always_print_fields_with_no_presence=True,
                )
    print(json.dumps({"tokens": tokens, "text": text, "events": events, "terminal": terminal}))


if __name__ == "__main__":
    main(*sys.argv[1:])
