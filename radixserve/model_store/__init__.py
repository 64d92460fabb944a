"""Model delivery: a model URI (hf://, s3://, pvc://, oci://, a path) to weights on local disk.

`uri` parses references; `base` is the contract a remote source implements; `store`
downloads a source into a directory (resumable, checksummed, locked, atomically
published). The operator builds pod specs from the same URIs.
"""
