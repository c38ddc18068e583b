"""The advisor: each rule of the seed gives its recommendation, with reasons and a next command."""

from __future__ import annotations

import json

import pytest

from tunesmith.advise import advise, decide
from tunesmith.errors import DataError

ENOUGH = {"usable_rows": 500, "rows_read": 500, "errors": 0, "verdict": "ready", "verdict_message": "ready"}
LITTLE = {**ENOUGH, "usable_rows": 40, "rows_read": 40, "verdict": "too-little"}
POOR = {**ENOUGH, "errors": 90, "verdict": "fix-data", "verdict_message": "fix the data first"}


@pytest.mark.parametrize("facts, kwargs, expected", [
    (None, {}, "prompt"),
    (LITTLE, {"goal": "style"}, "prompt"),
    (POOR, {"goal": "format"}, "prompt"),
    (LITTLE, {"changes_often": True}, "rag"),
    (ENOUGH, {"goal": "knowledge"}, "rag"),
    (ENOUGH, {"goal": "knowledge", "budget": "high"}, "fine-tune+rag"),
    (ENOUGH, {"goal": "style"}, "fine-tune"),
    (ENOUGH, {"goal": "behaviour", "changes_often": True}, "fine-tune+rag"),
    (ENOUGH, {}, "fine-tune"),
])
def test_rules(facts, kwargs, expected):
    choice, reasons = decide(facts, changes_often=kwargs.get("changes_often", False), goal=kwargs.get("goal"),
                             budget=kwargs.get("budget"))
    assert choice == expected and reasons


def test_advise_on_a_file(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps({"input": f"q {i} {i * 3}", "output": f"a {i} {i * 7} words"}) + "\n"
                            for i in range(30)))
    advice = advise(path, goal="style")
    assert advice.recommendation == "prompt" and advice.data["usable_rows"] == 30
    assert any("only 30 usable examples" in r for r in advice.reasons)
    assert advice.next_commands[0].startswith(f"tunesmith data check {path}")
    with pytest.raises(DataError, match="unknown goal"):
        advise(goal="speed")


def _parse_only():
    """The real CLI with every command's body replaced by a no-op: running it parses the arguments only."""
    import typer

    from tunesmith.cli.main import app

    root = typer.main.get_command(app)
    groups = [root]
    while groups:
        for command in groups.pop().commands.values():
            if hasattr(command, "commands"):
                groups.append(command)
            else:
                command.callback = lambda **params: None
    return root


@pytest.mark.parametrize("choice", ["prompt", "rag", "fine-tune", "fine-tune+rag"])
@pytest.mark.parametrize("data", [None, "my data/faq.jsonl"])
def test_every_suggested_command_exists_and_its_arguments_parse(choice, data):
    import shlex

    from tunesmith.advise import next_commands

    cli = _parse_only()
    commands = next_commands(choice, data)
    assert commands
    for command in commands:
        argv = shlex.split(command)
        assert argv[0] == "tunesmith", command
        cli.main(argv[1:], prog_name="tunesmith", standalone_mode=False)  # raises on an unknown command or option
    assert not any("CONFIG.yaml" in c for c in commands)  # no file the user does not have
