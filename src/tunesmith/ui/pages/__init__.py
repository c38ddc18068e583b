"""The UI's pages: one module per page, each exposing `router` (see ui/app.py for the contract)."""
