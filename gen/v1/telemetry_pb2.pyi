from chargectl.gen.v1 import commands_pb2 as _commands_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PlugSeries(_message.Message):
    __slots__ = ("plug_index", "time_delta_ms", "power_dw_delta", "energy_mwh_delta", "voltage_dv_delta", "current_ma_delta", "temperature_dc_delta", "relay_on_bits", "error_flags", "uptime_s_delta", "voltage_missing", "current_missing", "temperature_missing", "uptime_missing")
    PLUG_INDEX_FIELD_NUMBER: _ClassVar[int]
    TIME_DELTA_MS_FIELD_NUMBER: _ClassVar[int]
    POWER_DW_DELTA_FIELD_NUMBER: _ClassVar[int]
    ENERGY_MWH_DELTA_FIELD_NUMBER: _ClassVar[int]
    VOLTAGE_DV_DELTA_FIELD_NUMBER: _ClassVar[int]
    CURRENT_MA_DELTA_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_DC_DELTA_FIELD_NUMBER: _ClassVar[int]
    RELAY_ON_BITS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FLAGS_FIELD_NUMBER: _ClassVar[int]
    UPTIME_S_DELTA_FIELD_NUMBER: _ClassVar[int]
    VOLTAGE_MISSING_FIELD_NUMBER: _ClassVar[int]
    CURRENT_MISSING_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_MISSING_FIELD_NUMBER: _ClassVar[int]
    UPTIME_MISSING_FIELD_NUMBER: _ClassVar[int]
    plug_index: int
    time_delta_ms: _containers.RepeatedScalarFieldContainer[int]
    power_dw_delta: _containers.RepeatedScalarFieldContainer[int]
    energy_mwh_delta: _containers.RepeatedScalarFieldContainer[int]
    voltage_dv_delta: _containers.RepeatedScalarFieldContainer[int]
    current_ma_delta: _containers.RepeatedScalarFieldContainer[int]
    temperature_dc_delta: _containers.RepeatedScalarFieldContainer[int]
    relay_on_bits: bytes
    error_flags: _containers.RepeatedScalarFieldContainer[int]
    uptime_s_delta: _containers.RepeatedScalarFieldContainer[int]
    voltage_missing: bytes
    current_missing: bytes
    temperature_missing: bytes
    uptime_missing: bytes
    def __init__(self, plug_index: _Optional[int] = ..., time_delta_ms: _Optional[_Iterable[int]] = ..., power_dw_delta: _Optional[_Iterable[int]] = ..., energy_mwh_delta: _Optional[_Iterable[int]] = ..., voltage_dv_delta: _Optional[_Iterable[int]] = ..., current_ma_delta: _Optional[_Iterable[int]] = ..., temperature_dc_delta: _Optional[_Iterable[int]] = ..., relay_on_bits: _Optional[bytes] = ..., error_flags: _Optional[_Iterable[int]] = ..., uptime_s_delta: _Optional[_Iterable[int]] = ..., voltage_missing: _Optional[bytes] = ..., current_missing: _Optional[bytes] = ..., temperature_missing: _Optional[bytes] = ..., uptime_missing: _Optional[bytes] = ...) -> None: ...

class PlugInventoryChange(_message.Message):
    __slots__ = ("mac", "kind", "host", "port", "gen", "model", "firmware", "switchable", "at_ms")
    class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        KIND_UNSPECIFIED: _ClassVar[PlugInventoryChange.Kind]
        KIND_ADDED: _ClassVar[PlugInventoryChange.Kind]
        KIND_MOVED: _ClassVar[PlugInventoryChange.Kind]
        KIND_GONE: _ClassVar[PlugInventoryChange.Kind]
    KIND_UNSPECIFIED: PlugInventoryChange.Kind
    KIND_ADDED: PlugInventoryChange.Kind
    KIND_MOVED: PlugInventoryChange.Kind
    KIND_GONE: PlugInventoryChange.Kind
    MAC_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    GEN_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    FIRMWARE_FIELD_NUMBER: _ClassVar[int]
    SWITCHABLE_FIELD_NUMBER: _ClassVar[int]
    AT_MS_FIELD_NUMBER: _ClassVar[int]
    mac: str
    kind: PlugInventoryChange.Kind
    host: str
    port: int
    gen: int
    model: str
    firmware: str
    switchable: bool
    at_ms: int
    def __init__(self, mac: _Optional[str] = ..., kind: _Optional[_Union[PlugInventoryChange.Kind, str]] = ..., host: _Optional[str] = ..., port: _Optional[int] = ..., gen: _Optional[int] = ..., model: _Optional[str] = ..., firmware: _Optional[str] = ..., switchable: _Optional[bool] = ..., at_ms: _Optional[int] = ...) -> None: ...

