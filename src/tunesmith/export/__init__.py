"""Exports of a run: PEFT adapter, merged transformers model, GGUF (+ Ollama Modelfile), each verified.

    export(run, "gguf", "out/")  ->  ExportResult(out, format, files, verification)
"""

from __future__ import annotations

from tunesmith.export.workflow import FORMATS, ExportResult, export

__all__ = ["FORMATS", "ExportResult", "export"]
