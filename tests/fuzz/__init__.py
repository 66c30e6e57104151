"""Seeded differential fuzzing of megengine against PyTorch and hand oracles (functional ops,
layers, optimizers and schedulers, second-order autodiff; F.vision's sampling ops and
correlation, quantization from fake quantization to quantized kernels, and the data
transforms against numpy oracles of upstream's documented behaviour; megengine.random,
distributions, init and dropout by seeded statistical tests): `python -m tests.fuzz`
(`--quantized`: the cases with float32 inputs again on quantized tensors, against torch on
their values, `quantized_inputs`; `--int`: on integer and bool tensors, `integer_inputs`). Beside it: `python -m tests.fuzz.jit` (traced programs
against eager), `python -m tests.fuzz.bridge` (hybrid networks against pure torch) and
`python -m tests.fuzz.dist` (megengine.distributed's collectives against numpy and
data-parallel training against one process)."""
