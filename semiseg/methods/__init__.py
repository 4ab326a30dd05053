"""Methods by name. A method computes one step's loss; the trainer owns everything else."""

from __future__ import annotations

from semiseg.config import Config
from semiseg.methods.base import Batch, Method, Models, StepOutput
from semiseg.methods.consistency import Consistency
from semiseg.methods.extras import EXTRAS
from semiseg.methods.maskmatch import MaskMatch  # noqa: F401  (registers the extra)
from semiseg.methods.prevmatch import PrevMatch  # noqa: F401  (registers the extra)
from semiseg.methods.supervised import Supervised

__all__ = ["Batch", "Method", "Models", "StepOutput", "build_method"]


def build_method(cfg: Config, mean: tuple[float, ...], std: tuple[float, ...]) -> Method:
    name = cfg.method.name
    if name == "supervised":
        return Supervised(cfg, mean, std)
    extras = [EXTRAS[e](cfg) for e in cfg.method.extras]
    if name == "fixmatch":
        return Consistency(cfg, mean, std, n_views=1, comp_drop=False, extras=extras)
    if name == "unimatch_v2":
        return Consistency(cfg, mean, std, n_views=2, comp_drop=cfg.method.comp_drop, extras=extras)
    raise ValueError(f"unknown method {name}")  # the config validator has already rejected it
