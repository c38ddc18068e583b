"""The data rules: every finding's rule id, severity and fix hint, in one catalogue."""

from __future__ import annotations

from dataclasses import asdict, dataclass

ERROR = "error"
WARNING = "warning"

# rule id -> (severity, hint). A finding's message says what is wrong at that row; the hint how to fix it.
RULES: dict[str, tuple[str, str]] = {
    "file.unreadable": (ERROR, "check the path and its permissions; a gzip or Parquet file may be truncated"),
    "file.empty": (ERROR, "the file has no rows; see docs/data-formats.md for the accepted formats"),
    "file.binary": (ERROR, "give a text file (.jsonl, .json, .csv, .tsv), a .parquet file, or a gzip of one"),
    "file.type": (ERROR, "use .jsonl, .json, .csv, .tsv or .parquet (optionally .gz), or pass --format"),
    "file.encoding": (ERROR, "text must be UTF-8, or UTF-16/UTF-32 with a byte-order mark"),
    "format.unknown": (ERROR, "rename the fields (see docs/data-formats.md) or map them: --map input=question,output=answer"),
    "json.invalid": (ERROR, "each line of a .jsonl file must be one complete JSON object"),
    "json.not_array": (ERROR, "a .json file must hold an array of rows; for one row per line use .jsonl"),
    "json.not_object": (ERROR, "each row must be a JSON object such as {\"input\": ..., \"output\": ...}"),
    "json.duplicate_key": (ERROR, "keep one of them: which value is meant is unclear"),
    "json.non_finite": (WARNING, "write null or a number; tunesmith reads it, and writes it as the text \"NaN\""),
    "line.too_long": (ERROR, "a row this large cannot be trained on; split it or remove it"),
    "utf8.invalid": (ERROR, "save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8 FILE`)"),
    "text.invalid": (ERROR, "a character above U+FFFF is escaped as a pair, e.g. \\ud83d\\ude00; fix or remove the broken escape"),
    "csv.ragged": (ERROR, "quote fields that contain the delimiter or line breaks; every row needs the header's column count"),
    "csv.header": (ERROR, "the first row must name the columns, e.g. input,output"),
    "field.missing": (ERROR, "add the field, or map your column to it with --map"),
    "field.empty": (ERROR, "fill in the text or remove the row"),
    "field.type": (ERROR, "the field must be a string (messages: a list of {role, content} objects)"),
    "role.unknown": (ERROR, "roles are system, user and assistant (ShareGPT: system, human, gpt)"),
    "role.order": (ERROR, "a conversation is an optional system message, then user and assistant turns in turn"),
    "turn.no_assistant": (ERROR, "add an assistant answer: it is what the model learns"),
    "turn.ends_with_user": (WARNING, "the last user message has no answer and teaches nothing; remove it or answer it"),
    "pair.prompt": (ERROR, "a preference prompt is an optional system message, then user and assistant turns, "
                           "ending with the user turn that both answers reply to"),
    "pair.answer": (ERROR, "an answer is a string, or a list of one {\"role\": \"assistant\", \"content\": ...} message"),
    "pair.prefix": (ERROR, "without a 'prompt', 'chosen' and 'rejected' are whole conversations that differ only in "
                           "their last assistant turn; or give the prompt and the two answers apart"),
    "pair.same": (ERROR, "the pair teaches no preference; write a worse answer as 'rejected' or remove the row"),
    "pair.contradict": (WARNING, "the two rows prefer opposite answers and cancel out in training; keep the one that is right"),
    "pair.length_gap": (WARNING, "preference tuning learns a length gap as 'longer (or shorter) is better'; "
                                 "balance the lengths of chosen and rejected answers"),
    "dup.exact": (WARNING, "remove the copy; `data prepare` drops exact duplicates"),
    "dup.near": (WARNING, "input and answer are near copies of another row's, which over-weights one example; "
                          "kept unless `data prepare --near-duplicates drop`"),
    "dup.conflict": (WARNING, "the same question has different answers; keep the right one or make the questions distinct"),
    "dup.near_input": (WARNING, "a possible conflict, kept: if both answers are right (another database, a follow-up) "
                                "nothing to do; if not, keep the right one"),
    "length.over_context": (WARNING, "shorten the row or raise data.max_length; the cut-off part is not learned"),
    "answer.too_short": (WARNING, "a one- or two-token answer teaches little; check the output field"),
    "answer.too_long": (WARNING, "an answer near the length limit is likely truncated in training; shorten it"),
    "pii.email": (WARNING, "the model can learn and repeat personal data; remove or mask it"),
    "pii.phone": (WARNING, "the model can learn and repeat personal data; remove or mask it"),
    "pii.card": (WARNING, "a payment card number must not be in training data; remove it"),
    "leak.exact": (ERROR, "the row is also in the other file: remove it from one of them so the test is fair"),
    "leak.near": (WARNING, "a near copy of the input is in the other file: scores on this row may overstate the "
                           "model (compare reports them apart)"),
}


@dataclass(frozen=True)
class Finding:
    """One problem at one row: 1-based line (0 = the whole file), field, rule id, severity, message;
    `match` is the line of the earlier row a duplicate or conflict matches (0: none)."""

    line: int
    field: str
    rule: str
    severity: str
    message: str
    match: int = 0

    def to_dict(self) -> dict:
        d = asdict(self)
        if not self.match:  # only duplicates and conflicts carry it
            del d["match"]
        return d


def finding(line: int, field: str, rule: str, what: str, match: int = 0) -> Finding:
    """A Finding whose message is `what` plus the rule's hint."""
    severity, hint = RULES[rule]
    return Finding(line, field, rule, severity, f"{what}; {hint}" if hint else what, match)


def is_error(f: Finding) -> bool:
    return f.severity == ERROR
