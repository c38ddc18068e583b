"""The one renderer: a conversation -> token ids and a loss mask, through the model's chat template.

Training, evaluation and serving all call this module, so a model is always prompted the way it
was trained. By default the loss is on assistant turns only (every one of them, unless a message
carries `weight: 0`) and includes the end-of-turn token, so the model learns to stop.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Callable, Literal, Sequence

from tunesmith.errors import DataError

# For base models without a chat template. Documented in docs/data-formats.md.
PLAIN_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] }}\n\n"
    "{% elif message['role'] == 'user' %}### User:\n{{ message['content'] }}\n\n"
    "{% elif message['role'] == 'assistant' %}### Assistant:\n{{ message['content'] }}{{ eos_token }}\n\n"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}### Assistant:\n{% endif %}"
)
# The same for tokenizers whose sequences start with a BOS token (Gemma, Llama): the renderer
# encodes the template's text without special tokens, so the template must write the BOS itself,
# as those models' own chat templates do.
PLAIN_BOS_TEMPLATE = "{{ bos_token }}" + PLAIN_TEMPLATE

Message = dict[str, Any]
# Tokens that end a turn in the chat templates tunesmith knows (Qwen/ChatML, Llama 3, Gemma, Phi-3).
TURN_ENDS = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>")

# The run's system prompt as the chat template's own default (see with_system_template). The marks
# let a later bake replace an earlier one; `{{ '' }}` ends the prelude with an expression, so
# trim_blocks cannot eat a newline the template itself starts with.
PRELUDE_START = "{#- tunesmith: the run's system prompt is the default #}{%- set tunesmith_system = "
PRELUDE_END = "{#- tunesmith: end #}{{ '' }}"
_ADD_SYSTEM = ("{%- if not messages or messages[0]['role'] != 'system' %}"
               "{%- set messages = [{'role': 'system', 'content': tunesmith_system}] + messages %}{%- endif %}")
# For templates that refuse a system role: the same fold as fold_system, in Jinja.
_FOLD_SYSTEM = ("{%- set ts_system = tunesmith_system %}"
                "{%- if messages and messages[0]['role'] == 'system' and messages|length > 1 "
                "and messages[1]['role'] == 'user' %}"
                "{%- set ts_system = messages[0]['content'] %}{%- set messages = messages[1:] %}{%- endif %}"
                "{%- if ts_system and messages and messages[0]['role'] == 'user' %}"
                "{%- set messages = [{'role': 'user', 'content': ts_system + '\\n\\n' + messages[0]['content']}]"
                " + messages[1:] %}{%- endif %}")


@dataclass
class Rendered:
    """Token ids and, per token, 1 where the loss is taken. `truncated` counts tokens cut off the end."""

    input_ids: list[int]
    loss_mask: list[int]
    truncated: int = 0

    @property
    def labels(self) -> list[int]:
        """input_ids with untrained positions set to -100 (the model shifts them itself)."""
        return [t if m else -100 for t, m in zip(self.input_ids, self.loss_mask)]

    @property
    def n_trained(self) -> int:
        return sum(self.loss_mask)

    @property
    def loss_units(self) -> int:
        """What the loss is averaged over: positions whose next token is trained (the first is never predicted)."""
        return sum(self.loss_mask[1:])


@dataclass
class RenderedPair:
    """A preference pair: the prompt's ids once, then each answer's ids and loss mask after it.

    `prompt + chosen` and `prompt + rejected` are exactly the ids `render` gives each whole
    conversation, so a pair is scored as its two conversations would be. `ref` holds the
    reference model's summed log-probabilities of (chosen, rejected), once computed.
    """

    prompt: list[int]
    chosen: list[int]
    chosen_mask: list[int]
    rejected: list[int]
    rejected_mask: list[int]
    truncated: int = 0
    ref: tuple[float, float] | None = None

    @property
    def input_ids(self) -> list[int]:
        """The ids of the pair's shared row: prompt, chosen, rejected (the length packing plans with)."""
        return self.prompt + self.chosen + self.rejected

    @property
    def loss_mask(self) -> list[int]:
        return [0] * len(self.prompt) + self.chosen_mask + self.rejected_mask

    @property
    def n_trained(self) -> int:
        return sum(self.chosen_mask) + sum(self.rejected_mask)

    @property
    def loss_units(self) -> int:
        """A pair's loss is one number: 1, or 0 when a side has no trained token left (cut by max_length)."""
        return int(any(self.chosen_mask) and any(self.rejected_mask))


def ensure_chat_template(tokenizer) -> str:
    """Give a tokenizer without a chat template the documented plain one; return the template."""
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = PLAIN_BOS_TEMPLATE if bos_prefix(tokenizer) else PLAIN_TEMPLATE
    return tokenizer.chat_template


