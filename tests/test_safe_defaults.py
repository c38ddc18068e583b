"""Safe defaults (issue 8, part 4): loopback serving, safetensors only, no remote code, checked names, no stray writes.

SECURITY.md lists each guarantee with the test here that checks it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tunesmith.errors import ModelError, RunError

from train_helpers import overrides, sums_dataset

SRC = Path(__file__).resolve().parents[1] / "src" / "tunesmith"


def _cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """Run the real `tunesmith` entry point in this process: (exit code, stdout, stderr with whitespace folded)."""
    from tunesmith.cli.main import run

    monkeypatch.setattr(sys, "argv", ["tunesmith", *args])
    with pytest.raises(SystemExit) as e:
        run()
    out = capsys.readouterr()
    return e.value.code or 0, out.out, " ".join(out.err.split())


# ------------------------------------------------------------------ serve: loopback unless told otherwise


def test_serve_binds_loopback_by_default_and_warns_when_exposed_without_a_key(monkeypatch, capsys, tmp_path):
    from tunesmith.config import load_config
    from tunesmith.serve import server

    assert load_config(None).serve.host == "127.0.0.1"
    bound, real_serve = [], server.serve
    monkeypatch.setattr(server, "serve", lambda specs, base, cfg, on_ready=None, device="auto": bound.append((cfg.host, cfg.api_key)))
    monkeypatch.delenv("TUNESMITH_API_KEY", raising=False)
    runs = {
        (): ("127.0.0.1", None),
        ("--host", "0.0.0.0"): ("0.0.0.0", "warning"),
        ("--host", "0.0.0.0", "--api-key", "k"): ("0.0.0.0", None),
        ("--host", "::"): ("::", "warning"),
        ("--host", "::1"): ("::1", None),
        ("--host", "localhost"): ("localhost", None),
    }
    for args, (host, warned) in runs.items():
        code, _, err = _cli(monkeypatch, capsys, "serve", "--base", "tiny", *args)
        assert code == 0 and bound[-1][0] == host
        if warned:
            assert f"warning: binding {host} without an API key" in err
        else:
            assert "warning" not in err
    # ...and the server listens on exactly the configured address (before loading any model)
    calls = []

    def fake_bind(host, port):
        calls.append((host, port))
        raise RuntimeError("stop here")

    monkeypatch.setattr(server, "bind", fake_bind)
    with pytest.raises(RuntimeError, match="stop here"):
        real_serve([], "tiny", load_config(None).serve)
    assert calls == [("127.0.0.1", 8000)]


# ------------------------------------------------------------------ weights: safetensors only, unless --allow-pickle


class _Trap:
    """Unpickling this runs `touch MARKER`: the proof that a pickle file was loaded unsafely."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _pickle_model(tiny_model_dir: Path, folder: Path, marker: Path) -> Path:
    import pickle

    shutil.copytree(tiny_model_dir, folder)
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps({"weights": _Trap(marker)}))
    return folder


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # torch's note on the trap's pickle
def test_pickle_weights_are_refused_unless_allowed_and_never_run(tiny_model_dir, tmp_path, store_home, monkeypatch, capsys):
    from tunesmith.models.load import load_model

    marker = tmp_path / "pwned"
    folder = _pickle_model(tiny_model_dir, tmp_path / "pickled", marker)
    with pytest.raises(ModelError, match="pickle weights .* can run code") as e:
        load_model(str(folder))
    assert "--allow-pickle" in e.value.hint
    code, _, err = _cli(monkeypatch, capsys, "models", "add", str(folder), "--name", "pickled")
    assert code == 2 and "pickle weights" in err and "Traceback" not in err
    # Even when allowed, transformers loads .bin with weights_only: the payload still never runs.
    with pytest.raises(ModelError):
        load_model(str(folder), allow_pickle=True)
    assert not marker.exists()


def test_a_tampered_checkpoint_pickle_is_refused_and_never_run(tmp_path):
    """Checkpoint .pt files are read with weights_only, even when their checksum is made to match."""
    import pickle

    from tunesmith.io import sha256_file
    from tunesmith.train import checkpoint

    marker = tmp_path / "pwned"
    folder = tmp_path / "step-2"
    folder.mkdir()
    for name in checkpoint.FILES:
        (folder / name).write_text("{}")
    (folder / "optimizer.pt").write_bytes(pickle.dumps(_Trap(marker)))
    sums = {name: sha256_file(folder / name) for name in checkpoint.FILES}
    (folder / checkpoint.MANIFEST).write_text(json.dumps({"step": 2, "files": sums}))
    with pytest.raises(RunError, match="step-2 is corrupt: .* does not load"):
        checkpoint.load(folder)
    assert not marker.exists()


