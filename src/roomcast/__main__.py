"""`python -m roomcast` runs the `roomcast` command."""

import sys

from .cli import main

sys.exit(main())
