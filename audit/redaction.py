"""Mask e-mail addresses, phone numbers and card-like numbers in text before it is stored (opt-in); name visitors."""

import hashlib
import re
from typing import Any


def visitor_label(*, username: str | None, anon_key: str) -> str:
    """Name who owns a session: the user, or an anonymous visitor by a hash of their key.

    The key itself (the Django session key) would sign them in, so no part of
    it is shown: the admin, the exports and the reports all use this name.
    """
    if username:
        return username
    if not anon_key:
        return "anonymous"
    return "anonymous " + hashlib.sha256(anon_key.encode()).hexdigest()[:10]


_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
# 13 to 19 digits, optionally grouped by spaces or dashes: the shape of a payment card number.
_CARD = re.compile(r"(?<!\d)(?:\d[ -]?){12,18}\d(?!\d)")
# 8 to 15 digits (E.164's most) with the usual phone punctuation, optionally starting with + or (.
_PHONE = re.compile(r"(?<![\w+(])(?:\+|\()?\d[\d ().-]{6,}\d(?!\d)")
# Shapes that look like phone numbers but are not: dates, times of day, IPv4 addresses.
_NOT_PHONE = re.compile(r"\d{4}-\d{2}-\d{2}|\d{1,2}:\d{2}|\d{1,3}(?:\.\d{1,3}){3}")


def _luhn_valid(digits: str) -> bool:
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = int(char)
        if position % 2:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def _card(match: re.Match) -> str:
    digits = re.sub(r"\D", "", match.group(0))
    return "[card]" if _luhn_valid(digits) else match.group(0)


def _phone(match: re.Match) -> str:
    found = match.group(0)
    if _NOT_PHONE.fullmatch(found.strip("()")) or not 8 <= len(re.sub(r"\D", "", found)) <= 15:
        return found
    return "[phone]"


def redact_text(text: str) -> str:
    """Return the text with e-mail addresses, card numbers (Luhn-valid) and phone numbers masked."""
    text = _EMAIL.sub("[email]", text)
    text = _CARD.sub(_card, text)
    return _PHONE.sub(_phone, text)


def redact(value: Any) -> Any:
    """Redact every string inside a JSON-like value."""
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, list):
        return [redact(item) for item in value]
    if isinstance(value, dict):
        return {key: redact(item) for key, item in value.items()}
    return value
