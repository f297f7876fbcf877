"""`python -m bridge.cli ...` runs the `refmaster` command line (tests and child processes use it)."""

from bridge.cli import entry_point

entry_point()
