import sys

from semicd.cli import main

sys.exit(main())
