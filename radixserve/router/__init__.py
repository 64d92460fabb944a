"""Cache-aware router in front of radixserve (or any OpenAI-compatible) replicas."""
