"""The one renderer: only assistant tokens plus end-of-turn are trained; weight 0 is honoured; multi-turn."""

from __future__ import annotations

from tunesmith.data.render import PLAIN_BOS_TEMPLATE, PLAIN_TEMPLATE, render, render_example, render_prompt, stop_token_ids

CONVO = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi there"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "Bye"},
    {"role": "assistant", "content": "Goodbye."},
]


def trained_text(r, tokenizer) -> list[str]:
    """Decoded runs of trained tokens."""
    runs, current = [], []
    for tid, m in zip(r.input_ids, r.loss_mask):
        if m:
            current.append(tid)
        elif current:
            runs.append(tokenizer.decode(current)), current.clear()
    if current:
        runs.append(tokenizer.decode(current))
    return runs


def test_only_assistant_turns_and_end_of_turn_are_trained(tokenizer):
    r = render(CONVO, tokenizer)
    assert trained_text(r, tokenizer) == ["Hello!<|im_end|>", "Goodbye.<|im_end|>"]
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert sum(1 for t, m in zip(r.input_ids, r.loss_mask) if m and t == end) == 2
    assert r.labels.count(-100) == len(r.input_ids) - r.n_trained
    assert len(r.input_ids) == 39 and r.n_trained == 7


def test_weight_zero_turn_is_not_trained(tokenizer):
    convo = [dict(m) for m in CONVO]
    convo[2]["weight"] = 0
    assert trained_text(render(convo, tokenizer), tokenizer) == ["Goodbye.<|im_end|>"]
    assert render(convo, tokenizer).input_ids == render(CONVO, tokenizer).input_ids


def test_train_on_all_truncation_text_and_prompt(tokenizer):
    r = render(CONVO, tokenizer, train_on="all")
    assert r.n_trained == len(r.input_ids)
    cut = render(CONVO, tokenizer, max_length=10)
    assert len(cut.input_ids) == 10 and cut.truncated == 29
    t = render_example({"text": "plain words"}, tokenizer)
    assert t.n_trained == len(t.input_ids) and t.input_ids[-1] == tokenizer.eos_token_id
    prompt = render_prompt(CONVO[:2], tokenizer)
    assert tokenizer.decode(prompt).endswith("<|im_start|>assistant\n")
    assert render(CONVO[:3], tokenizer).input_ids[: len(prompt)] == prompt
    assert 2 in stop_token_ids(tokenizer)


def test_plain_template_for_base_models(tokenizer):
    import copy

    tok = copy.deepcopy(tokenizer)
    tok.chat_template = None
    r = render(CONVO[1:3], tok)
    assert tok.chat_template == PLAIN_TEMPLATE
    assert tok.decode(r.input_ids) == "### User:\nHi there\n\n### Assistant:\nHello!<|im_end|>\n\n"
    assert trained_text(r, tok) == ["Hello!<|im_end|>"]


def test_plain_template_writes_the_bos_once_for_a_tokenizer_that_starts_with_one(tokenizer):
    """Gemma-style: the post-processor adds the BOS (add_bos_token says False); training, prompts
    and plain text must all start with exactly one BOS, and the prompt must prefix the trained ids."""
    import copy

    from tokenizers import processors

    tok = copy.deepcopy(tokenizer)
    tok.chat_template = None
    bos = tok.bos_token_id
    tok._tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{tok.bos_token} $A", special_tokens=[(tok.bos_token, bos)])
    assert tok("a")["input_ids"][0] == bos and not getattr(tok, "add_bos_token", False)
    r = render(CONVO[:3], tok)
    assert tok.chat_template == PLAIN_BOS_TEMPLATE
    prompt = render_prompt(CONVO[:2], tok)
    assert r.input_ids[0] == bos and r.input_ids.count(bos) == 1 and r.loss_mask[0] == 0
    assert prompt[0] == bos and prompt.count(bos) == 1 and r.input_ids[: len(prompt)] == prompt
    assert tok.decode(prompt) == "<|im_start|>Be brief.\n\n### User:\nHi there\n\n### Assistant:\n"
    text = render_example({"text": "plain words"}, tok).input_ids
    assert text[0] == bos and text.count(bos) == 1
