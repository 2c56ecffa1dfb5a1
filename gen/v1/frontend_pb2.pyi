from chargectl.gen.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PlugStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PLUG_STATUS_UNSPECIFIED: _ClassVar[PlugStatus]
    PLUG_STATUS_AVAILABLE: _ClassVar[PlugStatus]
    PLUG_STATUS_AUTHORIZED: _ClassVar[PlugStatus]
    PLUG_STATUS_CHARGING: _ClassVar[PlugStatus]
    PLUG_STATUS_SUSPENDED_EV: _ClassVar[PlugStatus]
    PLUG_STATUS_SUSPENDED_EVSE: _ClassVar[PlugStatus]
    PLUG_STATUS_FINISHING: _ClassVar[PlugStatus]
    PLUG_STATUS_FAULTED: _ClassVar[PlugStatus]
    PLUG_STATUS_OFFLINE: _ClassVar[PlugStatus]
    PLUG_STATUS_UNAVAILABLE: _ClassVar[PlugStatus]
PLUG_STATUS_UNSPECIFIED: PlugStatus
PLUG_STATUS_AVAILABLE: PlugStatus
PLUG_STATUS_AUTHORIZED: PlugStatus
PLUG_STATUS_CHARGING: PlugStatus
PLUG_STATUS_SUSPENDED_EV: PlugStatus
PLUG_STATUS_SUSPENDED_EVSE: PlugStatus
PLUG_STATUS_FINISHING: PlugStatus
PLUG_STATUS_FAULTED: PlugStatus
PLUG_STATUS_OFFLINE: PlugStatus
PLUG_STATUS_UNAVAILABLE: PlugStatus

class PlugState(_message.Message):
    __slots__ = ("plug_mac", "site_id", "name", "plug_class", "status", "reason", "relay_on", "power_w", "energy_counter_mwh", "session_id", "updated_at_ms", "last_reading_ms")
    PLUG_MAC_FIELD_NUMBER: _ClassVar[int]
    SITE_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    PLUG_CLASS_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    RELAY_ON_FIELD_NUMBER: _ClassVar[int]
    POWER_W_FIELD_NUMBER: _ClassVar[int]
    ENERGY_COUNTER_MWH_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    LAST_READING_MS_FIELD_NUMBER: _ClassVar[int]
    plug_mac: str
    site_id: str
    name: str
    plug_class: _common_pb2.PlugClass
    status: PlugStatus
    reason: str
    relay_on: bool
    power_w: float
    energy_counter_mwh: int
    session_id: str
    updated_at_ms: int
    last_reading_ms: int
    def __init__(self, plug_mac: _Optional[str] = ..., site_id: _Optional[str] = ..., name: _Optional[str] = ..., plug_class: _Optional[_Union[_common_pb2.PlugClass, str]] = ..., status: _Optional[_Union[PlugStatus, str]] = ..., reason: _Optional[str] = ..., relay_on: _Optional[bool] = ..., power_w: _Optional[float] = ..., energy_counter_mwh: _Optional[int] = ..., session_id: _Optional[str] = ..., updated_at_ms: _Optional[int] = ..., last_reading_ms: _Optional[int] = ...) -> None: ...

