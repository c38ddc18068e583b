"""Runs: the self-describing run folder (layout), the SQLite registry (registry), lookup (store), tuned models (tuned)."""
