import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))  # tests/fakes.py importable as `fakes`

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(autouse=True, scope="session")
def _few_threads():
    # CI has 2 cores; more threads only add contention (SEMICD_TEST_THREADS=1 when sharing the machine)
    torch.set_num_threads(int(os.environ.get("SEMICD_TEST_THREADS", "2")))
