"""`semicd demo`: a synthetic georeferenced scene (`scene`) and the whole job on it (`run`)."""

from semicd.demo.run import run_demo, score_change_map

__all__ = ["run_demo", "score_change_map"]
