"""The task-agnostic training engine: optimiser, schedules, EMA, checkpoints, distributed set-up, the loop."""
