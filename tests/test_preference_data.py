"""Preference data: the pair formats, every pair rule, check and prepare on pairs, and `data pairs` on a tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunesmith.data.check import CheckOptions, check
from tunesmith.data.formats import is_preference, read_examples
from tunesmith.data.prepare import load_split, prepare
from tunesmith.errors import DataError

USER, ASSISTANT = "user", "assistant"


def jsonl(tmp_path: Path, rows: list, name: str = "d.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def msgs(*turns) -> list[dict]:
    return [{"role": r, "content": c} for r, c in turns]


def pair(i: int, **extra) -> dict:
    return {"prompt": f"question {i} about permits number {i}", "chosen": f"a careful answer {i} of {i * 7} weeks",
            "rejected": f"no idea about {i}", **extra}


def issues(path: Path, **opts) -> list[tuple[int, str, str]]:
    return [(f.line, f.field, f.rule) for f in check(path, CheckOptions(**opts)).issues]


# ------------------------------------------------------------------ formats

PROMPT = msgs((USER, "Permit time?"))
FORMATS = {
    "preference": {"prompt": "Permit time?", "chosen": "About 10 weeks.", "rejected": "Who knows."},
    "conversational": {"prompt": msgs(("system", "Be brief."), (USER, "Permit time?")),
                       "chosen": msgs((ASSISTANT, "About 10 weeks.")), "rejected": msgs((ASSISTANT, "Who knows."))},
    "implicit": {"chosen": msgs((USER, "Hi"), (ASSISTANT, "Hello!"), (USER, "Permit time?"), (ASSISTANT, "About 10 weeks.")),
                 "rejected": msgs((USER, "Hi"), (ASSISTANT, "Hello!"), (USER, "Permit time?"), (ASSISTANT, "Who knows."))},
    "openai-preference": {"input": {"messages": PROMPT}, "preferred_output": msgs((ASSISTANT, "About 10 weeks.")),
                          "non_preferred_output": msgs((ASSISTANT, "Who knows."))},
    "canonical": {"messages": PROMPT, "chosen": "About 10 weeks.", "rejected": "Who knows.", "source_line": 4},
}
PROMPTS = {"preference": PROMPT, "conversational": msgs(("system", "Be brief."), (USER, "Permit time?")),
           "implicit": msgs((USER, "Hi"), (ASSISTANT, "Hello!"), (USER, "Permit time?")),
           "openai-preference": PROMPT, "canonical": PROMPT}


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_every_pair_format_reads_to_the_canonical_example(tmp_path, name):
    result = read_examples(jsonl(tmp_path, [FORMATS[name]]))
    assert result.findings == [] and result.format == ("openai-preference" if name.startswith("openai") else "preference")
    assert result.examples == [{"messages": PROMPTS[name], "chosen": "About 10 weeks.", "rejected": "Who knows.", "line": 1}]
    assert is_preference(result.examples[0])


def test_aliases_system_and_csv(tmp_path):
    path = jsonl(tmp_path, [FORMATS["preference"], {**FORMATS["preference"], "system": "Row system."}])
    examples = read_examples(path, format="dpo", system="Be brief.").examples
    assert [e["messages"][0] for e in examples] == [{"role": "system", "content": "Be brief."},
                                                     {"role": "system", "content": "Row system."}]
    assert read_examples(jsonl(tmp_path, [FORMATS["openai-preference"]]), format="openai-dpo").format == "openai-preference"
    assert read_examples(path, format="trl-preference").format == "preference"
    (tmp_path / "p.csv").write_text('prompt,chosen,rejected\n"[not json] a prompt",yes,no\n')
    assert read_examples(tmp_path / "p.csv").examples[0]["messages"] == msgs((USER, "[not json] a prompt"))


# every finding: rows that trigger it (line, field, rule), all problems of a row at once
FINDINGS = [
    ({"prompt": "q"}, [(1, "chosen", "field.missing"), (1, "rejected", "field.missing")]),
    ({"prompt": "q", "chosen": " ", "rejected": 3}, [(1, "chosen", "field.empty"), (1, "rejected", "field.type")]),
    ({"prompt": "q", "chosen": "same answer", "rejected": "same  answer "}, [(1, "rejected", "pair.same")]),
    ({"prompt": msgs((USER, "q"), (ASSISTANT, "a")), "chosen": "x", "rejected": "y"}, [(1, "prompt[1]", "pair.prompt")]),
    ({"prompt": msgs((ASSISTANT, "a"), (USER, "q")), "chosen": "x", "rejected": "y"}, [(1, "prompt[0]", "role.order")]),
    ({"prompt": "q", "chosen": msgs((ASSISTANT, "x"), (ASSISTANT, "z")), "rejected": msgs((USER, "y"))},
     [(1, "chosen", "pair.answer"), (1, "rejected[0]", "pair.answer")]),
    ({"chosen": msgs((USER, "q"), (ASSISTANT, "x")), "rejected": msgs((USER, "other"), (ASSISTANT, "y"))},
     [(1, "rejected[0]", "pair.prefix")]),
    ({"chosen": msgs((USER, "q"), (ASSISTANT, "x")), "rejected": msgs((USER, "q"))}, [(1, "rejected[0]", "pair.prefix")]),
    ({"chosen": "x", "rejected": "y"}, [(1, "prompt", "field.missing")]),
    ({"input": [], "preferred_output": msgs((ASSISTANT, "x"))},
     [(1, "non_preferred_output", "field.missing"), (1, "input", "field.type")]),
]


@pytest.mark.parametrize("row,expected", FINDINGS, ids=[e[-1][-1] for _, e in FINDINGS])
def test_each_pair_finding_names_line_field_and_rule(tmp_path, row, expected):
    assert issues(jsonl(tmp_path, [row]), format="preference" if "prompt" in row else None) == expected


def test_messy_preference_file_reports_everything_at_once(tmp_path):
    rows = [pair(1), {**pair(1), "chosen": pair(1)["rejected"], "rejected": pair(1)["chosen"]},  # contradicts line 1
            pair(1), pair(2, rejected="call 0771-567 567"), pair(3, chosen="mail jane.doe@example.com"),
            {**pair(4), "chosen": pair(4)["rejected"]}, {"prompt": "q"}, pair(5), {**pair(5), "rejected": "another"}]
    report = check(jsonl(tmp_path, rows))
    assert [(f.line, f.field, f.rule) for f in report.issues] == [
        (2, "chosen", "pair.contradict"), (3, "", "dup.exact"), (3, "chosen", "pair.contradict"), (4, "rejected", "pii.phone"), (5, "chosen", "pii.email"),
        (6, "rejected", "pair.same"), (7, "chosen", "field.missing"), (7, "rejected", "field.missing")]
    assert "line 1" in report.issues[0].message and "line 2" in report.issues[2].message  # the row it reverses
    s = report.summary
    assert s["format"] == "preference" and s["conflicts"] == 0 and s["pairs"]["contradictions"] == 2  # line 9: no conflict
    assert s["rows_with_errors"] == 2 and s["usable_rows"] == 6


def test_length_gap_is_one_file_level_warning(tmp_path):
    longer = [pair(i, chosen=f"a long, careful and complete answer number {i}", rejected=f"short {i}") for i in range(12)]
    report = check(jsonl(tmp_path, longer))
    gap = [f for f in report.issues if f.rule == "pair.length_gap"]
    assert [(f.line, f.severity) for f in gap] == [(0, "warning")] and "100%" in gap[0].message
    assert report.summary["pairs"]["chosen_longer"] == 1.0 and report.summary["pairs"]["ratio"] > 3
    balanced = [pair(i, chosen=f"answer {i} is no", rejected=f"answer {i} is yes") if i % 2  # rejected longer, then chosen
                else pair(i, rejected=f"a careful answer {i} of {i * 7} week") for i in range(12)]
    assert "pair.length_gap" not in {r for _, _, r in issues(jsonl(tmp_path, balanced, "b.jsonl"))}
    assert "pair.length_gap" not in {r for _, _, r in issues(jsonl(tmp_path, longer[:9], "few.jsonl"))}  # under 10 pairs


def test_over_length_pairs_and_a_leak(tmp_path, tokenizer):
    rows = [pair(1), pair(2, chosen="word " * 300)]
    found = issues(jsonl(tmp_path, rows), tokenizer=tokenizer, max_length=200)
    assert found == [(2, "chosen", "length.over_context")]
    report = check(jsonl(tmp_path, rows), CheckOptions(tokenizer=tokenizer, max_length=1024))
    assert report.summary["tokens"]["rows"] == 2 and report.issues == []
    sft = jsonl(tmp_path, [{"input": pair(1)["prompt"], "output": "whatever"}], "test.jsonl")
    assert issues(jsonl(tmp_path, rows), against=sft) == [(1, "", "leak.exact")]


def test_speed_estimate_says_it_covers_sft_only(tmp_path, tokenizer):
    from tunesmith.data.readiness import add_estimate

    report = check(jsonl(tmp_path, [pair(1)]), CheckOptions(tokenizer=tokenizer))
    add_estimate(report.summary, report.sample, "not-loaded")
    assert "estimate" not in report.summary["verdict"] and "preference" in report.summary["notes"][-1]


def test_prepare_keeps_whole_pairs_and_load_split_returns_them(tmp_path):
    rows = [pair(i) for i in range(10)] + [pair(3), pair(3, rejected="a different bad answer")]
    out = tmp_path / "prep"
    card = prepare(jsonl(tmp_path, rows), out, split=(80, 10, 10))
    assert card["format"] == "preference" and card["rejected_by_reason"] == {"dup.exact": 1} and card["kept"] == 11
    assert card["kept_with_warnings"] == {}
    splits = {name: load_split(out / f"{name}.jsonl") for name in ("train", "validation", "test")}
    every = sorted((e for rows in splits.values() for e in rows), key=lambda e: e["source_line"])
    assert [e["source_line"] for e in every] == [*range(1, 11), 12]
    assert every[0] == {"messages": msgs((USER, pair(0)["prompt"])), "chosen": pair(0)["chosen"],
                        "rejected": pair(0)["rejected"], "line": every[0]["line"], "source_line": 1}
    same_prompt = [name for name, rows in splits.items() for e in rows if e["messages"][0]["content"] == pair(3)["prompt"]]
    assert len(same_prompt) == 2 and len(set(same_prompt)) == 1  # one prompt's pairs never cross splits


def test_splits_for_training_gives_canonical_pairs_with_token_counts(tmp_path, tokenizer):
    from tunesmith.config import DataConfig
    from tunesmith.data.prepare import splits_for_training

    train = jsonl(tmp_path, [FORMATS["openai-preference"]] + [{"input": {"messages": msgs((USER, f"q {i}"))},
                  "preferred_output": msgs((ASSISTANT, f"good {i}")), "non_preferred_output": msgs((ASSISTANT, "bad"))}
                  for i in range(9)])
    splits = splits_for_training(DataConfig(train=str(train), system="Be brief."), tmp_path / "run-data", tokenizer)
    every = splits.train + splits.validation + splits.test
    assert len(every) == 10 and all(is_preference(e) and e["messages"][0]["role"] == "system" for e in every)
    assert splits.card["format"] == "openai-preference" and splits.card["tokens"]["train"]["rows"] == len(splits.train)


# ------------------------------------------------------------------ data pairs

SFT = [{"messages": msgs((USER, f"Question {i}: what is {i} plus {i}?"), (ASSISTANT, f"It is {2 * i}."))} for i in range(11)]
SFT[3] = {"messages": msgs(("system", "Be exact."), (USER, "Hi"), (ASSISTANT, "Hello"), (USER, "2+2?"), (ASSISTANT, "4"))}


@pytest.fixture(scope="module")
def sampler(tiny_model_dir, one_thread):
    """The tiny model loaded once, through the loader `data pairs` uses, and given to every later call; the loads."""
    from tunesmith.data import pairs

    loaded = pairs._engine(pairs.PairOptions(model=str(tiny_model_dir), device="cpu"))
    loads = []

    def engine(options):
        loads.append(options)
        return loaded

    saved = pairs._engine
    pairs._engine = engine
    yield loads
    pairs._engine = saved


def options(tiny_model_dir, **changes):
    from tunesmith.data.pairs import PairOptions

    return PairOptions(model=str(tiny_model_dir), max_new_tokens=6, **changes)


def test_pairs_are_seeded_readable_and_resumable(tmp_path, tiny_model_dir, sampler):
    from tunesmith.data.pairs import build_pairs, record_path

    source = jsonl(tmp_path, SFT, "sft.jsonl")
    whole = build_pairs(source, tmp_path / "a.jsonl", options(tiny_model_dir))
    assert (whole.written, whole.resumed, whole.examples) == (11, 0, 11)
    text = (tmp_path / "a.jsonl").read_text()
    rows = [json.loads(line) for line in text.splitlines()]
    assert rows[3]["prompt"] == msgs(("system", "Be exact."), (USER, "Hi"), (ASSISTANT, "Hello"), (USER, "2+2?"))
    assert rows[0]["prompt"] == "Question 0: what is 0 plus 0?" and rows[0]["chosen"] == "It is 0." and rows[0]["rejected"]
    back = read_examples(tmp_path / "a.jsonl")
    assert back.format == "preference" and len(back.examples) == 11 and back.findings == []
    # the same seed writes the same file; another seed another one
    build_pairs(source, tmp_path / "b.jsonl", options(tiny_model_dir))
    assert (tmp_path / "b.jsonl").read_text() == text
    build_pairs(source, tmp_path / "c.jsonl", options(tiny_model_dir, seed=1))
    assert (tmp_path / "c.jsonl").read_text() != text
    # stopped after a few rows (--limit), then cut off mid-line: the rerun writes what one run did
    part = tmp_path / "part.jsonl"
    assert build_pairs(source, part, options(tiny_model_dir, limit=5)).written == 5
    part.write_bytes(part.read_bytes()[:-20])
    again = build_pairs(source, part, options(tiny_model_dir))
    assert part.read_text() == text and (again.resumed, again.written) == (4, 11)
    loads = len(sampler)
    assert build_pairs(source, part, options(tiny_model_dir)).written == 11 and len(sampler) == loads  # nothing to do
    assert json.loads(record_path(part).read_text())["created_by"] == "tunesmith data pairs"


def test_an_interrupted_run_continues_without_a_duplicate(tmp_path, tiny_model_dir, sampler):
    from tunesmith.data.pairs import build_pairs

    source = jsonl(tmp_path, SFT, "sft.jsonl")
    build_pairs(source, tmp_path / "whole.jsonl", options(tiny_model_dir, temperature=1.0))

    def stop(done, total):
        if done:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_pairs(source, tmp_path / "cut.jsonl", options(tiny_model_dir, temperature=1.0), progress=stop)
    assert len((tmp_path / "cut.jsonl").read_text().splitlines()) == 8  # the first batch
    build_pairs(source, tmp_path / "cut.jsonl", options(tiny_model_dir, temperature=1.0))
    assert (tmp_path / "cut.jsonl").read_text() == (tmp_path / "whole.jsonl").read_text()


def test_pairs_refuse_files_they_did_not_make(tmp_path, tiny_model_dir, sampler):
    from tunesmith.data.pairs import build_pairs

    source = jsonl(tmp_path, SFT, "sft.jsonl")
    mine = jsonl(tmp_path, [pair(1)], "mine.jsonl")
    with pytest.raises(DataError, match="not written by `tunesmith data pairs`"):
        build_pairs(source, mine, options(tiny_model_dir))
    assert mine.read_text() == json.dumps(pair(1)) + "\n"
    with pytest.raises(DataError, match="the input file"):
        build_pairs(source, source, options(tiny_model_dir))
    build_pairs(source, tmp_path / "p.jsonl", options(tiny_model_dir, limit=1))
    with pytest.raises(DataError, match=r"other settings \(seed 0, now 2\)"):
        build_pairs(source, tmp_path / "p.jsonl", options(tiny_model_dir, seed=2))
    other = jsonl(tmp_path, SFT[:2], "other.jsonl")
    with pytest.raises(DataError, match="another input"):
        build_pairs(other, tmp_path / "p.jsonl", options(tiny_model_dir))
    with pytest.raises(DataError, match=r"bad.jsonl:2 \(output\): 'output' is missing"):
        build_pairs(jsonl(tmp_path, [{"input": "q", "output": "a"}, {"input": "q"}], "bad.jsonl"), tmp_path / "q.jsonl",
                    options(tiny_model_dir))
    with pytest.raises(DataError, match="preference pairs already"):
        build_pairs(mine, tmp_path / "q.jsonl", options(tiny_model_dir))


class _Echo:
    """An engine whose first answer to each prompt is `first`, then `then`."""

    context_length = 1024

    def __init__(self, first: str, then: str = "a worse answer"):
        self.first, self.then, self.calls = first, then, []

    def generate(self, prompts, samplings):
        from tunesmith.models.engine import Event

        self.calls.append([s.seed for s in samplings])
        return [Event(self.first if len(self.calls) == 1 else self.then, "stop") for _ in prompts]


def test_a_sampled_copy_of_the_chosen_answer_is_resampled_with_the_next_seed(tokenizer):
    from tunesmith.data.pairs import PairOptions, _Source, sample, seed_for

    batch = [_Source(1, msgs((USER, "q")), "It is 4."), _Source(2, msgs((USER, "r")), "Other.")]
    engine = _Echo("It is  4.")
    answers = sample(engine, tokenizer, batch, PairOptions())
    assert answers == {1: ("a worse answer", None), 2: ("It is  4.", None)}
    assert engine.calls == [[seed_for(0, 1, 0), seed_for(0, 2, 0)], [seed_for(0, 1, 1)]]
    assert seed_for(0, 1, 1) == seed_for(0, 1, 0) + 1
    stuck = _Echo("", then="")
    assert sample(stuck, tokenizer, batch[:1], PairOptions()) == {1: ("", "empty")} and len(stuck.calls) == 4


def test_data_pairs_cli(tmp_path, tiny_model_dir, sampler):
    from test_data_cli import invoke

    source = jsonl(tmp_path, SFT[:4], "sft.jsonl")
    result = invoke("data", "pairs", source, "--out", tmp_path / "p.jsonl", "--model", tiny_model_dir,
                    "--max-new-tokens", "4", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["written"] == 4
    result = invoke("data", "pairs", source, "--out", tmp_path / "p.jsonl", "--model", tiny_model_dir,
                    "--max-new-tokens", "4")
    assert result.exit_code == 0 and "4 pairs in" in result.output and "4 of them there before" in result.output
    result = invoke("data", "check", tmp_path / "p.jsonl")
    assert result.exit_code == 0 and "4 pairs: chosen answers" in result.output
    assert invoke("data", "pairs", source, "--out", source, "--model", tiny_model_dir).exit_code == 2
    assert invoke("data", "pairs", source, "--model", tiny_model_dir).exit_code == 2  # --out is required
    assert invoke("data", "pairs", source, "--out", tmp_path / "x.jsonl", "--top-p", "0").exit_code == 2
    assert invoke("data", "pairs", source, "--out", tmp_path / "x.jsonl", "--run", "r", "--model", "m").exit_code == 2


TOPICS = [("How long does a building permit take?", "About ten weeks from a complete application."),
          ("How long is a building permit valid?", "Work must start within two years of the decision."),
          ("What does a kitchen renovation cost?", "Between 150 and 300 thousand kronor for most kitchens."),
          ("What does a bathroom renovation cost?", "Usually 200 thousand kronor including tiles and plumbing."),
          ("What does a bathroom renovation cost in total?", "Usually 200 thousand kronor including tiles and pipes."),
          ("Do you work on weekends?", "Our office is open Monday to Friday.")]


def test_similar_pairs_take_another_prompts_answer_and_load_no_model(tmp_path, sampler):
    from tunesmith.data.pairs import PairOptions, build_pairs, record_path

    source = jsonl(tmp_path, [{"input": q, "output": a} for q, a in TOPICS], "faq.jsonl")
    loads = len(sampler)
    summary = build_pairs(source, tmp_path / "p.jsonl", PairOptions(rejected="similar"))
    rows = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    by_prompt = {r["prompt"]: r["rejected"] for r in rows}
    answers = dict(TOPICS)
    assert len(sampler) == loads and summary.written == len(TOPICS) and summary.skipped == {}
    assert all(r["rejected"] in answers.values() and r["rejected"] != r["chosen"] for r in rows)
    # the nearest question whose answer is not a near copy of this one's
    assert by_prompt[TOPICS[0][0]] == TOPICS[1][1] and by_prompt[TOPICS[1][0]] == TOPICS[0][1]
    assert by_prompt[TOPICS[3][0]] not in (TOPICS[3][1], TOPICS[4][1])  # 3 and 4: the same answer, reworded
    assert json.loads(record_path(tmp_path / "p.jsonl").read_text())["settings"]["rejected"] == "similar"
    first = (tmp_path / "p.jsonl").read_bytes()
    assert build_pairs(source, tmp_path / "q.jsonl", PairOptions(rejected="similar", limit=2)).written == 2
    assert build_pairs(source, tmp_path / "q.jsonl", PairOptions(rejected="similar")).written == len(TOPICS)
    assert (tmp_path / "q.jsonl").read_bytes() == first  # a limit never changes a pair; a rerun goes on
    with pytest.raises(DataError, match=r"other settings .*rejected 'similar', now 'sample'"):
        build_pairs(source, tmp_path / "p.jsonl", PairOptions())


def test_similar_pairs_refuse_a_model_and_skip_examples_with_only_alike_answers(tmp_path):
    from tunesmith.data.pairs import PairOptions, _Source, check_options, similar_answers
    from tunesmith.errors import ConfigError

    with pytest.raises(ConfigError, match="no model samples them"):
        check_options(PairOptions(rejected="similar", model="m"))
    with pytest.raises(ConfigError, match="expected one of sample, similar"):
        check_options(PairOptions(rejected="other"))
    same = [_Source(i, msgs((USER, f"q {i}")), "the same answer every time") for i in (1, 2)]
    assert similar_answers(same) == {1: ("", "alike"), 2: ("", "alike")}
