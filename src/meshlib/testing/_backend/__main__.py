"""`python -m meshlib.testing._backend`: loopback servers until stdin closes."""

from __future__ import annotations

import sys

from .process import main

sys.exit(main())
