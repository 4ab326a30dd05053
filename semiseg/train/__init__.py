"""Training, the same for every method and task: `step.TrainStep` (one optimiser step: the only `backward()`),
`loop.train` (the run: data, resume, steps, evaluation, checkpoints), and their parts (state, optim, ema, sampler,
distributed, run_log)."""
