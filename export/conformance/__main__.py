"""`python -m ralu_export.conformance DIR` (see ralu_export.conformance.cli)."""

import sys

from ralu_export.conformance.cli import main

sys.exit(main())
