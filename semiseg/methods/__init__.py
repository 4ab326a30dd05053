"""Training methods: a method computes one step's loss (`base.Method.step`); `semiseg.train.step.TrainStep` owns
everything else. Names and construction: `semiseg.registry` (no torch import, so configs can check names cheaply).
"""