class ChargeRequest(_message.Message):
    __slots__ = ("request_id", "user_id", "plug_mac", "action", "status", "reason", "session_id", "created_at_ms", "answered_at_ms")
    class Action(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        ACTION_UNSPECIFIED: _ClassVar[ChargeRequest.Action]
        ACTION_START: _ClassVar[ChargeRequest.Action]
        ACTION_STOP: _ClassVar[ChargeRequest.Action]
    ACTION_UNSPECIFIED: ChargeRequest.Action
    ACTION_START: ChargeRequest.Action
    ACTION_STOP: ChargeRequest.Action
    class Status(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STATUS_UNSPECIFIED: _ClassVar[ChargeRequest.Status]
        STATUS_PENDING: _ClassVar[ChargeRequest.Status]
        STATUS_ACCEPTED: _ClassVar[ChargeRequest.Status]
        STATUS_REJECTED: _ClassVar[ChargeRequest.Status]
    STATUS_UNSPECIFIED: ChargeRequest.Status
    STATUS_PENDING: ChargeRequest.Status
    STATUS_ACCEPTED: ChargeRequest.Status
    STATUS_REJECTED: ChargeRequest.Status
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    PLUG_MAC_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    ANSWERED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    user_id: str
    plug_mac: str
    action: ChargeRequest.Action
    status: ChargeRequest.Status
    reason: str
    session_id: str
    created_at_ms: int
    answered_at_ms: int
    def __init__(self, request_id: _Optional[str] = ..., user_id: _Optional[str] = ..., plug_mac: _Optional[str] = ..., action: _Optional[_Union[ChargeRequest.Action, str]] = ..., status: _Optional[_Union[ChargeRequest.Status, str]] = ..., reason: _Optional[str] = ..., session_id: _Optional[str] = ..., created_at_ms: _Optional[int] = ..., answered_at_ms: _Optional[int] = ...) -> None: ...

class ChargeSession(_message.Message):
    __slots__ = ("session_id", "user_id", "plug_mac", "site_id", "status", "started_at_ms", "ended_at_ms", "start_counter_mwh", "stop_counter_mwh", "energy_mwh", "idle_s", "cost", "stop_reason", "tariff_id", "request_id", "review_reason")
    class Status(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STATUS_UNSPECIFIED: _ClassVar[ChargeSession.Status]
        STATUS_ACTIVE: _ClassVar[ChargeSession.Status]
        STATUS_COMPLETED: _ClassVar[ChargeSession.Status]
    STATUS_UNSPECIFIED: ChargeSession.Status
    STATUS_ACTIVE: ChargeSession.Status
    STATUS_COMPLETED: ChargeSession.Status
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    PLUG_MAC_FIELD_NUMBER: _ClassVar[int]
    SITE_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    ENDED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    START_COUNTER_MWH_FIELD_NUMBER: _ClassVar[int]
    STOP_COUNTER_MWH_FIELD_NUMBER: _ClassVar[int]
    ENERGY_MWH_FIELD_NUMBER: _ClassVar[int]
    IDLE_S_FIELD_NUMBER: _ClassVar[int]
    COST_FIELD_NUMBER: _ClassVar[int]
    STOP_REASON_FIELD_NUMBER: _ClassVar[int]
    TARIFF_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    REVIEW_REASON_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    user_id: str
    plug_mac: str
    site_id: str
    status: ChargeSession.Status
    started_at_ms: int
    ended_at_ms: int
    start_counter_mwh: int
    stop_counter_mwh: int
    energy_mwh: int
    idle_s: int
    cost: _common_pb2.Money
    stop_reason: str
    tariff_id: str
    request_id: str
    review_reason: str
    def __init__(self, session_id: _Optional[str] = ..., user_id: _Optional[str] = ..., plug_mac: _Optional[str] = ..., site_id: _Optional[str] = ..., status: _Optional[_Union[ChargeSession.Status, str]] = ..., started_at_ms: _Optional[int] = ..., ended_at_ms: _Optional[int] = ..., start_counter_mwh: _Optional[int] = ..., stop_counter_mwh: _Optional[int] = ..., energy_mwh: _Optional[int] = ..., idle_s: _Optional[int] = ..., cost: _Optional[_Union[_common_pb2.Money, _Mapping]] = ..., stop_reason: _Optional[str] = ..., tariff_id: _Optional[str] = ..., request_id: _Optional[str] = ..., review_reason: _Optional[str] = ...) -> None: ...

class UserAccount(_message.Message):
    __slots__ = ("user_id", "email", "name", "stripe_customer_id", "currency", "needs_payment_action", "payment_action_intent_id", "auto_topup_threshold", "auto_topup_amount", "default_payment_method", "created_at_ms", "updated_at_ms")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    EMAIL_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    STRIPE_CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    NEEDS_PAYMENT_ACTION_FIELD_NUMBER: _ClassVar[int]
    PAYMENT_ACTION_INTENT_ID_FIELD_NUMBER: _ClassVar[int]
    AUTO_TOPUP_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    AUTO_TOPUP_AMOUNT_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_PAYMENT_METHOD_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    email: str
    name: str
    stripe_customer_id: str
    currency: str
    needs_payment_action: bool
    payment_action_intent_id: str
    auto_topup_threshold: _common_pb2.Money
    auto_topup_amount: _common_pb2.Money
    default_payment_method: str
    created_at_ms: int
    updated_at_ms: int
    def __init__(self, user_id: _Optional[str] = ..., email: _Optional[str] = ..., name: _Optional[str] = ..., stripe_customer_id: _Optional[str] = ..., currency: _Optional[str] = ..., needs_payment_action: _Optional[bool] = ..., payment_action_intent_id: _Optional[str] = ..., auto_topup_threshold: _Optional[_Union[_common_pb2.Money, _Mapping]] = ..., auto_topup_amount: _Optional[_Union[_common_pb2.Money, _Mapping]] = ..., default_payment_method: _Optional[str] = ..., created_at_ms: _Optional[int] = ..., updated_at_ms: _Optional[int] = ...) -> None: ...

class LedgerEntry(_message.Message):
    __slots__ = ("entry_id", "user_id", "kind", "amount", "reference", "description", "created_at_ms")
    class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        KIND_UNSPECIFIED: _ClassVar[LedgerEntry.Kind]
        KIND_TOPUP: _ClassVar[LedgerEntry.Kind]
        KIND_SESSION_DEBIT: _ClassVar[LedgerEntry.Kind]
        KIND_REFUND: _ClassVar[LedgerEntry.Kind]
        KIND_ADJUSTMENT: _ClassVar[LedgerEntry.Kind]
        KIND_DISPUTE: _ClassVar[LedgerEntry.Kind]
    KIND_UNSPECIFIED: LedgerEntry.Kind
    KIND_TOPUP: LedgerEntry.Kind
    KIND_SESSION_DEBIT: LedgerEntry.Kind
    KIND_REFUND: LedgerEntry.Kind
    KIND_ADJUSTMENT: LedgerEntry.Kind
    KIND_DISPUTE: LedgerEntry.Kind
    ENTRY_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    entry_id: str
    user_id: str
    kind: LedgerEntry.Kind
    amount: _common_pb2.Money
    reference: str
    description: str
    created_at_ms: int
    def __init__(self, entry_id: _Optional[str] = ..., user_id: _Optional[str] = ..., kind: _Optional[_Union[LedgerEntry.Kind, str]] = ..., amount: _Optional[_Union[_common_pb2.Money, _Mapping]] = ..., reference: _Optional[str] = ..., description: _Optional[str] = ..., created_at_ms: _Optional[int] = ...) -> None: ...

class Tariff(_message.Message):
    __slots__ = ("tariff_id", "currency", "price_per_kwh_minor", "session_fee_minor", "idle_price_per_minute_minor", "idle_grace_s", "energy_step_wh", "time_step_s", "min_start_balance_minor")
    TARIFF_ID_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    PRICE_PER_KWH_MINOR_FIELD_NUMBER: _ClassVar[int]
    SESSION_FEE_MINOR_FIELD_NUMBER: _ClassVar[int]
    IDLE_PRICE_PER_MINUTE_MINOR_FIELD_NUMBER: _ClassVar[int]
    IDLE_GRACE_S_FIELD_NUMBER: _ClassVar[int]
    ENERGY_STEP_WH_FIELD_NUMBER: _ClassVar[int]
    TIME_STEP_S_FIELD_NUMBER: _ClassVar[int]
    MIN_START_BALANCE_MINOR_FIELD_NUMBER: _ClassVar[int]
    tariff_id: str
    currency: str
    price_per_kwh_minor: int
    session_fee_minor: int
    idle_price_per_minute_minor: int
    idle_grace_s: int
    energy_step_wh: int
    time_step_s: int
    min_start_balance_minor: int
    def __init__(self, tariff_id: _Optional[str] = ..., currency: _Optional[str] = ..., price_per_kwh_minor: _Optional[int] = ..., session_fee_minor: _Optional[int] = ..., idle_price_per_minute_minor: _Optional[int] = ..., idle_grace_s: _Optional[int] = ..., energy_step_wh: _Optional[int] = ..., time_step_s: _Optional[int] = ..., min_start_balance_minor: _Optional[int] = ...) -> None: ...

class Site(_message.Message):
    __slots__ = ("site_id", "name", "shard", "status", "agent_keys", "command_keys", "tariff", "command_topic", "command_subscription", "created_at_ms", "updated_at_ms")
    class Status(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STATUS_UNSPECIFIED: _ClassVar[Site.Status]
        STATUS_ACTIVE: _ClassVar[Site.Status]
        STATUS_REVOKED: _ClassVar[Site.Status]
    STATUS_UNSPECIFIED: Site.Status
    STATUS_ACTIVE: Site.Status
    STATUS_REVOKED: Site.Status
    SITE_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    SHARD_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    AGENT_KEYS_FIELD_NUMBER: _ClassVar[int]
    COMMAND_KEYS_FIELD_NUMBER: _ClassVar[int]
    TARIFF_FIELD_NUMBER: _ClassVar[int]
    COMMAND_TOPIC_FIELD_NUMBER: _ClassVar[int]
    COMMAND_SUBSCRIPTION_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    site_id: str
    name: str
    shard: int
    status: Site.Status
    agent_keys: _containers.RepeatedCompositeFieldContainer[_common_pb2.PublicKey]
    command_keys: _containers.RepeatedCompositeFieldContainer[_common_pb2.PublicKey]
    tariff: Tariff
    command_topic: str
    command_subscription: str
    created_at_ms: int
    updated_at_ms: int
    def __init__(self, site_id: _Optional[str] = ..., name: _Optional[str] = ..., shard: _Optional[int] = ..., status: _Optional[_Union[Site.Status, str]] = ..., agent_keys: _Optional[_Iterable[_Union[_common_pb2.PublicKey, _Mapping]]] = ..., command_keys: _Optional[_Iterable[_Union[_common_pb2.PublicKey, _Mapping]]] = ..., tariff: _Optional[_Union[Tariff, _Mapping]] = ..., command_topic: _Optional[str] = ..., command_subscription: _Optional[str] = ..., created_at_ms: _Optional[int] = ..., updated_at_ms: _Optional[int] = ...) -> None: ...
