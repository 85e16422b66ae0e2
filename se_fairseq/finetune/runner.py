"""Run the plan: a small pool of worker processes shares the pending runs, finished runs are
skipped, independent runs spread over the visible GPUs (one ``CUDA_VISIBLE_DEVICES`` per
worker). A worker's own output (outside its runs' train.log) goes to RUNS/worker-N.log.

A run folder holds ``spec.json`` (what it is), fairseq's checkpoints and ``train.log``,
and, once finished, ``done.json``. A rerun of the harness skips runs with a
``done.json`` of the same fingerprint, resumes the others from their
``checkpoint_last.pt`` and refuses a folder made with other settings. The fingerprint
holds no absolute path: a moved ``--out`` folder keeps its finished runs, and resumes the
others with the paths of its new place. A run that fails
is reported (its log, the last line of its traceback) and the others go on.

The workers die with the parent and a run never runs twice: each worker is its own process
group (a new session), which the parent kills when it returns, raises or receives SIGTERM,
SIGINT or SIGHUP (the signal is forwarded to the groups, SIGKILL after a grace period, then
the parent exits as the signal asks); on Linux each worker also has
``prctl(PR_SET_PDEATHSIG, SIGKILL)``, so a parent killed with SIGKILL takes its workers
with it. A run's claim file names the worker that runs it (pid, start time, host); a rerun
takes over a claim only when that process is gone, and leaves a run claimed by a live
process (another se-finetune on the same folder) alone, listing it as not finished.
"""

import ctypes
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any, Optional, TypedDict, Union

from se_fairseq.finetune.errors import FinetuneError
from se_fairseq.finetune.log import Log, print_line
from se_fairseq.finetune.plan import RunSpec
from se_fairseq.finetune.predictions import single_class_note
from se_fairseq.finetune.records import ClaimOwner, DoneRecord, Failure
from se_fairseq.finetune.worker import (
    CLAIM,
    DONE,
    FAILED,
    LOG,
    SPEC,
    claim_owner,
    owner_alive,
    spec_json,
    write_json_atomic,
)

#: signals the parent forwards to its workers' process groups before it exits
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
PR_SET_PDEATHSIG = 1  # linux/prctl.h
#: seconds the workers get to exit after the forwarded signal, before SIGKILL
GRACE = 10.0

#: a worker's argv for the run folders it shares with the others
Command = Callable[[list[str]], list[str]]


class ProgressState(TypedDict, total=False):
    """What fairseq-train's log says of a run so far (:func:`parse_progress`)."""

    updates: int
    epoch: int
    dev_metric: str
    dev: Optional[float]
    best: Optional[float]


def visible_devices(devices: Union[str, Sequence[str], None] = None) -> list[str]:
    """GPU ids to spread runs over: given (``"0,1"``), else CUDA_VISIBLE_DEVICES, else every GPU
    torch sees; [] means the CPU."""
    if devices is not None:
        if isinstance(devices, str):
            devices = [d.strip() for d in devices.split(",") if d.strip() and d.strip() != "cpu"]
        return list(devices)
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [d.strip() for d in env.split(",") if d.strip() and d.strip() != "-1"]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except ImportError:  # pragma: no cover
        return []


def worker_command(run_dirs: list[str]) -> list[str]:
    return [sys.executable, "-m", "se_fairseq.finetune.worker", *run_dirs]


def prepare(run: RunSpec, fingerprint: str) -> bool:
    """Write spec.json (a new run) or check it (a resumed one); True if the run is done."""
    os.makedirs(run.run_dir, exist_ok=True)
    spec_path = os.path.join(run.run_dir, SPEC)
    spec = spec_json(run, fingerprint)
    if os.path.exists(spec_path):
        have = json.load(open(spec_path))
        if have.get("fingerprint") == fingerprint and have != spec:
            write_json_atomic(spec_path, spec)  # the same run, moved: the paths of now
        if have.get("fingerprint") != fingerprint:
            changed = sorted(
                k
                for k in set(spec) | set(have)
                if k != "fingerprint" and have.get(k) != spec.get(k)
            )
            raise FinetuneError(
                f"{run.run_dir} holds a run with other settings (differ: {', '.join(changed)}); "
                "use another --out folder or delete that run folder"
            )
    else:
        write_json_atomic(spec_path, spec)
    done = os.path.join(run.run_dir, DONE)
    if os.path.exists(done) and json.load(open(done)).get("fingerprint") == fingerprint:
        return True
    if live_claim(run.run_dir) is None:  # left by a dead worker of an earlier invocation
        for stale in (CLAIM, FAILED):
            if os.path.exists(os.path.join(run.run_dir, stale)):
                os.remove(os.path.join(run.run_dir, stale))
    done = os.path.join(run.run_dir, DONE)
    return os.path.exists(done) and json.load(open(done)).get("fingerprint") == fingerprint


