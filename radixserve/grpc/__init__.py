"""gRPC front end: `radixserve serve --grpc-port N` serves radixserve.proto's RadixServe service
beside the HTTP server, on the same event loop and through the same TokenizerManager.

`stubs.load()` gives the generated message and service modules (docs/grpc.md has a client).
"""
