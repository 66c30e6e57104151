"""Seeded differential fuzzing of megengine against PyTorch and hand oracles (functional ops,
layers, optimizers and schedulers, second-order autodiff): `python -m tests.fuzz`."""
