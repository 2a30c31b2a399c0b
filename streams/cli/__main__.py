"""`python -m streams.cli`: the `greenchannel` command, as the demo and the tests start it."""

import sys

from . import main

sys.exit(main())