def bos_prefix(tokenizer) -> list[int]:
    """[bos_token_id] when the tokenizer starts a sequence with it, else [].

    Asked of the tokenizer itself rather than read from `add_bos_token`: a tokenizer converted
    from GGUF (Gemma) adds its BOS in the post-processor while `add_bos_token` says False.
    """
    bos = tokenizer.bos_token_id
    if bos is None:
        return []
    return [bos] if tokenizer("a")["input_ids"][:1] == [bos] else []


def template_hash(tokenizer) -> str:
    """A short fingerprint of the chat template, stored in run manifests and exports."""
    return hashlib.sha256(ensure_chat_template(tokenizer).encode("utf-8")).hexdigest()[:16]


def with_system(messages: Sequence[Message], system: str | None) -> list[Message]:
    """`messages` with `system` first when they have no system message of their own.

    The one rule for a run's system prompt (`data.system`): training adds it to every row this
    way, and a run's chat template does the same when it is served (`with_system_template`).
    """
    msgs = list(messages)
    if system and (not msgs or msgs[0]["role"] != "system"):
        msgs.insert(0, {"role": "system", "content": system})
    return msgs


def fold_system(messages: Sequence[Message]) -> list[Message]:
    """A leading system message folded into the first user turn ('SYSTEM\\n\\nUSER'); other messages unchanged.

    For templates that refuse a system role (Gemma 2 raises): `render` and `render_prompt` do it,
    so training and serving handle a system prompt the same way on them.
    """
    msgs = list(messages)
    if len(msgs) > 1 and msgs[0]["role"] == "system" and msgs[1]["role"] == "user":
        system, user = msgs[0]["content"], msgs[1]
        content = f"{system}\n\n{user['content']}" if system else user["content"]
        return [{**user, "content": content}] + msgs[2:]
    return msgs


def rejects_system(tokenizer, template: str | None = None) -> bool:
    """Does the chat template (default: the tokenizer's) refuse a system message yet render a user turn?"""
    import jinja2

    template = template or ensure_chat_template(tokenizer)
    probe = [{"role": "user", "content": "x"}]
    try:
        tokenizer.apply_chat_template(probe, chat_template=template, tokenize=False)
    except jinja2.TemplateError:
        return False  # it refuses more than a system role: let the real conversation say why
    try:
        tokenizer.apply_chat_template([{"role": "system", "content": "x"}] + probe, chat_template=template,
                                      tokenize=False)
    except jinja2.TemplateError:
        return True
    return False


def with_system_template(tokenizer, system: str | None) -> str:
    """Make `system` the chat template's default: sets and returns `tokenizer.chat_template`.

    A Jinja prelude does what `with_system` does (or, for a template that refuses a system role,
    what `fold_system` does) before the template runs, so a plain `apply_chat_template` on an
    exported tokenizer prompts as training did. A conversation with its own system message keeps
    it. An earlier prelude is replaced; `system` None leaves just the template (plus the fold).
    """
    template = _without_prelude(ensure_chat_template(tokenizer))
    fold = rejects_system(tokenizer, template)
    if system or fold:
        literal = json.dumps(system, ensure_ascii=False) if system else "none"  # a valid Jinja string literal
        template = PRELUDE_START + literal + " %}" + (_FOLD_SYSTEM if fold else _ADD_SYSTEM) + PRELUDE_END + template
    tokenizer.chat_template = template
    return template


def template_system(template: str) -> str | None:
    """The system prompt a tunesmith prelude makes the template's default, or None."""
    if not template.startswith(PRELUDE_START):
        return None
    try:
        value, _ = json.JSONDecoder().raw_decode(template, len(PRELUDE_START))
    except ValueError:  # `none`: the prelude only folds
        return None
    return value if isinstance(value, str) else None


def render_example(example: dict, tokenizer, *, max_length: int | None = None) -> Rendered | RenderedPair:
    """A canonical example ({'messages': [...]}, {'text': ...}, or a preference pair) -> ids and loss mask."""
    if "chosen" in example:
        return render_pair(example, tokenizer, max_length=max_length)
    if "text" in example and "messages" not in example:
        return render_text(example["text"], tokenizer, max_length=max_length)
    return render(example["messages"], tokenizer, max_length=max_length)


def render(
    messages: Sequence[Message],
    tokenizer,
    *,
    max_length: int | None = None,
    train_on: Literal["assistant", "all"] = "assistant",
) -> Rendered:
    """Render a conversation through the chat template; train on assistant turns (with end-of-turn)."""
    ensure_chat_template(tokenizer)
    messages, msgs, text = _template_text(tokenizer, messages, add_generation_prompt=False)
    spans = [(0, len(text))] if train_on == "all" else _assistant_spans(tokenizer, messages, msgs, text)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    return _truncate(ids, _mask_from_spans(enc["offset_mapping"], spans), max_length)


