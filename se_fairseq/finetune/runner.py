"""Run the plan: each run a worker process, finished runs skipped, independent runs spread
over the visible GPUs (one ``CUDA_VISIBLE_DEVICES`` per process, a small pool).

A run folder holds ``spec.json`` (what it is), fairseq's checkpoints and ``train.log``,
and, once finished, ``done.json``. A rerun of the harness skips runs with a
``done.json`` of the same fingerprint, resumes the others from their
``checkpoint_last.pt`` and refuses a folder made with other settings.
"""
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass

from se_fairseq.finetune.errors import FinetuneError
from se_fairseq.finetune.worker import DONE, SPEC, write_json_atomic


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


def worker_command(run_dir):
    return [sys.executable, "-m", "se_fairseq.finetune.worker", run_dir]


def prepare(run, fingerprint):
    """Write spec.json (a new run) or check it (a resumed one); True if the run is done."""
    os.makedirs(run.run_dir, exist_ok=True)
    spec_path = os.path.join(run.run_dir, SPEC)
    spec = dict(run.to_json(), fingerprint=fingerprint)
    if os.path.exists(spec_path):
        have = json.load(open(spec_path))
        if have.get("fingerprint") != fingerprint:
            changed = sorted(k for k in set(spec) | set(have)
                             if k != "fingerprint" and have.get(k) != spec.get(k))
            raise FinetuneError(
                f"{run.run_dir} holds a run with other settings (differ: {', '.join(changed)}); "
                "use another --out folder or delete that run folder")
    else:
        write_json_atomic(spec_path, spec)
    done = os.path.join(run.run_dir, DONE)
    return os.path.exists(done) and json.load(open(done)).get("fingerprint") == fingerprint


@dataclass
class Slot:
    device: object  # GPU id (str) or None for the CPU
    process: object = None
    run: object = None
    started: float = 0.0
    log: object = None


def run_all(runs, devices=None, jobs=None, log=print, command=worker_command):
    """Run every unfinished run; returns {run key: done record}. ``jobs``: processes at once
    (default: one per visible GPU, else 1). ``command(run_dir)`` is the worker's argv."""
    gpus = visible_devices(devices)
    jobs = jobs or max(1, len(gpus))
    slots = [Slot(gpus[i % len(gpus)] if gpus else None) for i in range(jobs)]
    pending, results, failed = [], {}, []
    for run in runs:
        if prepare(run, run.fingerprint()):
            results[run.key] = json.load(open(os.path.join(run.run_dir, DONE)))
        else:
            pending.append(run)
    total = len(runs)
    where = f"GPUs {','.join(gpus)}" if gpus else "the CPU"
    log(f"[finetune] {total} runs: {len(results)} already done, {len(pending)} to run on {where}, "
        f"{jobs} at a time")
    finished = len(results)
    while pending or any(s.process for s in slots):
        for slot in slots:
            if slot.process is None and pending:
                run = pending.pop(0)
                env = dict(os.environ)
                env["CUDA_VISIBLE_DEVICES"] = slot.device if slot.device is not None else ""
                if slot.device is None and jobs > 1 and "OMP_NUM_THREADS" not in os.environ:
                    env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // jobs))
                resumed = os.path.exists(os.path.join(run.run_dir, "checkpoint_last.pt"))
                slot.log = open(os.path.join(run.run_dir, "train.log"), "a")
                slot.process = subprocess.Popen(command(run.run_dir), env=env, stdout=slot.log,
                                                stderr=subprocess.STDOUT)
                slot.run, slot.started = run, time.time()
                log(f"[finetune] start  {run.key}" + (f" on GPU {slot.device}" if slot.device is not None
                                                       else "") + (" (resuming)" if resumed else ""))
        time.sleep(0.2)
        for slot in slots:
            if slot.process is None or slot.process.poll() is None:
                continue
            run, code = slot.run, slot.process.returncode
            slot.log.close()
            slot.process = None
            done = os.path.join(run.run_dir, DONE)
            seconds = time.time() - slot.started
            if code == 0 and os.path.exists(done):
                record = json.load(open(done))
                results[run.key] = record
                finished += 1
                log(f"[finetune] [{finished}/{total}] done {run.key}: {record['metric']} "
                    f"{100 * record['value']:.2f} ({seconds:.0f} s)")
            else:
                failed.append(run)
                log(f"[finetune] FAILED {run.key} (exit {code}); see {run.run_dir}/train.log")
    if failed:
        tail = ""
        path = os.path.join(failed[0].run_dir, "train.log")
        if os.path.exists(path):
            tail = "".join(open(path).readlines()[-15:])
        raise FinetuneError(f"{len(failed)} of {total} runs failed (rerun to retry; finished runs "
                            f"are kept). Last lines of {path}:\n{tail}")
    return results
