"""Method and extra names -> where their code lives: the one list the config, the builder and the docs read,
and `build_method`, which turns a config into a method.

Plain data (no torch import), so the configuration can check names and the data builder can ask whether a
method needs unlabeled images before anything heavy is loaded. A new method or extra is one entry here (its
module is imported only when a run uses it).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class MethodInfo:
    factory: str  # "module:callable", called as factory(cfg, mean, std, extras) -> Method
    needs_unlabeled: bool
    summary: str


METHODS: dict[str, MethodInfo] = {
    "supervised": MethodInfo(
        "semiseg.methods.supervised:Supervised", False, "labeled data only (the baseline)"
    ),
    "fixmatch": MethodInfo("semiseg.methods.consistency:fixmatch", True, "one strong view"),
    "unimatch_v2": MethodInfo(
        "semiseg.methods.consistency:unimatch_v2", True, "two strong views + complementary dropout"
    ),
}

# Extra loss terms that ride on a consistency method: name -> "module:class", constructed as cls(cfg).
EXTRAS: dict[str, str] = {
    "prevmatch": "semiseg.methods.prevmatch:PrevMatch",
    "maskmatch": "semiseg.methods.maskmatch:MaskMatch",
}


def load(reference: str) -> Any:
    """Import `module:attribute`."""
    module, _, attribute = reference.partition(":")
    return getattr(importlib.import_module(module), attribute)


def build_method(cfg: Any, mean: tuple[float, ...], std: tuple[float, ...]) -> Any:
    """The configured method (`cfg.method`) with its extras; `mean`/`std` are the model's input normalisation."""
    extras = [load(EXTRAS[name])(cfg) for name in cfg.method.extras]
    return load(METHODS[cfg.method.name].factory)(cfg, tuple(mean), tuple(std), extras)