class TelemetryBatch(_message.Message):
    __slots__ = ("site_id", "batch_seq", "base_time_ms", "plug_macs", "series", "inventory", "created_at_ms", "agent_version", "epoch", "sample_counts", "time_step_ms", "time_ms", "power_dw", "energy_mwh", "voltage_dv", "current_ma", "temperature_dc", "uptime_s", "relay_on_bits", "error_flags", "voltage_missing", "current_missing", "temperature_missing", "uptime_missing", "results")
    SITE_ID_FIELD_NUMBER: _ClassVar[int]
    BATCH_SEQ_FIELD_NUMBER: _ClassVar[int]
    BASE_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    PLUG_MACS_FIELD_NUMBER: _ClassVar[int]
    SERIES_FIELD_NUMBER: _ClassVar[int]
    INVENTORY_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_COUNTS_FIELD_NUMBER: _ClassVar[int]
    TIME_STEP_MS_FIELD_NUMBER: _ClassVar[int]
    TIME_MS_FIELD_NUMBER: _ClassVar[int]
    POWER_DW_FIELD_NUMBER: _ClassVar[int]
    ENERGY_MWH_FIELD_NUMBER: _ClassVar[int]
    VOLTAGE_DV_FIELD_NUMBER: _ClassVar[int]
    CURRENT_MA_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_DC_FIELD_NUMBER: _ClassVar[int]
    UPTIME_S_FIELD_NUMBER: _ClassVar[int]
    RELAY_ON_BITS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FLAGS_FIELD_NUMBER: _ClassVar[int]
    VOLTAGE_MISSING_FIELD_NUMBER: _ClassVar[int]
    CURRENT_MISSING_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_MISSING_FIELD_NUMBER: _ClassVar[int]
    UPTIME_MISSING_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    site_id: str
    batch_seq: int
    base_time_ms: int
    plug_macs: _containers.RepeatedScalarFieldContainer[str]
    series: _containers.RepeatedCompositeFieldContainer[PlugSeries]
    inventory: _containers.RepeatedCompositeFieldContainer[PlugInventoryChange]
    created_at_ms: int
    agent_version: str
    epoch: int
    sample_counts: _containers.RepeatedScalarFieldContainer[int]
    time_step_ms: int
    time_ms: _containers.RepeatedScalarFieldContainer[int]
    power_dw: _containers.RepeatedScalarFieldContainer[int]
    energy_mwh: _containers.RepeatedScalarFieldContainer[int]
    voltage_dv: _containers.RepeatedScalarFieldContainer[int]
    current_ma: _containers.RepeatedScalarFieldContainer[int]
    temperature_dc: _containers.RepeatedScalarFieldContainer[int]
    uptime_s: _containers.RepeatedScalarFieldContainer[int]
    relay_on_bits: bytes
    error_flags: _containers.RepeatedScalarFieldContainer[int]
    voltage_missing: bytes
    current_missing: bytes
    temperature_missing: bytes
    uptime_missing: bytes
    results: _containers.RepeatedCompositeFieldContainer[_commands_pb2.CommandResult]
    def __init__(self, site_id: _Optional[str] = ..., batch_seq: _Optional[int] = ..., base_time_ms: _Optional[int] = ..., plug_macs: _Optional[_Iterable[str]] = ..., series: _Optional[_Iterable[_Union[PlugSeries, _Mapping]]] = ..., inventory: _Optional[_Iterable[_Union[PlugInventoryChange, _Mapping]]] = ..., created_at_ms: _Optional[int] = ..., agent_version: _Optional[str] = ..., epoch: _Optional[int] = ..., sample_counts: _Optional[_Iterable[int]] = ..., time_step_ms: _Optional[int] = ..., time_ms: _Optional[_Iterable[int]] = ..., power_dw: _Optional[_Iterable[int]] = ..., energy_mwh: _Optional[_Iterable[int]] = ..., voltage_dv: _Optional[_Iterable[int]] = ..., current_ma: _Optional[_Iterable[int]] = ..., temperature_dc: _Optional[_Iterable[int]] = ..., uptime_s: _Optional[_Iterable[int]] = ..., relay_on_bits: _Optional[bytes] = ..., error_flags: _Optional[_Iterable[int]] = ..., voltage_missing: _Optional[bytes] = ..., current_missing: _Optional[bytes] = ..., temperature_missing: _Optional[bytes] = ..., uptime_missing: _Optional[bytes] = ..., results: _Optional[_Iterable[_Union[_commands_pb2.CommandResult, _Mapping]]] = ...) -> None: ...
