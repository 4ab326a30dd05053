"""The run folder (`--out`): one run at a time, a record of every segment's config, and repairs before a resume.

- **Lock.** `out/.lock` holds the process id, host and start time of the run that owns the folder. A second run on
  the same folder is refused with one line naming that process; a lock whose process is gone (same host) is stale
  and taken over. Two runs writing one folder would interleave `metrics.csv` and overwrite each other's checkpoints.
- **Config records.** `config.yaml` is the config the run started with. A resume whose config differs writes
  `config.resume-1.yaml`, `config.resume-2.yaml`, ... so the record of every segment is kept; the changed keys are
  logged.
- **Resume repairs.** Rows of `metrics.csv` written after the checkpoint being resumed (a kill between the metrics
  row and the checkpoint save) are dropped, so no evaluation appears twice.
"""

from __future__ import annotations

import csv
import io
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from semiseg.config import Config, config_yaml
from semiseg.errors import SemisegError
from semiseg.io import process_running, write_text_atomic
from semiseg.train.run_log import RunLog

LOCK_NAME = ".lock"


def _stale(owner: dict[str, Any]) -> bool:
    """A lock left by a process of this host that is gone. A lock naming our own process id is stale too: a
    restarted container reuses its host name and process ids, and a live owner cannot be this process."""
    if owner.get("host") != socket.gethostname():
        return False  # another machine's process: we cannot tell, so we do not take its folder
    pid = int(owner.get("pid", -1))
    return pid == os.getpid() or not process_running(pid)


class RunLock:
    """Exclusive ownership of a run folder by this process (see the module docstring)."""

    def __init__(self, out: Path) -> None:
        self.path = out / LOCK_NAME
        self.held = False

    def check_free(self) -> None:
        """Refuse at once when a live process owns the folder (nothing is written)."""
        owner = self._owner() if self.path.exists() else None
        if owner is not None and not _stale(owner):
            raise SemisegError(self._in_use(owner))

    def _in_use(self, owner: dict[str, Any] | None) -> str:
        who = (
            f"process {owner.get('pid')} on {owner.get('host')} since {owner.get('started')}"
            if owner
            else "another process"
        )
        return (
            f"the run folder is in use by {who}: wait for it to finish or use another --out "
            f"(if that process is gone, delete {self.path})"
        )

    def acquire(self) -> None:
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self._owner()
                if owner is not None and _stale(owner):
                    self.path.unlink(missing_ok=True)
                    continue
                raise SemisegError(self._in_use(owner)) from None
            with os.fdopen(fd, "w") as fh:
                json.dump(me, fh)
            self.held = True
            return
        raise SemisegError(
            f"could not take the lock {self.path}; delete it if no run uses {self.path.parent}"
        )

    def _owner(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False


def _leaves(tree: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from _leaves(value, f"{prefix}{key}.")
    else:
        yield prefix.rstrip("."), tree


def config_changes(saved: dict[str, Any], now: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(key, before, now) for every config value that differs between two configs (as dicts)."""
    before, after = dict(_leaves(saved)), dict(_leaves(now))
    return [
        (k, before.get(k), after.get(k))
        for k in sorted(set(before) | set(after))
        if before.get(k) != after.get(k)
    ]


def record_config(out: Path, cfg: Config, changes: list[tuple[str, Any, Any]]) -> Path | None:
    """Write `config.yaml` for a new run, or `config.resume-N.yaml` for a resume that changed the config."""
    first = out / "config.yaml"
    if not first.exists():
        return write_text_atomic(first, config_yaml(cfg))
    if not changes:
        return None
    n = 1 + sum(1 for _ in out.glob("config.resume-*.yaml"))
    return write_text_atomic(out / f"config.resume-{n}.yaml", config_yaml(cfg))


def trim_metrics(out: Path, iteration: int) -> int:
    """Drop `metrics.csv` rows of evaluations after `iteration` (the checkpoint being resumed); returns how many."""
    path = out / "metrics.csv"
    if not path.exists():
        return 0
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        fields, rows = reader.fieldnames or [], list(reader)
    kept = [r for r in rows if int(r.get("iteration") or 0) <= iteration]
    if len(kept) < len(rows):
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=fields)
        writer.writeheader()
        writer.writerows(kept)
        write_text_atomic(path, text.getvalue())
    return len(rows) - len(kept)


class RunFolder:
    """`--out` as a run sees it: checked before anything is built, opened (created, locked, recorded) only once
    everything that can fail before training has succeeded, so a refused run writes nothing."""

    def __init__(self, out: Path, is_main: bool) -> None:
        self.out, self.is_main = out, is_main
        self.lock = RunLock(out)

    def check_free(self) -> None:
        if self.is_main:
            self.lock.check_free()

    def open(self, cfg: Config, changes: list[tuple[str, Any, Any]], resumed_at: int | None) -> RunLog:
        """Create, lock and record the folder; after a resume, drop evaluations past it. Returns the run's log."""
        self.out.mkdir(parents=True, exist_ok=True)
        dropped, record = 0, None
        if self.is_main:
            self.lock.acquire()
            record = record_config(self.out, cfg, changes)
            if resumed_at is not None:
                dropped = trim_metrics(self.out, resumed_at)
        # TensorBoard hides events past the checkpoint, so steps logged before a kill are not shown twice
        log = RunLog(self.out, self.is_main, purge_step=None if resumed_at is None else resumed_at + 1)
        if changes:
            log.info(
                "the config changed since the last segment: "
                + ", ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in changes)
            )
            if self.is_main and record is not None:
                log.info(f"this segment's config is in {record.name}")
        if dropped:
            log.info(
                f"dropped {dropped} metrics.csv row(s) written after the checkpoint (a stop before it was saved)"
            )
        return log

    def close(self) -> None:
        self.lock.release()