def render_pair(example: dict, tokenizer, *, max_length: int | None = None) -> RenderedPair:
    """A preference example ({'messages': prompt, 'chosen': str, 'rejected': str}) -> a RenderedPair.

    Each answer is rendered as the whole conversation it ends, through `render`; the prompt is
    the ids both renderings share before the first trained token (a template may tokenize the
    boundary differently, so it is found, not assumed). `max_length` bounds each conversation
    (prompt + one answer), as for an SFT example: the answers are cut at the end.
    """
    chosen, rejected = (render(c, tokenizer) for c in pair_conversations(example))
    limit = min(_first_trained(chosen), _first_trained(rejected))
    shared = 0
    while shared < limit and chosen.input_ids[shared] == rejected.input_ids[shared]:
        shared += 1
    cut = 0
    sides = []
    for r in (chosen, rejected):
        keep = len(r.input_ids) if max_length is None else max(shared, min(len(r.input_ids), max_length))
        cut += len(r.input_ids) - keep
        sides.append((r.input_ids[shared:keep], r.loss_mask[shared:keep]))
    return RenderedPair(chosen.input_ids[:shared], *sides[0], *sides[1], truncated=cut)


def pair_conversations(example: dict) -> tuple[list[Message], list[Message]]:
    """A preference pair as the two conversations it is trained as: the prompt (its own assistant turns
    untrained) then the chosen answer, and then the rejected one."""
    prompt = [{**m, "weight": 0} if m["role"] == "assistant" else m for m in example["messages"]]
    return tuple(prompt + [{"role": "assistant", "content": example[side]}] for side in ("chosen", "rejected"))


def _first_trained(r: Rendered) -> int:
    return next((i for i, m in enumerate(r.loss_mask) if m), len(r.input_ids))


def trained_continuation(prompt_ids: Sequence[int], rendered: Rendered) -> list[int] | None:
    """The trained tokens right after `prompt_ids` in `rendered`, when `rendered` is exactly the prompt, then
    one run of trained tokens, then untrained ones only; else None (a template that tokenizes the boundary
    differently, or trains elsewhere too)."""
    n = len(prompt_ids)
    if rendered.input_ids[:n] != list(prompt_ids) or _first_trained(rendered) != n:
        return None
    end = next((i for i in range(n, len(rendered.input_ids)) if not rendered.loss_mask[i]), len(rendered.input_ids))
    if any(rendered.loss_mask[end:]):
        return None
    return rendered.input_ids[n:end]


def render_text(text: str, tokenizer, *, max_length: int | None = None) -> Rendered:
    """Plain text (continued pre-training): every token is trained, then end-of-sequence."""
    ids = bos_prefix(tokenizer) + list(tokenizer(text, add_special_tokens=False)["input_ids"])
    if tokenizer.eos_token_id is not None:
        ids = ids + [tokenizer.eos_token_id]
    return _truncate(list(ids), [1] * len(ids), max_length)


def each_example(examples: Sequence[dict], fn: Callable[[dict], Any]) -> list[Any]:
    """fn(example) for every example; one DataError naming every example the chat template refuses.

    Examples are named by their `source_line` (set when a file is read) or their position.
    """
    out, refused = [], []
    for i, ex in enumerate(examples, 1):
        try:
            out.append(fn(ex))
        except DataError as e:
            refused.append((str(ex.get("source_line", i)), e))
    if refused:
        from tunesmith.io import some_names

        first = refused[0][1]
        raise DataError(f"{first.message} (lines {some_names([n for n, _ in refused])}: {len(refused)} of "
                        f"{len(examples)} examples)", first.hint)
    return out


def render_prompt(messages: Sequence[Message], tokenizer) -> list[int]:
    """The ids a model sees before it answers: the conversation plus the assistant header."""
    return list(tokenizer(prompt_text(messages, tokenizer), add_special_tokens=False)["input_ids"])


def prompt_text(messages: Sequence[Message], tokenizer) -> str:
    """The text of `render_prompt`, before tokenizing (what a llama.cpp or Ollama user's server renders)."""
    ensure_chat_template(tokenizer)
    _, _, text = _template_text(tokenizer, messages, add_generation_prompt=True)
    return text


def pad_batch(rendered: Sequence[Rendered], pad_id: int) -> dict:
    """Right-padded to the longest: input_ids, labels (-100 on padding), attention_mask, each (B, T)."""
    import torch

    shape = (len(rendered), max(len(r.input_ids) for r in rendered))
    input_ids = torch.full(shape, pad_id, dtype=torch.long)
    labels = torch.full(shape, -100, dtype=torch.long)
    attention = torch.zeros(shape, dtype=torch.long)
    for b, r in enumerate(rendered):
        n = len(r.input_ids)
        input_ids[b, :n] = torch.tensor(r.input_ids)
        labels[b, :n] = torch.tensor(r.labels)
        attention[b, :n] = 1
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}


