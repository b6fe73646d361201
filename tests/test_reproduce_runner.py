"""The runner: jobs packed onto GPUs by memory (real subprocesses, each told its GPU through
CUDA_VISIBLE_DEVICES), the same jobs through submitit's local executor, and `train --seeds`
side by side."""

import json
import sys

from rmnet.reproduce.job import Job
from rmnet.reproduce.runner import Gpu, parse_gpus, run_on_gpus, submit


def _recording_command(record_dir):
    """A job that writes (its GPU, start, end) and sleeps: what the scheduler sees of a run."""

    def command(job, job_file):
        script = (
            "import json, os, sys, time; start = time.time(); time.sleep(0.6); "
            "json.dump([os.environ['CUDA_VISIBLE_DEVICES'], start, time.time()], open(sys.argv[1], 'w'))"
        )
        return [sys.executable, "-c", script, str(record_dir / f"{job.name}.json")]

    return command


def _max_overlap(intervals):
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    return peak


def test_jobs_pack_onto_gpus_by_their_memory_and_the_per_gpu_limit(tmp_path):
    # GPU 0 holds three 3,000 MiB jobs (90% of 10,000), GPU 1 one; nine jobs in all.
    gpus = [Gpu("0", 10_000), Gpu("1", 4_000)]
    jobs = [Job(str(tmp_path / f"r{i}"), (), None, 3_000, f"job{i}") for i in range(9)]
    status = run_on_gpus(
        jobs, gpus, per_gpu=4, command=_recording_command(tmp_path), poll_s=0.05, log=lambda _: None
    )
    assert status == {f"job{i}": 0 for i in range(9)}
    records = [json.loads((tmp_path / f"job{i}.json").read_text()) for i in range(9)]
    by_gpu = {g: [(s, e) for gpu, s, e in records if gpu == g] for g in ("0", "1")}
    assert len(by_gpu["0"]) + len(by_gpu["1"]) == 9 and by_gpu["1"]
    assert _max_overlap(by_gpu["0"]) == 3  # several small runs side by side on the big GPU
    assert _max_overlap(by_gpu["1"]) == 1


def test_a_job_larger_than_every_gpu_runs_alone_and_a_failure_is_reported(tmp_path):
    gpus = [Gpu("0", 1_000)]
    big = Job(str(tmp_path / "a"), (), None, 50_000, "big")
    jobs = [big, Job(str(tmp_path / "b"), (), None, 10, "small")]

    def command(job, job_file):
        return [sys.executable, "-c", f"import sys; sys.exit({int(job.name == 'small')})"]

    status = run_on_gpus(jobs, gpus, per_gpu=4, command=command, poll_s=0.05, log=lambda _: None)
    assert status == {"big": 0, "small": 1}


def test_submitit_local_executor_runs_the_same_jobs(tmp_path, isic_root):
    finished = tmp_path / "done"
    (finished / "report").mkdir(parents=True)
    (finished / "report" / "report.json").write_text("{}")
    bad = Job(
        str(tmp_path / "bad"), ("--data", str(tmp_path / "missing"), "--arch", "small_cnn"), None, 0, "bad"
    )
    jobs = [Job(str(finished), ("--data", str(isic_root)), ("--quiet",), 0, "finished"), bad]
    status = submit(jobs, tmp_path / "submitit", cluster="local", log=lambda _: None)
    assert status == {"finished": 0, "bad": 1}
    assert list((tmp_path / "submitit").glob("*_submitted.pkl"))  # submitit's own job files


def test_train_seeds_go_side_by_side_as_subprocesses_when_gpus_are_given(tmp_path, isic_root):
    from rmnet.config import TrainConfig
    from rmnet.train import repeat

    config = TrainConfig(arch="small_cnn", model_options={"width": 4}, image_size=16, epochs=1,
                         batch_size=8, workers=0, data=str(isic_root))  # fmt: skip
    # The "GPU" is a name only: the subprocesses see CUDA_VISIBLE_DEVICES=none and train on the CPU.
    run_dirs = repeat(config, tmp_path / "runs", [0, 1], progress=False, gpus=[Gpu("none", 100_000)])
    for seed, run_dir in zip([0, 1], run_dirs, strict=True):
        saved = json.loads((run_dir / "config.json").read_text())
        assert saved["seed"] == seed and (run_dir / "checkpoints" / "best.pt").is_file()


def test_gpus_are_read_from_nvidia_smi_and_cuda_visible_devices_is_honoured():
    text = "0, 143771\n1, 143771\n2, 81559\n"
    assert [(g.index, g.memory_mib) for g in parse_gpus(text)] == [("0", 143771), ("1", 143771), ("2", 81559)]
    assert [g.index for g in parse_gpus(text, "2,0")] == ["0", "2"]
    assert parse_gpus("") == []
