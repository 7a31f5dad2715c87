"""`python -m headsculpt_engine` runs the `headsculpt` command line."""
from .cli import main

raise SystemExit(main())
