"""Resource quantities: the same values as the Kubernetes client's parser (which the operator's pure
core no longer imports), and errors where it refuses."""

from __future__ import annotations

from decimal import Decimal

import pytest
from kubernetes.utils.quantity import parse_quantity as client_parse_quantity
from omega_operator.quantity import parse_quantity

VALID = [
    "0", "1", "0.5", "500m", "100u", "3n", "1k", "1K", "2M", "1G", "1T", "1P", "1E",
    "1Ki", "1Mi", "1024Mi", "1Gi", "16Gi", "1.5Gi", "1Ti", "1Pi", "1Ei", "1e3", "2E3", "1.5e-3",
    "-1", "+4", " 7", "1 Gi", "Infinity", "123456789012345678901234567890Ei",
]  # fmt: skip
INVALID = ["", "Gi", "1mi", "1ki", "1ni", "1ui", "5i", "1.2.3", "abc", "1GB", "i"]


@pytest.mark.parametrize("text", VALID)
def test_the_same_value_as_the_kubernetes_client(text: str) -> None:
    assert parse_quantity(text) == client_parse_quantity(text)


@pytest.mark.parametrize("text", INVALID)
def test_refused_like_the_kubernetes_client(text: str) -> None:
    with pytest.raises(ValueError):
        client_parse_quantity(text)
    with pytest.raises(ValueError):
        parse_quantity(text)


def test_numbers_and_canonical_forms() -> None:
    assert parse_quantity(2) == Decimal(2) and parse_quantity(0.5) == Decimal("0.5")
    assert parse_quantity("1024Mi") == parse_quantity("1Gi") == 2**30
    assert parse_quantity("0.5") == parse_quantity("500m")
