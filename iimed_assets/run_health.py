"""Runs that die must not hold the `gpu` pool, and a step waiting for a pool slot must sleep and stop on SIGTERM.

Dagster frees a run's concurrency slots when the run ends. A run killed by the OS (kill -9, OOM, a reboot) never
ends: its run stays STARTED and its slot stays claimed, so every later step of the pool waits for ever. Three
parts fix that, one per path:

- `dagster dev` (the daemon): `HealthCheckedRunLauncher`, the project's run launcher (`.dagster_home/dagster.yaml`),
  is Dagster's `DefaultRunLauncher` plus a worker health check. Dagster's run monitoring (`run_monitoring`) asks it
  about every STARTED run each poll; a run whose worker process is gone is marked failed, and
  `run_monitoring.free_slots_after_run_end_seconds` then frees the slots of ended runs.
- the CLI (`iimed-assets materialize`, no daemon): `release_dead_runs` runs before the first partition: every run
  that holds or waits for a slot and has ended, or whose worker is gone, is marked failed and its slots freed.
- the wait itself (`patch_slot_wait`): Dagster 1.13's `interval_to_next_pending_claim_check` returns
  `min([0, …])`, never a positive number, so the in-process executor polls the slot in a busy loop (one core at
  100%; the multiprocess executor's loop has no sleep at all); and SIGTERM is captured during a run but only raised
  inside a step, so an in-process run that waits for a slot ignores it. The patch sleeps until the next claim
  check, in short naps that look for a captured interrupt and stop the run (Dagster PR #20367 tried to fix the
  interval upstream and was closed). It is applied where the pool is declared (`assets/common.py`), so every
  process that loads the code location (the CLI, a run worker) has it.

A worker is judged only on this host: the run carries `iimed/host` (the CLI runner sets it), or was launched to a
local code server (Dagster's gRPC tag), or the instance is SQLite (one machine). Its pid is the one that logged the
run's RUN_START; the process must still exist and must have started before that event (a recycled pid is not the
run's worker). Anything unknown counts as alive: a live run is never failed by a guess.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Callable

import dagster as dg
from dagster._core.launcher import CheckRunHealthResult, DefaultRunLauncher, WorkerStatus

HOST_TAG = "iimed/host"
_LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1", "0.0.0.0"}
SLOT_NAP_S = 0.5  # the longest a waiting step sleeps before it looks for a captured SIGTERM/SIGINT


# ---- is the run's worker alive? --------------------------------------------------------------------------------

def _process_started_at(pid: int) -> float | None:
    """Unix time the process started (Linux /proc), or None when unknown."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        start_ticks = int(fields[19])  # field 22 of stat, counted after "pid (comm)"
        boot = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))
        return boot + start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True


def _on_this_host(instance: dg.DagsterInstance, run: dg.DagsterRun) -> bool:
    host = run.tags.get(HOST_TAG)
    if host is not None:
        return host == socket.gethostname()
    grpc = run.tags.get("dagster/grpc_info")
    if grpc:
        try:
            info = json.loads(grpc)
        except ValueError:
            return False
        return "socket" in info or str(info.get("host", "")).lower() in _LOCAL_HOSTS
    return type(instance.run_storage).__name__.startswith("Sqlite")  # a SQLite instance lives on one machine


def worker_alive(instance: dg.DagsterInstance, run: dg.DagsterRun) -> bool | None:
    """False when the process that executes `run` is gone; True when it runs; None when it cannot be told (another
    host, no RUN_START yet)."""
    if not _on_this_host(instance, run):
        return None
    records = instance.get_records_for_run(run.run_id, of_type=dg.DagsterEventType.RUN_START, limit=1,
                                           ascending=False).records
    event = records[0].event_log_entry if records else None
    pid = event.dagster_event.pid if event is not None and event.dagster_event is not None else None
    if pid is None:
        return None
    if not _pid_alive(pid):
        return False
    started = _process_started_at(pid)
    return not (started is not None and started > event.timestamp + 2.0)  # a recycled pid: another process


