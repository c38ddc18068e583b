"""A terminal-independent chat session: history, slash commands, streamed answers through the engine."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator

from tunesmith.errors import TunesmithError
from tunesmith.serve.engine import Engine, GenerationRequest

HELP = "/reset clears the history, /system TEXT sets the system prompt, /exit quits"


@dataclass
class ChatSession:
    """One conversation with one model. `send(line)` yields the reply's pieces (or a command's answer)."""

    engine: Engine
    model: str
    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    system: str | None = None
    history: list[dict] = field(default_factory=list)
    done: bool = False

    def messages(self) -> list[dict]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + self.history

    def send(self, line: str) -> Iterator[str]:
        """A user line or a command; the reply streams piece by piece and joins the history when complete."""
        text = line.strip()
        if not text:
            return
        if text.startswith("/"):
            yield self._command(text)
            return
        self.history.append({"role": "user", "content": text})
        try:
            ids = self.engine.chat_prompt(self.model, self.messages())
        except TunesmithError as e:  # the chat template refused the conversation: say why, keep the session
            self.history.pop()
            yield f"({e})"
            return
        room = self.engine.slot(self.model).context_length - len(ids)
        if room < 1:
            self.history.pop()
            yield "(the conversation is longer than the model's context: /reset to start over)"
            return
        req = GenerationRequest(self.model, ids, min(self.max_tokens, room), self.temperature, self.top_p, self.seed)
        parts: list[str] = []
        for event in self.engine.stream(req):
            parts.append(event.text)
            if event.text:
                yield event.text
        self.history.append({"role": "assistant", "content": "".join(parts).strip()})

    def _command(self, text: str) -> str:
        name, _, arg = text.partition(" ")
        if name == "/exit":
            self.done = True
            return "bye"
        if name == "/reset":
            self.history.clear()
            return "history cleared"
        if name == "/system":
            self.system = arg.strip() or None
            self.history.clear()
            return f"system prompt {'set' if self.system else 'removed'}; history cleared"
        return f"unknown command {name}: {HELP}"


def run_loop(session: ChatSession, read: Callable[[], str | None], write: Callable[[str], None]) -> None:
    """Read lines until /exit or end of input, writing each reply as it streams."""
    while not session.done:
        line = read()
        if line is None:
            break
        for piece in session.send(line):
            write(piece)
        if line.strip():
            write("\n")
