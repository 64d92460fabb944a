"""Testing tooling, not part of the serving path.

Fake OpenAI-compatible workers (`radixserve.testing.fake_worker`) for trying and testing the
router without a model: `python -m radixserve.testing.fake_worker --port 8001`.
"""
