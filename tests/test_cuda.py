"""On a CUDA machine, inference follows the model onto the GPU (issue 13): eval, generate and serve.

Skipped without CUDA (CI and the developers' machines have none); run it when a GPU is lent:
`HF_HUB_OFFLINE=1 python -m pytest -q tests/test_cuda.py`.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    from deploy_helpers import build_small_vocab_model, make_lora_run

    root = tmp_path_factory.mktemp("cuda")
    base = build_small_vocab_model(root / "base")
    return base, make_lora_run(base, root / "run-cuda")


def test_a_run_loads_onto_the_gpu_in_bf16_and_answers(lora_run):
    from tunesmith.models.engine import answer
    from tunesmith.runs.deliverable import load_run

    _, run = lora_run
    model, tok = load_run(run, device="auto", merge=True)
    assert model.device.type == "cuda" and model.dtype == torch.bfloat16
    gens = answer(model, tok, [[{"role": "user", "content": "What is the capital of France?"}]] * 3, max_new_tokens=8)
    assert len({g.token_ids for g in gens}) == 1 and gens[0].n_tokens > 0  # one prompt, one answer, batched


def test_serve_and_eval_models_are_on_the_gpu(lora_run):
    from tunesmith.config import load_config
    from tunesmith.evaluate import workflow as W
    from tunesmith.runs.store import find_run
    from tunesmith.serve.engine import Engine, GenerationRequest

    base, run = lora_run
    engine = Engine.load([str(run)], base=str(base))
    assert {s.model.device.type for s in engine.slots.values()} == {"cuda"}
    ids = engine.chat_prompt("run-cuda", [{"role": "user", "content": "List three colours."}])
    assert engine.complete(GenerationRequest("run-cuda", ids, 8, 0.0)).completion_tokens > 0
    plan = W._plan(run / "data" / "test.jsonl", run=find_run(run), out=None, config=load_config(), strategies=None,
                   limit=None, docs=None, system=None, train=None, model=None, allow_overlap=True, probe="none",
                   user_metrics=(), regex=None, json_schema=None, max_new_tokens=8, batch_size=4, seed=0, quiet=True)
    loaded = W._load_models(plan)
    assert loaded.tuned[0].device.type == "cuda" and loaded.base[0].device.type == "cuda"
