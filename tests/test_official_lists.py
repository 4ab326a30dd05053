"""The official LEVIR-CD / WHU-CD split lists shipped in datasets/, and the configs that use them by default."""

from __future__ import annotations

import pytest

from semicd.data.official import PERCENTS, official_dir, official_sets
from semicd.data.prepare import whu_lists
from semiseg.config import load_config
from semiseg.data.lists import find_split_folder, read_name_list, resolve_list
from semiseg.errors import SemisegError

COUNTS = {"levir_cd": (7120, 1024, 2048), "whu_cd": (5947, 743, 744)}
LABELED = {"levir_cd": (356, 712, 1424, 2848), "whu_cd": (297, 594, 1189, 2378)}


@pytest.mark.parametrize("dataset", sorted(COUNTS))
def test_shipped_lists_parse_and_match_the_official_counts(dataset):
    sets = official_sets(dataset)
    assert tuple(len(sets[s]) for s in ("train", "val", "test")) == COUNTS[dataset]
    everything = [n for names in sets.values() for n in names]
    assert len(set(everything)) == len(everything)  # train, val and test are disjoint, no name twice
    train = set(sets["train"])
    folder = official_dir(dataset)
    previous: set[str] = set()
    for p, n_labeled in zip(PERCENTS, LABELED[dataset]):
        labeled = read_name_list(folder / f"{p}%" / "labeled.txt")
        unlabeled = read_name_list(folder / f"{p}%" / "unlabeled.txt")
        assert len(labeled) == n_labeled
        assert set(labeled).isdisjoint(unlabeled) and set(labeled) | set(unlabeled) == train
        assert previous <= set(labeled)  # the official splits are nested too
        previous = set(labeled)


@pytest.mark.parametrize("config", ["levir_cd", "whu_cd"])
def test_configs_train_and_evaluate_on_the_shipped_lists_by_default(config, tmp_path):
    cfg = load_config(f"configs/{config}.yaml", [f"data.root={tmp_path}"], task="change_detection")
    split = find_split_folder(str(cfg.data.split), cfg.data.dataset, tmp_path)
    assert split == official_dir(cfg.data.dataset) / "5%"
    # The evaluation list is the official test.txt, found beside the split before the data root.
    (tmp_path / "test.txt").write_text("ours.png\n")
    assert (
        resolve_list(cfg.data.val_list, split, split.parent, tmp_path)
        == official_dir(cfg.data.dataset) / "test.txt"
    )


def test_whu_lists_are_the_official_ones_exactly_for_the_official_tile_names():
    names = [f"whucd_{i:05d}.png" for i in range(1, 7435)]  # what prepare_whu names the full 126 x 59 grid
    lists, kind = whu_lists(names[::-1])
    assert kind == "official" and lists == official_sets("whu_cd")
    lists, kind = whu_lists(names[:12])  # a crop: our seeded draw, which says so
    assert kind == "seeded" and [len(lists[s]) for s in ("train", "val", "test")] == [9, 1, 2]
    assert sorted(sum(lists.values(), [])) == names[:12]


def test_official_dir_names_the_datasets_it_has():
    with pytest.raises(SemisegError, match="levir_cd, whu_cd"):
        official_dir("pascal")


def test_levir_lists_name_the_tiles_prepare_levir_cuts():
    # The release has 445 / 64 / 128 pairs per split; prepare_levir names their tiles <split>_<n>_<k>.png, k = 1..16.
    for split, pairs in (("train", 445), ("val", 64), ("test", 128)):
        cut = {f"{split}_{n}_{k}.png" for n in range(1, pairs + 1) for k in range(1, 17)}
        assert set(official_sets("levir_cd")[split]) == cut
