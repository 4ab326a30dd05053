"""Data for every task: the sample contract and the dataset base (`sample`), the shared random geometry
(`geometry`), split and name lists (`lists`), and `build(cfg, stage)` (`build`), which asks the task's dataset for
what a stage needs."""
