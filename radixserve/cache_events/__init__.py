"""Cache events: a server's RadixCache contents as chained token-block hashes, streamed to routers."""
