"""chargectl benchmarks: wire size, hub throughput and memory, agent CPU, request → relay latency, cost.

Every figure is measured on the project's own code paths next to a baseline built in the same run, so
ratios hold on a noisy machine:

1. wire     signed, compressed ``TelemetryBatch`` (``pack_telemetry``) at the agent's default flush
            settings for sites of 20, 200 and 1,000 plugs, against JSON per reading and a
            row-per-reading protobuf batch + zstd-3 (defined here, not in ``contracts/``); and the
            hub's decode µs per reading, per-plug runs (``decode_runs``) against a ``Reading`` each.
2. hub      readings/s on one core through ``Hub.handle_message`` (shard check, verify, decompress,
            decode, dedupe, ``machine.step``, ``reading_lines``) against a naive hub (JSON per
            reading, dict state); one ``Hub.tick`` sweep and one ``Hub.checkpoint``.
3. memory   bytes per plug of the hub's plug map (``MachineState``, session, entry), tracemalloc.
4. agent    CPU per plug-poll of the running ``Agent`` against the simulator (another process).
5. latency  ``ChargeRequest`` in the store → the agent's confirmed relay on, p50/p99, on
            ``chargectl run``'s ``AllInOne`` and on the Pub/Sub + Firestore emulators.
6. cost     the monthly Pub/Sub + Firestore bill from a closed-loop session simulation through the
            real hub (store writes, commands, results, message sizes counted), against the
            Firestore-document-per-reading design.

Modules: ``core`` (settings, prices, plan, report types), ``fleet`` (the synthetic site and its
flushes), ``baselines`` (every baseline, in one place to audit), ``harness`` (hub, simulator and agent
set-up shared by sections), one module per section (``wire``, ``hub``, ``memory``, ``agent``,
``latency``, ``cost``) and ``cli`` (running, rendering, the command line).

Usage: ``python scripts/bench.py [--quick] [--json FILE] [--markdown FILE] [--only SECTIONS]``.
Timings are CPU seconds of this process (``time.process_time``); medians over repeats where repeated.
"""
