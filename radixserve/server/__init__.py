"""The three-process HTTP server: `radixserve serve` (see `launch`)."""