class HealthCheckedRunLauncher(DefaultRunLauncher):
    """Dagster's default launcher (runs in a subprocess of the code server) that can tell run monitoring whether a
    run's worker process still exists, so a killed run is failed and its pool slots are freed."""

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: dg.DagsterRun) -> CheckRunHealthResult:
        if worker_alive(self._instance, run) is False:
            return CheckRunHealthResult(WorkerStatus.FAILED, "the run's worker process is gone (killed?)")
        return CheckRunHealthResult(WorkerStatus.RUNNING)


# ---- the CLI path: free the slots of dead runs before starting -------------------------------------------------

def release_dead_runs(instance: dg.DagsterInstance, log: Callable[[str], None] = print) -> list[str]:
    """Free the pool slots held (or waited for) by runs that ended or whose worker is gone; fail those runs.
    Returns their run ids."""
    storage = instance.event_log_storage
    if not storage.supports_global_concurrency_limits:
        return []
    released = []
    for run_id in sorted(storage.get_concurrency_run_ids()):
        run = instance.get_run_by_id(run_id)
        was_alive = run is not None and not run.is_finished
        if was_alive:
            if worker_alive(instance, run) is not False:
                continue
            instance.report_run_failed(run, "the run's worker process is gone (killed?); its pool slots are "
                                            "freed by the next run (iimed_assets.run_health)")
        storage.free_concurrency_slots_for_run(run_id)
        released.append(run_id)
        log(f"freed the pool slots of run {run_id[:8]} "
            f"({'its worker is gone' if was_alive else 'deleted' if run is None else run.status.value})")
    return released


# ---- the wait: sleep, and stop on SIGTERM ----------------------------------------------------------------------

_PATCHED: dict[str, bool] = {}


def patch_slot_wait() -> dict[str, bool]:
    """Make a step that waits for a pool slot sleep until its next claim check, and stop on SIGTERM/SIGINT.
    Idempotent; each part is applied only where Dagster still needs it. Returns what is patched."""
    if _PATCHED:
        return _PATCHED
    from dagster._core.errors import DagsterExecutionInterruptedError
    from dagster._core.execution.plan.active import ActiveExecution
    from dagster._core.execution.plan.instance_concurrency_context import InstanceConcurrencyContext
    from dagster._utils.interrupts import check_captured_interrupt, pop_captured_interrupt

    original = InstanceConcurrencyContext.interval_to_next_pending_claim_check
    probe = type("Probe", (), {"_pending_claims": {"step"}, "_pending_timeouts": {"step": time.time() + 60}})()
    if original(probe) <= 0:  # the upstream bug: min([0, ...]) is never positive
        def interval_to_next_pending_claim_check(self) -> float:
            if not self._pending_claims:
                return 0.0
            waits = [ready_at - time.time() for ready_at in self._pending_timeouts.values()]
            return max(0.0, min(waits)) if waits else SLOT_NAP_S

        InstanceConcurrencyContext.interval_to_next_pending_claim_check = interval_to_next_pending_claim_check
        _PATCHED["interval"] = True

    def sleep_til_ready(self) -> None:
        deadline = time.monotonic() + self.sleep_interval()
        while True:
            if check_captured_interrupt():  # SIGTERM/SIGINT arrived while no step runs: stop the run now
                pop_captured_interrupt()
                raise DagsterExecutionInterruptedError("interrupted while waiting for a pool slot")
            left = deadline - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(left, SLOT_NAP_S))

    def check_for_interrupts(self) -> bool:
        # The multiprocess (and step-delegating) executor's loop calls this once per turn and has no sleep of its
        # own: while no step is in flight and the next slot check is due later, nap first (it returns at once on
        # a captured interrupt, which the executor then handles).
        if not self._in_flight and self.sleep_interval() > 0 and not check_captured_interrupt():
            time.sleep(min(self.sleep_interval(), SLOT_NAP_S))
        return pop_captured_interrupt()

    ActiveExecution.sleep_til_ready = sleep_til_ready
    ActiveExecution.check_for_interrupts = check_for_interrupts
    _PATCHED["interruptible_sleep"] = True
    return _PATCHED
