"""`python -m tunesmith`: the same command as `tunesmith`."""

from tunesmith.cli.main import run

run()
