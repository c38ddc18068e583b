"""An Ollama `Modelfile` for a GGUF export: the chat template in Ollama's Go syntax, the default system prompt, stops.

One Go template per chat-template family, told apart by the template's own markers (`family`).
Ollama gives a template `.System` (the Modelfile's SYSTEM, or the request's system message) and
`.Messages`; these templates take the system text from `.System` and skip system messages in the
loop. Each renders what its Jinja family renders for user/assistant turns, without the BOS token
(llama.cpp adds it when it tokenizes). tests/test_ollama_templates.py checks them against real
templates from each family.
"""

from __future__ import annotations

import re

from tunesmith.data.render import PLAIN_TEMPLATE, ensure_chat_template, stop_token_ids, template_system

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

# Llama 3.0: a system header only with a system prompt. 3.1 and later always write one, with the
# knowledge cutoff and the date ({PREAMBLE}, taken from the Jinja template's own rendering).
_LLAMA3_TURNS = '''{{- range .Messages }}
{{- if eq .Role "user" }}<|start_header_id|>user<|end_header_id|>

{{ .Content }}<|eot_id|>
{{- else if eq .Role "assistant" }}<|start_header_id|>assistant<|end_header_id|>

{{ .Content }}<|eot_id|>
{{- end }}
{{- end }}<|start_header_id|>assistant<|end_header_id|>

'''
LLAMA3 = '''{{- if .System }}<|start_header_id|>system<|end_header_id|>

{{ .System }}<|eot_id|>
{{- end }}
''' + _LLAMA3_TURNS
LLAMA31 = '''<|start_header_id|>system<|end_header_id|>

{PREAMBLE}{{ .System }}<|eot_id|>
''' + _LLAMA3_TURNS

# Mistral (Nemo / v3 Tekken style): the system prompt goes before the LAST user message.
MISTRAL = '''{{- range $i, $_ := .Messages }}
{{- if eq .Role "user" }}
{{- if and $.System (eq (len (slice $.Messages $i)) 1) }}[INST]{{ $.System }}

{{ .Content }}[/INST]
{{- else }}[INST]{{ .Content }}[/INST]
{{- end }}
{{- else if eq .Role "assistant" }}{{ .Content }}{EOS}
{{- end }}
{{- end }}'''

# Gemma has no system role: the system prompt opens the first user turn, as training folded it.
GEMMA = '''{{- $system := .System }}
{{- range .Messages }}
{{- if eq .Role "user" }}<start_of_turn>user
{{ if $system }}{{ $system }}

{{ end }}{{ .Content }}<end_of_turn>
{{ $system = "" }}
{{- else if eq .Role "assistant" }}<start_of_turn>model
{{ .Content }}<end_of_turn>
{{ end }}
{{- end }}<start_of_turn>model
'''

PHI3 = '''{{- if .System }}<|system|>
{{ .System }}<|end|>
{{ end }}
{{- range .Messages }}
{{- if eq .Role "user" }}<|user|>
{{ .Content }}<|end|>
{{ else if eq .Role "assistant" }}<|assistant|>
{{ .Content }}<|end|>
{{ end }}
{{- end }}<|assistant|>
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

GO_TEMPLATES = {"chatml": CHATML, "llama3": LLAMA3, "llama3.1": LLAMA31, "mistral": MISTRAL, "gemma": GEMMA,
                "phi3": PHI3, "plain": PLAIN}

# the file a Modelfile points at, when there are several: Ollama's default type first, then by fidelity per byte
PREFERRED = ("q4_k_m", "q5_k_m", "q6_k", "q8_0", "f16", "bf16", "q4_0", "f32")


def preferred_gguf(names: list[str]) -> str:
    """q4_k_m when it was written, else the next in PREFERRED."""
    for quant in PREFERRED:
        for name in names:
            if name.endswith(f"-{quant}.gguf"):
                return name
    return names[0]


def modelfile(gguf_name: str, tokenizer) -> str:
    """The Modelfile text; a template of no known family is left to the GGUF's metadata.

    SYSTEM is the run's training system prompt (baked into the tokenizer's template by
    Deliverable.tokenizer), else the template's own default (SmolLM2's, Qwen's).
    """
    lines = ["# Ollama: ollama create NAME -f Modelfile && ollama run NAME", f"FROM ./{gguf_name}", ""]
    go = go_template(tokenizer)
    if go is None:
        lines += ["# The chat template is of no family tunesmith knows: Ollama reads it from the GGUF's "
                  "tokenizer.chat_template.", ""]
    else:
        lines += [f'TEMPLATE """{go}"""', ""]
    system = default_system(tokenizer)
    if system:
        lines += [f'SYSTEM """{system}"""', ""]
    for stop in _stops(tokenizer):
        lines.append(f'PARAMETER stop "{stop}"')
    return "\n".join(lines) + "\n"


def family(template: str) -> str | None:
    """The chat-template family, from the markers in its text: chatml, llama3, llama3.1, mistral, gemma, phi3, plain."""
    if "<|im_start|>" in template and "<|im_end|>" in template:
        return "chatml"
    if "<|start_header_id|>" in template and "<|eot_id|>" in template:
        return "llama3.1" if "Cutting Knowledge Date" in template else "llama3"
    if "[INST]" in template and "[/INST]" in template and "<<SYS>>" not in template and "[SYSTEM_PROMPT]" not in template:
        return "mistral"
    if "<start_of_turn>" in template and "<end_of_turn>" in template:
        return "gemma"
    if "<|user|>" in template and "<|assistant|>" in template and "<|end|>" in template:
        return "phi3"
    if PLAIN_TEMPLATE in template:
        return "plain"
    return None


def go_template(tokenizer) -> str | None:
    """The Go template of the tokenizer's chat-template family, or None when the family is unknown."""
    name = family(ensure_chat_template(tokenizer))
    if name is None:
        return None
    go = GO_TEMPLATES[name].replace("{EOS}", tokenizer.eos_token or "")
    return go.replace("{PREAMBLE}", _llama_preamble(tokenizer)) if name == "llama3.1" else go


def _llama_preamble(tokenizer) -> str:
    """Llama 3.1+'s fixed system lines ('Cutting Knowledge Date: ...\\nToday Date: ...\\n\\n'), as the template
    writes them now (3.2 and later take today's date, so a Modelfile holds its export day)."""
    text = tokenizer.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False)
    found = re.search(r"Cutting Knowledge Date:[^\n]*\n(?:Today Date:[^\n]*\n)?\n", text)
    return found.group(0) if found else ""


def default_system(tokenizer) -> str | None:
    """The system prompt a conversation without one gets: the run's (a tunesmith prelude), else the
    ChatML template's own default (SmolLM2 and Qwen add one)."""
    template = ensure_chat_template(tokenizer)
    own = template_system(template)
    if own:
        return own
    text = tokenizer.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False)
    head = "<|im_start|>system\n"
    start = text.find(head)
    if start >= 0 and "<|im_end|>" in text[start:]:
        return text[start + len(head):text.index("<|im_end|>", start)]
    return None


def _stops(tokenizer) -> list[str]:
    return list(dict.fromkeys(tokenizer.convert_ids_to_tokens(i) for i in stop_token_ids(tokenizer)))
