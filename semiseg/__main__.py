"""`python -m semiseg` (and `torchrun -m semiseg`): the `semiseg` command."""

import sys

from semiseg.segmentation.cli import main

sys.exit(main())
