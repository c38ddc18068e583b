"""The web UI (`tunesmith ui`): pages over the Python API; heavy work runs in child processes (jobs.py)."""
