"""Kubernetes resource quantities ("500m", "1Gi", "2e3") as exact numbers. Pure.

The API server rewrites quantities into canonical form ("0.5" -> "500m", "1024Mi" -> "1Gi"), so
:mod:`omega_operator.drift` compares them by value. The same suffixes as the Kubernetes Python
client's ``parse_quantity`` (without importing the client): binary ``Ki Mi Gi Ti Pi Ei``, decimal
``n u m k M G T P E`` (and ``K``), and plain or exponent numbers.
"""

from __future__ import annotations

from decimal import Decimal, DecimalException

# suffix letter -> power of the base (1000 for a decimal suffix, 1024 for a binary one "<letter>i")
_POWERS = {"n": -3, "u": -2, "m": -1, "k": 1, "K": 1, "M": 2, "G": 3, "T": 4, "P": 5, "E": 6}
_BINARY_LETTERS = "KMGTPE"


def parse_quantity(quantity: str | int | float | Decimal) -> Decimal:
    """The value of a quantity; ValueError when it is not one."""
    if isinstance(quantity, int | float | Decimal):
        return Decimal(quantity)
    text = str(quantity)
    number, letter, base = text, "", 1000
    if len(text) >= 2 and text[-1] == "i":
        if text[-2] in _POWERS:
            number, letter, base = text[:-2], text[-2], 1024
            if letter not in _BINARY_LETTERS:  # "mi", "ki", "ni", "ui" are not binary suffixes
                raise ValueError(f"{text} has unknown suffix")
    elif text and text[-1] in _POWERS:
        number, letter = text[:-1], text[-1]
    try:
        value = Decimal(number)
    except DecimalException:
        raise ValueError(f"Invalid number format: {number}") from None
    if not letter:
        return value
    try:
        return value * Decimal(base) ** _POWERS[letter]
    except DecimalException as exc:
        raise ValueError(f"Invalid quantity: {text}") from exc