def live_claim(run_dir: str) -> Optional[ClaimOwner]:
    """The owner (pid, start_time, host) of the run's claim while that process runs, else
    None (no claim, an unreadable one, or its owner is gone)."""
    owner = claim_owner(run_dir)
    return owner if owner_alive(owner) else None


def _die_with_parent(parent: int) -> Callable[[], None]:
    """preexec_fn of a worker: on Linux, SIGKILL when the parent dies
    (``prctl(PR_SET_PDEATHSIG)``); exit at once where the parent died before that was set.
    libc is looked up here, in the parent: the child only calls it."""
    prctl = None
    if sys.platform.startswith("linux"):
        try:
            prctl = ctypes.CDLL(None, use_errno=True).prctl
        except (OSError, AttributeError):  # pragma: no cover
            prctl = None

    def setup() -> None:
        if prctl is not None:
            prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)

    return setup


def stop_workers(
    procs: Sequence["subprocess.Popen[bytes]"], signum: int = signal.SIGTERM, grace: float = GRACE
) -> None:
    """Send ``signum`` to each worker's process group, wait up to ``grace`` seconds, then
    SIGKILL the groups; reaps the workers."""
    for sig in (signum, signal.SIGKILL):
        for p in procs:
            try:
                os.killpg(p.pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.time() + (grace if sig != signal.SIGKILL else 5.0)
        while any(p.poll() is None for p in procs) and time.time() < deadline:
            time.sleep(0.05)
        if all(p.poll() is not None for p in procs):
            break
    for p in procs:
        try:
            p.wait(timeout=1)
        except subprocess.TimeoutExpired:  # pragma: no cover
            pass


class _Signalled(BaseException):
    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


_TRAIN_INNER = re.compile(r"epoch (\d+):\s+(\d+) / (\d+) (.*)$")


def _number(text: str) -> Optional[float]:
    try:
        return float(text)
    except ValueError:
        return None


def parse_progress(text: str, metric: Optional[str] = None) -> ProgressState:
    """What fairseq-train's log (``--log-format simple``) says of a run so far: ``updates``
    (the last num_updates), ``epoch``, and from the last validation on the first dev set
    ``dev`` (``metric``, e.g. accuracy, as fairseq logs it), ``best`` (its best_ value)
    and ``dev_metric`` (the name reported). Lines fairseq writes:

        ... | train_inner | epoch 001:     10 / 16 loss=0.69, ..., num_updates=10, lr=...
        ... | valid | epoch 001 | valid on 'valid' subset | loss 0.69 | ... | accuracy 50 |
            ... | num_updates 16 | best_accuracy 50
    """
    state: ProgressState = {}
    for line in text.splitlines():
        inner = _TRAIN_INNER.search(line)
        if inner:
            fields = dict(f.split("=", 1) for f in inner.group(4).split(", ") if "=" in f)
            if "num_updates" in fields:
                state["updates"] = int(float(fields["num_updates"]))
            state["epoch"] = int(inner.group(1))
            continue
        if " | " not in line:
            continue
        parts = [p.strip() for p in line.split(" | ")]
        fields = dict(p.split(" ", 1) for p in parts if " " in p)
        if "num_updates" in fields and (n := _number(fields["num_updates"])) is not None:
            state["updates"] = int(n)
        if "valid on 'valid' subset" not in parts:
            continue
        names = [m for m in (metric, "accuracy", "loss") if m and m in fields]
        if names:
            state["dev_metric"] = names[0]
            state["dev"] = _number(fields[names[0]])
            best = fields.get("best_" + names[0])
            state["best"] = _number(best) if best is not None else None
    return state


def _tail(path: str, size: int = 65536) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.path.getsize(path) - size))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def progress_line(run: RunSpec, state: ProgressState) -> str:
    total = (run.settings or {}).get("total_updates")
    text = f"update {state.get('updates', 0)}" + (f"/{total}" if total else "")
    if "epoch" in state:
        text += f", epoch {state['epoch']}"
    if state.get("dev") is not None:
        text += f", dev {state['dev_metric']} {state['dev']:g}"
        if state.get("best") is not None:
            text += f" (best {state['best']:g})"
    return text


def _failure(run: RunSpec, reason: str) -> Failure:
    return {
        "key": run.key,
        "checkpoint": run.checkpoint,
        "task": run.task,
        "seed": run.seed,
        "run_dir": run.run_dir,
        "log": os.path.join(run.run_dir, LOG),
        "reason": reason,
    }