# ------------------------------------------------------------------ no remote code


def test_trust_remote_code_is_never_set_in_the_source():
    setting = re.compile(r"""["']?trust_remote_code["']?\s*[=:]\s*([^,)\s}]+)""")
    found = []
    for path in SRC.rglob("*.py"):
        if path.relative_to(SRC).parts[0] == "vendor":  # llama.cpp's converter: see the next test
            continue
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            for m in setting.finditer(line):
                found.append((f"{path.relative_to(SRC)}:{lineno}", m.group(1)))
    assert found, "the pattern finds the explicit trust_remote_code=False calls"
    assert [f for f in found if f[1] != "False"] == []


def test_the_vendored_converter_runs_offline_on_a_folder_tunesmith_saved(monkeypatch, tmp_path):
    """llama.cpp's converter passes trust_remote_code=True for a few architectures' tokenizers; it only ever
    reads the merged folder tunesmith saved (no custom code files: tunesmith never loads remote code), and its
    child process runs with HF_HUB_OFFLINE=1, so nothing is fetched or run from a hub."""
    import subprocess

    from tunesmith.export import llama_cpp

    seen = {}

    def fake_run(cmd, **kwargs):
        seen.update(kwargs["env"])
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(subprocess, "run", fake_run)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    llama_cpp.convert(tmp_path, tmp_path / "out.gguf", "f16")
    assert seen["HF_HUB_OFFLINE"] == "1" and "NO_LOCAL_GGUF" not in seen


def test_loading_passes_trust_remote_code_false(tiny_model_dir, monkeypatch):
    import transformers

    from tunesmith.models.load import load_model

    seen = []
    for cls in (transformers.AutoModelForCausalLM, transformers.AutoTokenizer):
        real = cls.from_pretrained.__func__

        def spy(klass, *a, _real=real, **kw):
            seen.append((klass.__name__, kw.get("trust_remote_code", "unset")))
            return _real(klass, *a, **kw)

        monkeypatch.setattr(cls, "from_pretrained", classmethod(spy))
    load_model(str(tiny_model_dir))
    assert seen == [("AutoModelForCausalLM", False), ("AutoTokenizer", False)]


# ------------------------------------------------------------------ names become folder names: validated


BAD_NAMES = ["../evil", "..", ".", "a/b", "a\\b", "/abs", "", " x", "x" * 101, "-x", "a\x00b", "~root", "é"]


def test_run_and_model_names_are_validated(tiny_model_dir, tmp_path, store_home, monkeypatch, capsys):
    from tunesmith.config import load_config
    from tunesmith.models.store import validate_name
    from tunesmith.train.finetune import finetune

    for bad in BAD_NAMES:
        with pytest.raises(ModelError, match="invalid run name"):
            validate_name(bad, "run")
    assert validate_name("v1.2_final-3", "run") == "v1.2_final-3"
    train, val = sums_dataset(tmp_path / "data")
    runs = tmp_path / "runs"
    for bad in ("../evil", "a/b", ".."):
        with pytest.raises(ModelError, match="invalid run name"):
            finetune(load_config(None, overrides(tiny_model_dir, train, val, runs)), name=bad, show_progress=False)
    code, _, err = _cli(monkeypatch, capsys, "train", *[a for s in overrides(tiny_model_dir, train, val, runs)
                                                           for a in ("--set", s)], "--name", "../../escape")
    assert code == 2 and "invalid run name '../../escape'" in err
    code, _, err = _cli(monkeypatch, capsys, "models", "add", str(tiny_model_dir), "--name", "../up")
    assert code == 2 and "invalid model name '../up'" in err
    assert not runs.exists() and not (tmp_path / "escape").exists() and not (store_home.parent / "up").exists()


