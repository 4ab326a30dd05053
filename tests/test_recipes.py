"""docs/recipes.md states our configs beside the official recipes; these tests read its tables so neither can drift."""

from __future__ import annotations

from pathlib import Path

import pytest
from fakes import load_shipped_config

from semiseg.config import Config, load_config

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "recipes.md"


def _table(heading: str) -> list[dict[str, str]]:
    """The markdown table under `## heading`, as one dict per row."""
    section = DOC.read_text().split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in rows]
    header, body = cells[0], cells[2:]
    return [dict(zip(header, row)) for row in body]


def _shown(value: object) -> str:
    """A config value as the table writes it."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.0e}".replace("e-0", "e-") if 0 < value < 0.01 else f"{value:g}"
    return str(value)


BASE_COLUMNS = {
    "encoder": lambda c: c.model.encoder,
    "crop": lambda c: c.data.crop_size,
    "batch": lambda c: c.data.batch_size,
    "epochs": lambda c: c.train.epochs,
    "lr": lambda c: c.optim.lr,
    "lr_multi": lambda c: c.optim.lr_multi,
    "loss": lambda c: c.method.loss,
    "eval": lambda c: c.eval.mode,
    "τ": lambda c: c.method.conf_thresh,
    "teacher": lambda c: c.method.teacher,
    "freeze_encoder": lambda c: c.model.freeze_encoder,
}
PREVMATCH_COLUMNS = {
    "trigger": lambda c: c.method.prevmatch.trigger,
    "store": lambda c: c.method.prevmatch.max_snapshots,
    "warm-up": lambda c: c.method.prevmatch.warmup_epochs,
    "k max": lambda c: c.method.prevmatch.max_ensemble,
    "τ prev": lambda c: c.method.prevmatch.conf_thresh,
    "conf mode": lambda c: c.method.prevmatch.conf_mode,
    "λ schedule": lambda c: c.method.prevmatch.lambda_schedule,
}


def _check_row(row: dict[str, str], cfg: Config, columns: dict) -> None:
    differs = {c.strip() for c in row["differs"].split(",") if c.strip()}
    for column, read in columns.items():
        ours, official = (part.strip() for part in row[column].split(" / "))
        assert ours == _shown(read(cfg)), f"{row.get('config', row.get('dataset'))}: {column}"
        if official != "—" and column not in differs:
            assert ours == official, (
                f"{row.get('config', row.get('dataset'))}: {column} differs from official"
            )


def test_the_base_recipe_table_lists_every_shipped_config_with_its_values():
    rows = _table("UniMatch V2 base recipe")
    assert sorted(r["config"] for r in rows) == sorted(p.stem for p in (REPO / "configs").glob("*.yaml"))
    for row in rows:
        _check_row(row, load_shipped_config(REPO / "configs" / f"{row['config']}.yaml"), BASE_COLUMNS)
        assert int(row["global"]) == int(row["batch"].split(" / ")[0]) * int(row["GPUs"])


@pytest.mark.parametrize("row", _table("PrevMatch per dataset"), ids=lambda r: r["dataset"])
def test_the_prevmatch_table_matches_each_datasets_resolved_settings(row):
    if row["dataset"] == "levir_cd":
        cfg = load_config(REPO / "configs" / "levir_cd_prevmatch.yaml")
    else:
        cfg = load_config(REPO / "configs" / "pascal_prevmatch.yaml", [f"data.dataset={row['dataset']}"])
    _check_row(row, cfg, PREVMATCH_COLUMNS)


def test_a_drifted_value_fails_the_check():
    row = next(r for r in _table("UniMatch V2 base recipe") if r["config"] == "pascal")
    cfg = load_config(REPO / "configs" / "pascal.yaml", ["train.epochs=61"])
    with pytest.raises(AssertionError, match="pascal: epochs"):
        _check_row(row, cfg, BASE_COLUMNS)
    official_differs = {**row, "crop": "518 / 512"}
    with pytest.raises(AssertionError, match="crop differs from official"):
        _check_row(official_differs, load_config(REPO / "configs" / "pascal.yaml"), BASE_COLUMNS)