def stop_token_ids(tokenizer) -> list[int]:
    """Token ids that end an assistant turn (eos, and the template's end-of-turn marker if different)."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    for marker in (*TURN_ENDS, "<|endoftext|>"):
        tid = tokenizer.convert_tokens_to_ids(marker) if marker in tokenizer.get_vocab() else None
        if tid is not None and marker in (tokenizer.chat_template or ""):
            ids.add(tid)
    return sorted(ids)


# ------------------------------------------------------------------ internals


def _apply(tokenizer, msgs: list[Message], *, add_generation_prompt: bool) -> str:
    """The template's text; its own refusals (raise_exception: role order, ...) become one DataError line."""
    import jinja2

    try:
        return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=add_generation_prompt)
    except jinja2.TemplateError as e:
        roles = ", ".join(m["role"] for m in msgs) or "none"
        raise DataError(f"the chat template refused a conversation with roles {roles}: {e}",
                        "conversations are an optional system message, then user and assistant turns in turn") from None


def _template_text(tokenizer, messages: Sequence[Message], *, add_generation_prompt: bool):
    """(messages, their role/content copies, the template's text). A template that refuses the system
    role gets it folded into the first user turn; asked only on a refusal, so other templates pay nothing."""
    msgs = [{"role": m["role"], "content": m["content"]} for m in messages]
    try:
        return messages, msgs, _apply(tokenizer, msgs, add_generation_prompt=add_generation_prompt)
    except DataError:
        if not (msgs and msgs[0]["role"] == "system" and rejects_system(tokenizer)):
            raise
    messages = fold_system(messages)
    msgs = [{"role": m["role"], "content": m["content"]} for m in messages]
    return messages, msgs, _apply(tokenizer, msgs, add_generation_prompt=add_generation_prompt)


def _without_prelude(template: str) -> str:
    if template.startswith(PRELUDE_START) and PRELUDE_END in template:
        return template[template.index(PRELUDE_END) + len(PRELUDE_END):]
    return template


def _assistant_spans(tokenizer, messages: Sequence[Message], msgs: list[Message], text: str) -> list[tuple[int, int]]:
    """Character spans of each trained assistant turn in `text`, from its content to its end-of-turn marker.

    Uses the template's prefix property (rendering the first i messages gives a prefix of the
    whole); templates without it (some rewrite earlier turns) fall back to finding each answer
    in order.
    """
    spans: list[tuple[int, int]] = []
    cursor = 0
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = _apply(tokenizer, msgs[:i], add_generation_prompt=True) if i else ""
        upto = _apply(tokenizer, msgs[: i + 1], add_generation_prompt=False)
        if text.startswith(upto) and upto.startswith(before) and len(upto) > len(before):
            start, end = len(before), len(upto)
        else:
            start = text.find(m["content"].strip(), cursor)
            if start < 0:
                continue
            end = _end_of_turn(tokenizer, text, start + len(m["content"].strip()))
        cursor = end
        # Train up to and including the end-of-turn marker, not what the template adds after it: a
        # newline, or Phi-3's eos after the last turn's <|end|> (earlier turns have none).
        end = _first_turn_end(tokenizer, text, start, start + len(text[start:end].rstrip()))
        if m.get("weight", 1) not in (0, 0.0, False):
            spans.append((start, end))
    return spans


def _mask_from_spans(offsets: Sequence[tuple[int, int]], spans: list[tuple[int, int]]) -> list[int]:
    """1 for each token whose characters overlap a trained span."""
    return [int(b > a and any(a < end and b > start for start, end in spans)) for a, b in offsets]


def _first_turn_end(tokenizer, text: str, start: int, end: int) -> int:
    """`end`, or the end of the first end-of-turn marker (or eos) in text[start:end] if there is one."""
    found = [i + len(tok) for tok in filter(None, [tokenizer.eos_token, *TURN_ENDS])
             if (i := text.find(tok, start, end)) >= 0]
    return min(found, default=end)


def _end_of_turn(tokenizer, text: str, pos: int) -> int:
    """Extend `pos` over an end-of-turn marker that follows the answer, if any."""
    for tok in filter(None, [tokenizer.eos_token, *TURN_ENDS]):
        if text.startswith(tok, pos):
            return pos + len(tok)
    return pos


def _truncate(ids: list[int], mask: list[int], max_length: int | None) -> Rendered:
    if max_length is None or len(ids) <= max_length:
        return Rendered(ids, mask, 0)
    return Rendered(ids[:max_length], mask[:max_length], len(ids) - max_length)
