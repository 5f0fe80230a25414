"""`python -m failover` runs the command line."""

from failover.cli import main

raise SystemExit(main())
