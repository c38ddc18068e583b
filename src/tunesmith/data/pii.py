"""Possible personal data in text: e-mail addresses, phone numbers, Luhn-valid card numbers (warnings only)."""

from __future__ import annotations

import re

_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)*\.[A-Za-z]{2,}")
_NUMBERISH = re.compile(r"(?<![\w.,-])(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,4}\)[ .-]?)?\d[\d .-]{6,18}\d(?![\w-])")
_DATE = re.compile(r"\d{4}[-./]\d{1,2}[-./]\d{1,2}|\d{1,2}[-./]\d{1,2}[-./]\d{2,4}")
_THOUSANDS = re.compile(r"\d{1,3}(?:[ ,.]\d{3})+")
_RANGE = re.compile(r"\d+\s*-\s*\d+")


def find_pii(text: str) -> list[tuple[str, str]]:
    """(rule, masked sample) for each kind of personal data found in `text`, at most one per kind."""
    found = []
    if "@" in text and (m := _EMAIL.search(text)):
        found.append(("pii.email", _mask(m.group())))
    card = phone = None
    if sum(map(text.count, "0123456789")) < 8:  # a cheap test first: most texts have too few digits
        return found
    for m in _NUMBERISH.finditer(text):
        candidate = m.group()
        digits = re.sub(r"\D", "", candidate)
        if card is None and 13 <= len(digits) <= 19 and luhn_ok(digits) and not re.search(r"[().]", candidate):
            card = candidate
        elif phone is None and _phone_like(candidate, digits):
            phone = candidate
    if phone:
        found.append(("pii.phone", _mask(phone)))
    if card:
        found.append(("pii.card", _mask(card)))
    return found


def _phone_like(candidate: str, digits: str) -> bool:
    """8-15 digits, written like a phone number rather than a date, amount or range."""
    if not 8 <= len(digits) <= 15:
        return False
    if _DATE.fullmatch(candidate):
        return False
    if candidate.startswith(("+", "0", "(")):  # trunk or country prefix: how phone numbers are written
        return True
    return bool(re.search(r"[ .-]", candidate)) and not (_THOUSANDS.fullmatch(candidate) or _RANGE.fullmatch(candidate))


def luhn_ok(digits: str) -> bool:
    """The Luhn checksum that every payment card number satisfies."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _mask(text: str) -> str:
    """Enough to find it in the file, not enough to copy it: keep the first and last 2 characters."""
    return text if len(text) <= 6 else f"{text[:2]}…{text[-2:]}"