def _last_line(path: str) -> str:
    if not os.path.exists(path):
        return ""
    lines = [line.strip() for line in open(path, errors="replace") if line.strip()]
    return lines[-1] if lines else ""


def run_all(
    runs: Sequence[RunSpec],
    devices: Union[str, Sequence[str], None] = None,
    jobs: Optional[int] = None,
    log: Log = print_line,
    command: Optional[Command] = None,
    poll: float = 0.5,
    progress_every: float = 60.0,
) -> tuple[dict[str, DoneRecord], list[Failure]]:
    """Run every unfinished run; returns ({run key: done record}, [failure]) where a failure
    names the run, its folder, its log and the reason (the last line of its traceback, or the
    worker's exit code). A failing run does not stop the others. ``jobs`` worker processes
    (default: one per visible GPU, else 1) share the list of pending runs, each on its own
    GPU; ``command(run_dirs)`` is a worker's argv (default :func:`worker_command`). Every
    ``progress_every`` seconds each running run whose log moved gets a line: its updates of
    the planned total, epoch, and last dev metric (:func:`parse_progress`)."""
    command = command or worker_command
    gpus = visible_devices(devices)
    jobs = jobs or max(1, len(gpus))
    pending: list[RunSpec] = []
    results: dict[str, DoneRecord] = {}
    claimed: list[tuple[RunSpec, ClaimOwner]] = []
    for run in runs:
        if prepare(run, run.fingerprint()):
            results[run.key] = json.load(open(os.path.join(run.run_dir, DONE)))
        elif (owner := live_claim(run.run_dir)) is not None:
            claimed.append((run, owner))
            log(
                f"[finetune] skipped {run.key}: running in process {owner['pid']} on "
                f"{owner.get('host', 'this host')} (its claim: {run.run_dir}/{CLAIM}; delete "
                "that file if no such run is alive)"
            )
        else:
            pending.append(run)
    claimed_failures = [
        _failure(
            run,
            f"running in another process (pid {owner['pid']}, host {owner.get('host')}); "
            "not started twice",
        )
        for run, owner in claimed
    ]
    total = len(runs)
    where = f"GPUs {','.join(gpus)}" if gpus else "the CPU"
    jobs = min(jobs, max(1, len(pending)))
    log(
        f"[finetune] {total} runs: {len(results)} already done, {len(pending)} to run on {where}, "
        f"{jobs} at a time" + (f", {len(claimed)} running elsewhere" if claimed else "")
    )
    if not pending:
        return results, claimed_failures
    pool = RunPool(
        pending,
        gpus,
        jobs,
        done=results,
        total=total,
        command=command,
        log=log,
        poll=poll,
        progress_every=progress_every,
    )
    received = None
    handlers: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():

        def on_signal(signum: int, frame: Optional[FrameType]) -> None:
            raise _Signalled(signum)

        handlers = {s: signal.signal(s, on_signal) for s in FORWARDED}
    try:
        pool.start()
        pool.watch()
        return pool.done, pool.failures(claimed_failures)
    except _Signalled as signalled:
        received = signalled.signum
        log(f"[finetune] {signal.Signals(received).name}: stopping the workers")
    finally:
        pool.stop(received or signal.SIGTERM)
        for s, handler in handlers.items():
            signal.signal(s, handler)
        if received is not None:  # exit as the signal asks, now that the workers are gone
            if received == signal.SIGINT:
                raise KeyboardInterrupt
            raise SystemExit(128 + received)
    return results, []  # pragma: no cover (the finally raised)


