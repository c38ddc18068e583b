"""Data: formats (detect + normalise), check (quality report), split/prepare, render (ids + loss mask)."""
