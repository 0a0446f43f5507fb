"""Old import path of parse_report (now in omega_operator.health_report), kept for one caller only.

The caller is tests/omega_server/test_api_startup.py, outside the operator branch of issue 11.
Delete this module when that test imports ``omega_operator.health_report`` (at the lead's merge).
"""

from omega_operator.health_report import parse_report

__all__ = ["parse_report"]
