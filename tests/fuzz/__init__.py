"""Seeded differential fuzzing of megengine.functional against PyTorch (`python -m tests.fuzz`)."""