class RunPool:
    """The worker processes of one invocation and the pending runs they share.

    :meth:`start` starts ``jobs`` workers, each its own process group on its own device
    (``CUDA_VISIBLE_DEVICES``; none: the CPU), its output to RUNS/worker-N.log;
    :meth:`watch` follows the run folders until every worker has exited, logging a line
    when a run starts (its claim appears), progresses, is done (done.json, added to
    :attr:`done`) or failed (failed.txt); :meth:`failures` lists the runs that did not
    finish; :meth:`stop` ends the workers' process groups (forwarded signal, then SIGKILL).
    """

    def __init__(
        self,
        pending: Sequence[RunSpec],
        gpus: Sequence[str],
        jobs: int,
        *,
        done: dict[str, DoneRecord],
        total: int,
        command: Command,
        log: Log,
        poll: float,
        progress_every: float,
    ) -> None:
        self.pending = list(pending)
        self.gpus = list(gpus)
        self.jobs = jobs
        #: run key -> done record: the runs finished before, then those finishing here
        self.done = done
        self.total = total  # every run of the invocation, for the [n/total] count
        self.command = command
        self.log = log
        self.poll = poll
        self.progress_every = progress_every
        self.workers: list[tuple[Optional[str], subprocess.Popen[bytes]]] = []
        self.started: dict[str, float] = {}  # run key -> when its claim was seen
        self.failed: list[RunSpec] = []
        self.finished = len(done)
        #: run key -> (time, line) of its last progress line
        self.shown: dict[str, tuple[float, Optional[str]]] = {}

    def start(self) -> None:
        """Start the workers, each given every pending run folder (they share them by claim)."""
        log_dir = os.path.commonpath([os.path.dirname(r.run_dir) for r in self.pending])
        for i in range(self.jobs):
            device = self.gpus[i % len(self.gpus)] if self.gpus else None
            with open(os.path.join(log_dir, f"worker-{i}.log"), "a") as out:
                process = subprocess.Popen(
                    self.command([r.run_dir for r in self.pending]),
                    env=self._environment(device),
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # its own process group, killed with us
                    preexec_fn=_die_with_parent(os.getpid()),
                )
            self.workers.append((device, process))

    def _environment(self, device: Optional[str]) -> dict[str, str]:
        env = dict(os.environ)
        env["CUDA_VISIBLE_DEVICES"] = device if device is not None else ""
        if device is None and self.jobs > 1 and "OMP_NUM_THREADS" not in os.environ:
            env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // self.jobs))
        return env

    def watch(self) -> None:
        """Report on the runs every ``poll`` seconds until every worker has exited."""
        while any(p.poll() is None for _, p in self.workers):
            self.report()
            time.sleep(self.poll)
        self.report()

    def report(self) -> None:
        """One look at each pending run's folder: start, done, failed or progress lines."""
        for run in self.pending:
            if run.key in self.done or run in self.failed:
                continue
            if run.key not in self.started and os.path.exists(os.path.join(run.run_dir, CLAIM)):
                self.started[run.key] = time.time()
                resumed = os.path.exists(os.path.join(run.run_dir, "checkpoint_last.pt")) or any(
                    n.startswith("checkpoint-") for n in os.listdir(run.run_dir)
                )
                self.log(f"[finetune] start  {run.key}" + (" (resuming)" if resumed else ""))
            if os.path.exists(os.path.join(run.run_dir, DONE)):
                record = json.load(open(os.path.join(run.run_dir, DONE)))
                self.done[run.key] = record
                self.finished += 1
                seconds = time.time() - self.started.get(run.key, time.time())
                self.log(
                    f"[finetune] [{self.finished}/{self.total}] done {run.key}: "
                    f"{record['metric']} {100 * record['value']:.2f} ({seconds:.0f} s)"
                    + single_class_note(record.get("prediction_counts"))
                )
            elif os.path.exists(os.path.join(run.run_dir, FAILED)):
                self.failed.append(run)
                self.log(f"[finetune] FAILED {run.key}; see {run.run_dir}/{LOG}")
            elif run.key in self.started:
                self.progress(run)

    def progress(self, run: RunSpec) -> None:
        """A progress line for a running run, at most every ``progress_every`` seconds and
        only when its log moved."""
        now = time.time()
        last = self.shown.get(run.key, (self.started.get(run.key, now), None))
        if now - last[0] < self.progress_every:
            return
        state = parse_progress(_tail(os.path.join(run.run_dir, LOG)), run.metric)
        line = progress_line(run, state)
        if line != last[1]:
            self.log(f"[finetune] ...    {run.key}: {line}")
        self.shown[run.key] = (now, line)

    def failures(self, elsewhere: Sequence[Failure] = ()) -> list[Failure]:
        """Once the workers have exited: ``elsewhere`` (runs another process holds), then
        each pending run that did not finish, with its reason; logs the count."""
        codes = sorted({p.returncode for _, p in self.workers})
        failures = list(elsewhere)
        for run in self.pending:
            if run.key in self.done:
                continue
            if run in self.failed:
                reason = _last_line(os.path.join(run.run_dir, FAILED)) or "failed"
            else:
                reason = f"not finished: the workers exited (exit codes {codes})"
                self.log(f"[finetune] FAILED {run.key}: {reason}; see {run.run_dir}/{LOG}")
            failures.append(_failure(run, reason))
        if failures:
            self.log(
                f"[finetune] {len(failures)} of {self.total} runs did not finish (rerun to "
                "retry them; finished runs are kept)"
            )
        return failures

    def stop(self, signum: int = signal.SIGTERM) -> None:
        """Stop every worker started (their process groups), reaping them."""
        stop_workers([p for _, p in self.workers], signum)