def test_a_run_whose_name_has_a_dot_is_served(tmp_path, store_home):
    """Valid run names may hold '.', which peft refuses in adapter names: the engine keys adapters itself."""
    from deploy_helpers import build_small_vocab_model, make_lora_run

    from tunesmith.serve.engine import Engine, GenerationRequest

    base = build_small_vocab_model(tmp_path / "base")
    runs = [make_lora_run(base, tmp_path / name, seed=seed) for name, seed in (("v1.2", 1), ("v1.3", 2))]
    engine = Engine.load([str(r) for r in runs], base=str(base))
    assert engine.names == ["v1.2", "v1.3", "base"]
    prompt = engine.chat_prompt("v1.2", [{"role": "user", "content": "What is the capital of France?"}])
    answers = {n: engine.complete(GenerationRequest(n, prompt, 8, 0.0)).text for n in engine.names}
    assert len(set(answers.values())) == 3  # each adapter answers through its own weights


# ------------------------------------------------------------------ nothing written outside $TUNESMITH_HOME and the given paths


SCRIPT = """
import sys
from tunesmith.cli.main import run
for argv in sys.argv[1:]:
    sys.argv = ["tunesmith", *argv.split("\\x1f")]
    try:
        run()
    except SystemExit as e:
        if e.code not in (0, None):
            raise
"""


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


def test_prepare_train_export_write_only_where_told(tiny_model_dir, tmp_path):
    """HOME, the working folder and TMPDIR are empty temp folders; afterwards they still are."""
    dirs = {k: tmp_path / k for k in ("home", "cwd", "tmp", "tunesmith_home", "inputs", "model")}
    for d in dirs.values():
        d.mkdir()
    model = dirs["model"] / "tiny"
    shutil.copytree(tiny_model_dir, model)
    data = sums_dataset(dirs["inputs"])[0]
    (dirs["inputs"] / "val.jsonl").unlink()
    with open(data, "a") as f:  # 30 rows in one file: prepare splits it
        f.writelines(json.dumps({"messages": [{"role": "user", "content": f"What is {i} times 2?"},
                                              {"role": "assistant", "content": f"{i} times 2 is {2 * i}."}]}) + "\n"
                     for i in range(6))
    inputs_before, model_before = _snapshot(dirs["inputs"]), _snapshot(dirs["model"])
    prepared, runs, export = tmp_path / "out" / "prepared", tmp_path / "out" / "runs", tmp_path / "out" / "export"
    sets = [f"model.name={model}", f"data.train={prepared / 'train.jsonl'}", f"data.validation={prepared / 'validation.jsonl'}",
            f"output_dir={runs}", "train.max_steps=2", "train.batch_size=4", "train.threads=1", "train.save_every=1"]
    commands = [["data", "prepare", str(data), "--out", str(prepared)],
                ["train", *[a for s in sets for a in ("--set", s)], "--name", "w"],
                ["export", "w", "--format", "adapter", "--out", str(export), "--verify-prompts", "1", "--verify-tokens", "4"]]
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("XDG_", "HF_", "TRANSFORMERS_", "TORCH", "MPL", "TRITON", "PYTHONPYCACHE"))}
    env.update(HOME=str(dirs["home"]), TMPDIR=str(dirs["tmp"]), TUNESMITH_HOME=str(dirs["tunesmith_home"]),
               HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONDONTWRITEBYTECODE="1")
    done = subprocess.run([sys.executable, "-c", SCRIPT, *["\x1f".join(c) for c in commands]], cwd=dirs["cwd"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    # Importing torch._dynamo (peft and transformers do) makes an empty torchinductor_<user> folder in the
    # temp folder: torch's doing, and empty. Nothing else may be left there, in HOME or in the working folder.
    for stray in dirs["tmp"].glob("torchinductor_*"):
        assert list(stray.iterdir()) == []
        stray.rmdir()
    for what in ("home", "cwd", "tmp"):
        assert sorted(p.name for p in dirs[what].rglob("*")) == [], what
    assert _snapshot(dirs["inputs"]) == inputs_before and _snapshot(dirs["model"]) == model_before
    assert {p.name for p in tmp_path.iterdir()} == set(dirs) | {"out"}
    assert {p.name for p in (tmp_path / "out").iterdir()} == {"prepared", "runs", "export"}
    assert (runs / "w" / "final" / "adapter_model.safetensors").is_file() and (export / "adapter_model.safetensors").is_file()
    assert (dirs["tunesmith_home"] / "runs.db").is_file()  # the registry lives in $TUNESMITH_HOME
