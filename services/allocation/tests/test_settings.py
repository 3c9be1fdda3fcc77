"""GRIDCHARGE_ALLOCATION_* as Kubernetes gives them (environment strings): parsed into the allocator's
configuration, and a bad value stops start-up with one line naming the variable."""

from __future__ import annotations

import pytest
from gridcharge.allocation.settings import AllocationSettings
from gridcharge.shared.config import Settings
from gridcharge.shared.errors import ConfigError


def cfg(env: dict[str, str]) -> object:
    return AllocationSettings.derive(Settings.from_env({}), env).allocator_config()


def test_defaults_give_the_one_phase_w_lease_with_a_ten_percent_voltage_margin() -> None:
    c = cfg({})
    assert c.one_phase_w_leases is True  # type: ignore[attr-defined]
    assert c.low_voltage == pytest.approx(0.9)  # type: ignore[attr-defined]


def test_environment_strings_set_them() -> None:
    c = cfg({"GRIDCHARGE_ALLOCATION_ONE_PHASE_W_LEASES": "false", "GRIDCHARGE_ALLOCATION_LOW_VOLTAGE": "0.85"})
    assert c.one_phase_w_leases is False  # type: ignore[attr-defined]
    assert c.low_voltage == pytest.approx(0.85)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("GRIDCHARGE_ALLOCATION_LOW_VOLTAGE", "1.2"),
        ("GRIDCHARGE_ALLOCATION_LOW_VOLTAGE", "0"),
        ("GRIDCHARGE_ALLOCATION_LOW_VOLTAGE", "nan"),
        ("GRIDCHARGE_ALLOCATION_LOW_VOLTAGE", "lots"),
        ("GRIDCHARGE_ALLOCATION_ONE_PHASE_W_LEASES", "perhaps"),
    ],
)
def test_a_bad_value_names_the_variable(var: str, value: str) -> None:
    with pytest.raises(ConfigError) as err:
        cfg({var: value})
    assert err.value.key == var
    assert "\n" not in str(err.value)
