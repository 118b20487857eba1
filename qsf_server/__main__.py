"""`python -m qsf_server DIR`: the same as qsf-server."""

import sys

from .cli import main

sys.exit(main())
