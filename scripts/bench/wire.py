"""1. Wire size: the signed, compressed ``TelemetryBatch`` (``pack_telemetry``) at the agent's default
flush settings, against JSON per reading and a row-per-reading protobuf batch + zstd-3; and the
hub's decode cost per reading.
"""

from __future__ import annotations

import gc
import random
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

from chargectl.common import codec
from chargectl.common.keys import Keyring, SigningKey

from .baselines import json_reading, row_batch_zstd
from .core import CHARGING_SHARE, PUBSUB_MIN_REQUEST_BYTES, Figure, Plan, Report
from .fleet import Fleet, billed_message_bytes, flushes, reading_order, telemetry_attributes


def bench_wire(plan: Plan, report: Report) -> None:
    key = SigningKey.generate()
    ring = Keyring()
    ring.add_public(key.public_bytes, "site-w")
    details: dict[str, Any] = {}
    for n in plan.wire_sites:
        fleet = Fleet("site-w", n, random.Random(plan.seed + n), CHARGING_SHARE)
        real = json_total = row_total = readings = billed = 0
        messages = 0
        payloads: list[bytes] = []
        for b in flushes(fleet, range(plan.wire_polls), 1):
            data, attrs = telemetry_attributes(b, key)
            back = codec.unpack_telemetry(data, ring)
            if sorted(back.readings, key=reading_order) != sorted(b.readings, key=reading_order):
                raise AssertionError("the telemetry codec did not round-trip the benchmark's readings")
            if codec.unpack_telemetry_runs(data, ring).to_batch() != back:
                raise AssertionError("the run decoder does not carry what decode_batch does")
            payloads.append(codec.encode_batch(b))
            messages += 1
            readings += len(b.readings)
            real += len(data)
            billed += max(PUBSUB_MIN_REQUEST_BYTES, billed_message_bytes(data, attrs))
            json_total += sum(len(json_reading(r, b.site_id)) for r in b.readings)
            row_total += len(row_batch_zstd(b))
        per = real / readings
        # The hub's decode of a verified, decompressed batch: per-plug runs against a Reading each.
        runs_us = _us_per_reading(codec.decode_runs, payloads, readings, plan.wire_decode_repeats)
        objects_us = _us_per_reading(codec.decode_batch, payloads, readings, plan.wire_decode_repeats)
        details[str(n)] = {
            "messages": messages,
            "readings": readings,
            "readings_per_message": readings / messages,
            "bytes_per_message": real / messages,
            "bytes_per_reading": per,
            "billed_publish_bytes_per_reading": billed / readings,
            "json_bytes_per_reading": json_total / readings,
            "row_protobuf_zstd_bytes_per_reading": row_total / readings,
            "decode_runs_us_per_reading": runs_us,
            "decode_batch_us_per_reading": objects_us,
        }
        report.add(
            Figure(
                "wire",
                f"{n}-plug site, bytes/reading",
                per,
                "B",
                json_total / readings,
                "JSON per reading",
            ),
            Figure(
                "wire",
                f"{n}-plug site, bytes/reading",
                per,
                "B",
                row_total / readings,
                "row protobuf batch + zstd-3",
            ),
            Figure(
                "wire",
                f"{n}-plug site, decode µs/reading",
                runs_us,
                "µs",
                objects_us,
                "decode_batch (a Reading per reading)",
            ),
        )
    report.details["wire"] = details


def _us_per_reading(
    decode: Callable[[bytes], object], payloads: Sequence[bytes], readings: int, repeats: int
) -> float:
    """CPU µs per reading of ``decode`` over every payload; the median of ``repeats`` passes."""
    runs: list[float] = []
    for _ in range(repeats):
        gc.collect()
        t0 = time.process_time()
        for data in payloads:
            decode(data)
        runs.append((time.process_time() - t0) / readings * 1e6)
    return statistics.median(runs)
