"""One plug-status mapping, from the contract's enum: the documents and the time series agree with the
machine on every state."""

from __future__ import annotations

from chargectl.common import codec
from chargectl.services.adapters.timeseries import STATE_CODES
from chargectl.services.hub.machine import Status
from chargectl.services.hub.mirror import PLUG_CLASS_DOC, STATUS_DOC
from chargectl.services.hub.params import PLUG_CLASSES


def test_every_machine_state_has_one_code_everywhere() -> None:
    assert set(STATUS_DOC) == set(Status)
    for status, code in STATUS_DOC.items():
        assert codec.PlugStatus.Name(code) == f"PLUG_STATUS_{status.name}"  # type: ignore[arg-type]
        assert STATE_CODES[str(status)] == code
    assert len(set(STATUS_DOC.values())) == len(Status)


def test_every_plug_class_has_a_contract_code() -> None:
    assert set(PLUG_CLASS_DOC) == set(PLUG_CLASSES)
    assert sorted(PLUG_CLASS_DOC.values()) == [1, 2, 3, 4]
