"""An Ollama `Modelfile` for a GGUF export: the chat template in Ollama's Go syntax, the default system prompt, stops."""

from __future__ import annotations

from tunesmith.data.render import PLAIN_BOS_TEMPLATE, PLAIN_TEMPLATE, ensure_chat_template, stop_token_ids

CHATML = '''{{- if .System }}<|im_start|>system
{{ .System }}<|im_end|>
{{ end }}
{{- range .Messages }}
{{- if eq .Role "user" }}<|im_start|>user
{{ .Content }}<|im_end|>
{{ else if eq .Role "assistant" }}<|im_start|>assistant
{{ .Content }}<|im_end|>
{{ end }}
{{- end }}<|im_start|>assistant
'''

PLAIN = '''{{- if .System }}{{ .System }}

{{ end }}
{{- range .Messages }}
{{- if eq .Role "user" }}### User:
{{ .Content }}

{{ else if eq .Role "assistant" }}### Assistant:
{{ .Content }}{EOS}

{{ end }}
{{- end }}### Assistant:
'''


PREFERRED = ("q8_0", "f16", "q4_0", "f32")  # the file a Modelfile points at, when there are several


def preferred_gguf(names: list[str]) -> str:
    """q8_0 when it was written (near-lossless at half the size of f16), else the next best."""
    for quant in PREFERRED:
        for name in names:
            if name.endswith(f"-{quant}.gguf"):
                return name
    return names[0]


def modelfile(gguf_name: str, tokenizer) -> str:
    """The Modelfile text; a template Ollama's Go syntax cannot be derived from is left to the GGUF's metadata."""
    template = ensure_chat_template(tokenizer)
    lines = [f"# Ollama: ollama create NAME -f Modelfile && ollama run NAME", f"FROM ./{gguf_name}", ""]
    go = _go_template(template, tokenizer)
    if go is None:
        lines += ["# The chat template is not ChatML: Ollama reads it from the GGUF's tokenizer.chat_template.", ""]
    else:
        lines += [f'TEMPLATE """{go}"""', ""]
    system = default_system(tokenizer)
    if system:
        lines += [f'SYSTEM """{system}"""', ""]
    for stop in _stops(tokenizer):
        lines.append(f'PARAMETER stop "{stop}"')
    return "\n".join(lines) + "\n"


def _go_template(template: str, tokenizer) -> str | None:
    if "<|im_start|>" in template and "<|im_end|>" in template:
        return CHATML
    if template in (PLAIN_TEMPLATE, PLAIN_BOS_TEMPLATE):  # Ollama adds the BOS itself, from the GGUF
        return PLAIN.replace("{EOS}", tokenizer.eos_token or "")
    return None


def default_system(tokenizer) -> str | None:
    """The system prompt the chat template adds when a conversation has none (SmolLM2 adds one)."""
    text = tokenizer.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False)
    head = "<|im_start|>system\n"
    if text.startswith(head) and "<|im_end|>" in text:
        return text[len(head):text.index("<|im_end|>")]
    return None


def _stops(tokenizer) -> list[str]:
    return list(dict.fromkeys(tokenizer.convert_ids_to_tokens(i) for i in stop_token_ids(tokenizer)))
