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
"""

import json
import os
import subprocess
import sys
import time

from se_fairseq.finetune.errors import FinetuneError
from se_fairseq.finetune.worker import CLAIM, DONE, FAILED, LOG, SPEC, write_json_atomic


def visible_devices(devices=None):
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


def worker_command(run_dirs):
    return [sys.executable, "-m", "se_fairseq.finetune.worker", *run_dirs]


def prepare(run, fingerprint):
    """Write spec.json (a new run) or check it (a resumed one); True if the run is done."""
    os.makedirs(run.run_dir, exist_ok=True)
    spec_path = os.path.join(run.run_dir, SPEC)
    spec = dict(run.to_json(), fingerprint=fingerprint)
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
    for stale in (CLAIM, FAILED):  # left by a worker of an earlier, interrupted invocation
        if os.path.exists(os.path.join(run.run_dir, stale)):
            os.remove(os.path.join(run.run_dir, stale))
    done = os.path.join(run.run_dir, DONE)
    return os.path.exists(done) and json.load(open(done)).get("fingerprint") == fingerprint


def _failure(run, reason):
    return {
        "key": run.key,
        "checkpoint": run.checkpoint,
        "task": run.task,
        "seed": run.seed,
        "run_dir": run.run_dir,
        "log": os.path.join(run.run_dir, LOG),
        "reason": reason,
    }


def _last_line(path):
    if not os.path.exists(path):
        return ""
    lines = [line.strip() for line in open(path, errors="replace") if line.strip()]
    return lines[-1] if lines else ""


def run_all(runs, devices=None, jobs=None, log=print, command=None, poll=0.5):
    """Run every unfinished run; returns ({run key: done record}, [failure]) where a failure
    names the run, its folder, its log and the reason (the last line of its traceback, or the
    worker's exit code). A failing run does not stop the others. ``jobs`` worker processes
    (default: one per visible GPU, else 1) share the list of pending runs, each on its own
    GPU; ``command(run_dirs)`` is a worker's argv (default :func:`worker_command`)."""
    command = command or worker_command
    gpus = visible_devices(devices)
    jobs = jobs or max(1, len(gpus))
    pending, results = [], {}
    for run in runs:
        if prepare(run, run.fingerprint()):
            results[run.key] = json.load(open(os.path.join(run.run_dir, DONE)))
        else:
            pending.append(run)
    total = len(runs)
    where = f"GPUs {','.join(gpus)}" if gpus else "the CPU"
    jobs = min(jobs, max(1, len(pending)))
    log(
        f"[finetune] {total} runs: {len(results)} already done, {len(pending)} to run on {where}, "
        f"{jobs} at a time"
    )
    if not pending:
        return results, []
    workers = []
    log_dir = os.path.commonpath([os.path.dirname(r.run_dir) for r in pending])
    for i in range(jobs):
        env = dict(os.environ)
        device = gpus[i % len(gpus)] if gpus else None
        env["CUDA_VISIBLE_DEVICES"] = device if device is not None else ""
        if device is None and jobs > 1 and "OMP_NUM_THREADS" not in os.environ:
            env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // jobs))
        with open(os.path.join(log_dir, f"worker-{i}.log"), "a") as out:
            workers.append(
                (
                    device,
                    subprocess.Popen(
                        command([r.run_dir for r in pending]),
                        env=env,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                    ),
                )
            )
    started, finished = {}, len(results)
    failed = []

    def report():
        nonlocal finished
        for run in pending:
            if run.key in results or run in failed:
                continue
            if run.key not in started and os.path.exists(os.path.join(run.run_dir, CLAIM)):
                started[run.key] = time.time()
                resumed = os.path.exists(os.path.join(run.run_dir, "checkpoint_last.pt"))
                log(f"[finetune] start  {run.key}" + (" (resuming)" if resumed else ""))
            if os.path.exists(os.path.join(run.run_dir, DONE)):
                record = json.load(open(os.path.join(run.run_dir, DONE)))
                results[run.key] = record
                finished += 1
                seconds = time.time() - started.get(run.key, time.time())
                log(
                    f"[finetune] [{finished}/{total}] done {run.key}: {record['metric']} "
                    f"{100 * record['value']:.2f} ({seconds:.0f} s)"
                )
            elif os.path.exists(os.path.join(run.run_dir, FAILED)):
                failed.append(run)
                log(f"[finetune] FAILED {run.key}; see {run.run_dir}/{LOG}")

    while any(p.poll() is None for _, p in workers):
        report()
        time.sleep(poll)
    report()
    codes = sorted({p.returncode for _, p in workers})
    failures = []
    for run in pending:
        if run.key in results:
            continue
        if run in failed:
            reason = _last_line(os.path.join(run.run_dir, FAILED)) or "failed"
        else:
            reason = f"not finished: the workers exited (exit codes {codes})"
            log(f"[finetune] FAILED {run.key}: {reason}; see {run.run_dir}/{LOG}")
        failures.append(_failure(run, reason))
    if failures:
        log(
            f"[finetune] {len(failures)} of {total} runs did not finish (rerun to retry them; "
            "finished runs are kept)"
        )
    return results, failures
