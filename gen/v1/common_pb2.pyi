from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class PlugClass(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PLUG_CLASS_UNSPECIFIED: _ClassVar[PlugClass]
    PLUG_CLASS_EV: _ClassVar[PlugClass]
    PLUG_CLASS_EBIKE: _ClassVar[PlugClass]
    PLUG_CLASS_SCOOTER: _ClassVar[PlugClass]
    PLUG_CLASS_GENERIC: _ClassVar[PlugClass]
PLUG_CLASS_UNSPECIFIED: PlugClass
PLUG_CLASS_EV: PlugClass
PLUG_CLASS_EBIKE: PlugClass
PLUG_CLASS_SCOOTER: PlugClass
PLUG_CLASS_GENERIC: PlugClass

class Money(_message.Message):
    __slots__ = ("amount_minor", "currency")
    AMOUNT_MINOR_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    amount_minor: int
    currency: str
    def __init__(self, amount_minor: _Optional[int] = ..., currency: _Optional[str] = ...) -> None: ...

class PublicKey(_message.Message):
    __slots__ = ("key_id", "public_key", "not_before_ms", "not_after_ms")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    NOT_BEFORE_MS_FIELD_NUMBER: _ClassVar[int]
    NOT_AFTER_MS_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    public_key: bytes
    not_before_ms: int
    not_after_ms: int
    def __init__(self, key_id: _Optional[str] = ..., public_key: _Optional[bytes] = ..., not_before_ms: _Optional[int] = ..., not_after_ms: _Optional[int] = ...) -> None: ...
