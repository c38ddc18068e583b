"""Models: the named store (store.py) and local-only loading, GGUF included (load.py)."""
