"""`python -m jobfleet`: the CLI (workers start this way, so it stays lean)."""

from __future__ import annotations

import sys

if len(sys.argv) > 1 and sys.argv[1] == "worker":
    from jobfleet.worker import main as worker_main

    sys.exit(worker_main())

from jobfleet.cli.main import main

sys.exit(main())
