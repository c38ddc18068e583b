"""The rules only preference pairs have: contradicting pairs, a length gap between the answers, pairs over max_length.

`data check` feeds every usable pair to a `PairRules` as the rows stream past (8-byte keys and
two lengths a pair) and asks it for the file's findings at the end. The rules the pairs share with
other data (structure, duplicates of whole pairs, personal data, leaks) live where those are.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass, field

import numpy as np

from tunesmith.data.dedup import key, lookup, normal_bytes
from tunesmith.data.rules import Finding, finding

# A length gap worth a warning: the mean chosen answer this many times the mean rejected one (or
# 1/this), or chosen the longer in more than LONGER_SHARE (or less than 1 - LONGER_SHARE) of the
# pairs, over at least MIN_PAIRS pairs. DPO learns such a gap as "longer is better" (Park et al.
# 2024, "Disentangling Length from Quality in Direct Preference Optimization").
LENGTH_RATIO = 1.3
LONGER_SHARE = 0.75
MIN_PAIRS = 10


@dataclass
class PairRules:
    """Per usable pair, in file order: its line, the keys of (prompt, chosen, rejected) both ways, its answer lengths."""

    lines: array = field(default_factory=lambda: array("q"))
    forward: array = field(default_factory=lambda: array("Q"))  # key of prompt, chosen, rejected
    backward: array = field(default_factory=lambda: array("Q"))  # key of prompt, rejected, chosen
    chosen_chars: array = field(default_factory=lambda: array("q"))
    rejected_chars: array = field(default_factory=lambda: array("q"))

    def add(self, example: dict) -> None:
        prompt = normal_bytes("\n".join(m["content"] for m in example["messages"]))
        chosen, rejected = normal_bytes(example["chosen"]), normal_bytes(example["rejected"])
        self.lines.append(example["line"])
        self.forward.append(key(b"\x00".join((prompt, chosen, rejected))))
        self.backward.append(key(b"\x00".join((prompt, rejected, chosen))))
        self.chosen_chars.append(len(example["chosen"]))
        self.rejected_chars.append(len(example["rejected"]))

    def __len__(self) -> int:
        return len(self.lines)

    def findings(self) -> list[Finding]:
        """pair.contradict per row that reverses an earlier one, and the file's pair.length_gap (line 0)."""
        out = self.contradictions()
        gap = self.length_gap()
        if gap["warn"]:
            out.append(finding(0, "chosen", "pair.length_gap", gap_message(gap)))
        return out

    def contradictions(self) -> list[Finding]:
        """A row whose chosen answer an earlier row, on the same prompt, rejected for its rejected one."""
        if not len(self):
            return []
        forward, backward = np.frombuffer(self.forward, np.uint64), np.frombuffer(self.backward, np.uint64)
        earlier = lookup(backward, forward)  # the first row that prefers the other way round, or -1
        rows = np.nonzero((earlier >= 0) & (earlier < np.arange(len(self))))[0]
        return [finding(self.lines[i], "chosen", "pair.contradict",
                        f"prefers the answer that line {self.lines[earlier[i]]} rejected, on the same prompt, over the "
                        f"one line {self.lines[earlier[i]]} chose") for i in rows.tolist()]

    def length_gap(self) -> dict:
        """{pairs, chosen_chars, rejected_chars (means), ratio, chosen_longer (share of pairs of unequal length), warn}."""
        n = len(self)
        chosen, rejected = np.frombuffer(self.chosen_chars, np.int64), np.frombuffer(self.rejected_chars, np.int64)
        if not n:
            return {"pairs": 0, "warn": False}
        mean_c, mean_r = float(chosen.mean()), float(rejected.mean())
        unequal = chosen != rejected
        share = float((chosen > rejected)[unequal].mean()) if unequal.any() else 0.5
        ratio = mean_c / mean_r if mean_r else float("inf")
        warn = n >= MIN_PAIRS and (not 1 / LENGTH_RATIO <= ratio <= LENGTH_RATIO
                                   or not 1 - LONGER_SHARE <= share <= LONGER_SHARE)
        return {"pairs": n, "chosen_chars": round(mean_c, 1), "rejected_chars": round(mean_r, 1),
                "ratio": round(ratio, 3), "chosen_longer": round(share, 3), "warn": warn}


def gap_message(gap: dict) -> str:
    """e.g. 'chosen answers are 1.84x as long as rejected ones on average (412 vs 224 characters) ...'."""
    return (f"chosen answers are {gap['ratio']:.2f}x as long as rejected ones on average ({gap['chosen_chars']:.0f} vs "
            f"{gap['rejected_chars']:.0f} characters), and the longer of the two in {gap['chosen_longer']:.0%} of the "
            f"{gap['pairs']} pairs (of those whose answers differ in length)")


def length_findings(sides, line: int, max_length: int | None) -> list[Finding]:
    """length.over_context and answer.too_long for each side of a pair: `sides` are the (chosen, rejected) RowTokens.

    answer.too_short is left out: a pair of short answers ("Yes" over "No") is a fair preference.
    """
    out = []
    for side, counts in zip(("chosen", "rejected"), sides):
        if max_length and counts.truncated:
            out.append(finding(line, side, "length.over_context",
                               f"the prompt and the {side} answer are {counts.total} tokens, over max_length "
                               f"{max_length}: truncation cuts {counts.truncated} tokens "
                               f"({counts.trained - counts.kept_trained} of them trained)"))
        elif max_length and counts.answer > 0.75 * max_length:
            out.append(finding(line, side, "answer.too_long", f"the {side} answer is {counts.answer} tokens, over "
                                                              f"3/4 of max_length {max_length}"))
    return out
