from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RelayCommand(_message.Message):
    __slots__ = ("command_id", "site_id", "plug_mac", "on", "session_id", "issued_at_ms", "expires_at_ms", "auto_off_s", "leased")
    COMMAND_ID_FIELD_NUMBER: _ClassVar[int]
    SITE_ID_FIELD_NUMBER: _ClassVar[int]
    PLUG_MAC_FIELD_NUMBER: _ClassVar[int]
    ON_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    ISSUED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_MS_FIELD_NUMBER: _ClassVar[int]
    AUTO_OFF_S_FIELD_NUMBER: _ClassVar[int]
    LEASED_FIELD_NUMBER: _ClassVar[int]
    command_id: str
    site_id: str
    plug_mac: str
    on: bool
    session_id: str
    issued_at_ms: int
    expires_at_ms: int
    auto_off_s: int
    leased: _containers.RepeatedCompositeFieldContainer[LeasedPlug]
    def __init__(self, command_id: _Optional[str] = ..., site_id: _Optional[str] = ..., plug_mac: _Optional[str] = ..., on: _Optional[bool] = ..., session_id: _Optional[str] = ..., issued_at_ms: _Optional[int] = ..., expires_at_ms: _Optional[int] = ..., auto_off_s: _Optional[int] = ..., leased: _Optional[_Iterable[_Union[LeasedPlug, _Mapping]]] = ...) -> None: ...

class LeasedPlug(_message.Message):
    __slots__ = ("plug_mac", "session_id", "auto_off_s")
    PLUG_MAC_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    AUTO_OFF_S_FIELD_NUMBER: _ClassVar[int]
    plug_mac: str
    session_id: str
    auto_off_s: int
    def __init__(self, plug_mac: _Optional[str] = ..., session_id: _Optional[str] = ..., auto_off_s: _Optional[int] = ...) -> None: ...

class CommandResult(_message.Message):
    __slots__ = ("command_id", "site_id", "plug_mac", "ok", "reason", "relay_on", "relay_state_known", "error", "executed_at_ms", "session_id")
    COMMAND_ID_FIELD_NUMBER: _ClassVar[int]
    SITE_ID_FIELD_NUMBER: _ClassVar[int]
    PLUG_MAC_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    RELAY_ON_FIELD_NUMBER: _ClassVar[int]
    RELAY_STATE_KNOWN_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    EXECUTED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    command_id: str
    site_id: str
    plug_mac: str
    ok: bool
    reason: str
    relay_on: bool
    relay_state_known: bool
    error: str
    executed_at_ms: int
    session_id: str
    def __init__(self, command_id: _Optional[str] = ..., site_id: _Optional[str] = ..., plug_mac: _Optional[str] = ..., ok: _Optional[bool] = ..., reason: _Optional[str] = ..., relay_on: _Optional[bool] = ..., relay_state_known: _Optional[bool] = ..., error: _Optional[str] = ..., executed_at_ms: _Optional[int] = ..., session_id: _Optional[str] = ...) -> None: ...

class Envelope(_message.Message):
    __slots__ = ("payload", "signature", "key_id", "schema", "encoding")
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    SCHEMA_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    payload: bytes
    signature: bytes
    key_id: str
    schema: str
    encoding: str
    def __init__(self, payload: _Optional[bytes] = ..., signature: _Optional[bytes] = ..., key_id: _Optional[str] = ..., schema: _Optional[str] = ..., encoding: _Optional[str] = ...) -> None: ...
