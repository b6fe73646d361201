"""Run many jobs on the local GPUs, packed by memory, or on a SLURM cluster through submitit.

Locally each job is a subprocess with ``CUDA_VISIBLE_DEVICES`` set to one GPU. A GPU takes a new
job while the jobs on it, by their estimated peak memory, still fit and it runs fewer than
``per_gpu`` of them: one large run per GPU, several small ones side by side. Without a GPU the
jobs run one at a time in this process. ``submit`` hands the same jobs to submitit (SLURM, or
its local executor), one GPU each.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rmnet.reproduce.job import Job, run_job

MEMORY_HEADROOM = 0.9  # of a GPU's memory, for packing by estimate


@dataclass
class Gpu:
    index: str  # as CUDA_VISIBLE_DEVICES names it
    memory_mib: int
    running: list = field(default_factory=list)  # (process, job, its log file)

    def free_mib(self) -> float:
        return self.memory_mib * MEMORY_HEADROOM - sum(job.memory_mib for _, job, _ in self.running)


def local_gpus() -> list[Gpu]:
    """The GPUs this process may use (honouring CUDA_VISIBLE_DEVICES), with their memory."""
    if shutil.which("nvidia-smi") is None:
        return []
    query = ["nvidia-smi", "--query-gpu=index,memory.total", "--format=csv,noheader,nounits"]
    try:
        lines = subprocess.run(query, capture_output=True, text=True, check=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return parse_gpus(lines, os.environ.get("CUDA_VISIBLE_DEVICES"))


def parse_gpus(nvidia_smi: str, visible: str | None = None) -> list[Gpu]:
    """GPUs from ``nvidia-smi --query-gpu=index,memory.total --format=csv,noheader,nounits``
    output, kept to those ``visible`` (CUDA_VISIBLE_DEVICES by index) names when it is set."""
    gpus = []
    for line in nvidia_smi.strip().splitlines():
        index, memory = (part.strip() for part in line.split(",")[:2])
        gpus.append(Gpu(index, int(float(memory))))
    if visible is not None:
        allowed = [v.strip() for v in visible.split(",") if v.strip()]
        gpus = [g for g in gpus if g.index in allowed]
    return gpus


def job_command(job: Job, job_file: Path) -> list[str]:
    """The subprocess that runs ``job`` (its description written to ``job_file``)."""
    job_file.write_text(job.to_json())
    return [sys.executable, "-m", "rmnet.reproduce.job", str(job_file)]


def run_on_gpus(
    jobs: Sequence[Job],
    gpus: Sequence[Gpu],
    *,
    per_gpu: int = 4,
    command: Callable[[Job, Path], list[str]] = job_command,
    poll_s: float = 1.0,
    log: Callable[[str], None] = print,
) -> dict[str, int]:
    """Run ``jobs`` as subprocesses packed onto ``gpus``; returns each job's exit status by name.

    Each job's output goes to ``RUN_DIR.log`` beside its run folder. A job larger than every GPU's
    free memory still runs, alone on a GPU.
    """
    if not gpus:
        raise ValueError("run_on_gpus needs at least one GPU")
    pending, status, total = list(jobs), {}, len(jobs)
    with tempfile.TemporaryDirectory(prefix="rmnet-jobs-") as folder:
        while pending or any(g.running for g in gpus):
            for gpu in gpus:  # collect the finished
                for entry in list(gpu.running):
                    process, job, output = entry
                    if process.poll() is None:
                        continue
                    gpu.running.remove(entry)
                    output.close()
                    status[job.name] = process.returncode
                    verdict = "done" if process.returncode == 0 else f"FAILED (see {output.name})"
                    log(f"[{len(status)}/{total}] {verdict}: {job.name} (GPU {gpu.index})")
            while pending:
                job = pending[0]
                fits = [g for g in gpus if len(g.running) < per_gpu
                        and (g.free_mib() >= job.memory_mib or not g.running)]  # fmt: skip
                if not fits:
                    break
                gpu = max(fits, key=Gpu.free_mib)
                argv = command(pending.pop(0), Path(folder) / f"job-{total - len(pending)}.json")
                log_path = Path(job.run_dir).with_name(Path(job.run_dir).name + ".log")
                log_path.parent.mkdir(parents=True, exist_ok=True)
                output = open(log_path, "a")  # noqa: SIM115 - closed when the job ends
                env = os.environ | {"CUDA_VISIBLE_DEVICES": gpu.index}
                process = subprocess.Popen(argv, env=env, stdout=output, stderr=subprocess.STDOUT)
                gpu.running.append((process, job, output))
                log(f"start: {job.name} on GPU {gpu.index} ({len(gpu.running)} there)")
            if pending or any(g.running for g in gpus):
                time.sleep(poll_s)
    return status


def run_here(jobs: Sequence[Job], log: Callable[[str], None] = print) -> dict[str, int]:
    """Run ``jobs`` one after another in this process (a CPU-only machine); a failed run is
    reported and the next one starts."""
    status = {}
    for number, job in enumerate(jobs, 1):
        log(f"[{number}/{len(jobs)}] {job.name}")
        try:
            run_job(job)
            status[job.name] = 0
        except (Exception, SystemExit) as err:  # noqa: BLE001 - one broken run must not stop the grid
            log(f"FAILED: {job.name}: {err}")  # (SystemExit: rmnet train refused its arguments)
            status[job.name] = 1
    return status


def submit(
    jobs: Sequence[Job],
    folder: str | os.PathLike,
    *,
    cluster: str | None = None,
    timeout_min: int = 24 * 60,
    partition: str | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, int]:
    """Submit ``jobs`` through submitit, one GPU each, and wait: ``cluster`` None picks SLURM when
    it is there, "local" runs them as local processes (how the tests run it)."""
    try:
        import submitit
    except ImportError:
        raise ValueError("--executor slurm needs submitit: pip install 'rmnet[cluster]'") from None
    executor = submitit.AutoExecutor(folder=str(folder), cluster=cluster)
    options: dict = dict(timeout_min=timeout_min, nodes=1, tasks_per_node=1)
    if executor.cluster == "slurm":
        options |= dict(gpus_per_node=1, cpus_per_task=8) | (
            {"slurm_partition": partition} if partition else {}
        )
    executor.update_parameters(**options)
    submitted = [(job, executor.submit(run_job, job)) for job in jobs]
    for job, handle in submitted:
        log(f"submitted: {job.name} (job {handle.job_id})")
    status = {}
    for job, handle in submitted:
        try:
            handle.result()
            status[job.name] = 0
        except Exception as err:  # noqa: BLE001 - submitit re-raises the job's error of any kind
            log(f"FAILED: {job.name}: {str(err).strip().splitlines()[-1] if str(err).strip() else err!r}")
            status[job.name] = 1
    return status
