"""One module per `headsculpt` subcommand (see cli.py)."""
