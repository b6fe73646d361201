"""The inference engine of the service: one model, worker threads, requests batched together.

Every request hands its image tensor to :meth:`InferenceEngine.infer` and gets a
``concurrent.futures.Future``; the event loop awaits it (``asyncio.wrap_future``) and never runs the
model itself. Worker threads ("rmnet-inference-N"; ``rmnet serve`` picks how many) run the model.
Each worker:

- it takes the oldest waiting request, then the other waiting requests that fit in one forward
  pass (``forward_batch`` images, at least one predict: a predict counts 4, its quarter turns), and
  runs them as one forward pass. Requests that arrive meanwhile form the next batch.
- ``forward_batch`` is measured when the engine starts (:meth:`InferenceEngine.tune`): the batch
  size with the lowest time per image on this machine, from 4 (one predict) up to ``max_batch``.
  Bigger is not always better on a CPU: the demo's small RM CNN takes 0.3 ms per image in batches
  of 4 but 0.55 ms in batches of 8, once the k·B rotated copies no longer fit in the cache. And a
  batch gathers no more than one pass: results go back as soon as their pass is done, so the HTTP
  side keeps working while the model runs (benchmarks/service_load.py, docs/service.md).
- When a request is alone but others are known to be on their way (announced with
  :meth:`arriving` while their upload is decoded), it waits up to ``batch_wait_ms`` for them; a
  lone client never waits.
- Grad-CAM (:meth:`explain`) runs on a worker too, alone: captum puts hooks on the model's layer,
  which must not fire during another request's forward pass, so an explanation holds the model
  exclusively while batches share it (a readers-writer lock).

With several workers (``workers``), forward passes run in parallel on the shared model (inference
reads the weights, never writes them), each on ``torch.get_num_threads()`` threads.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from rmnet.api import QUARTER_TURNS, Explanation, ModelInfo, RunModel, load_run, quarter_turns

__all__ = [  # Explanation, ModelInfo and QUARTER_TURNS live in rmnet.api; imported from here too
    "QUARTER_TURNS",
    "EngineBusyError",
    "EngineClosedError",
    "Explanation",
    "Inference",
    "InferenceEngine",
    "ModelInfo",
    "heatmap_overlay",
]

log = logging.getLogger(__name__)


class EngineBusyError(RuntimeError):
    """More requests wait for the model than ``max_queue``: the client should retry later (503)."""


class EngineClosedError(RuntimeError):
    """The engine was closed (the service is shutting down)."""


@dataclass(frozen=True)
class Inference:
    """What the model says about one image."""

    probabilities: np.ndarray  # (num_classes,) of the image as uploaded (upright)
    code: np.ndarray  # (code_length,) retrieval code of the upright image
    turns: np.ndarray | None = None  # (4, num_classes): probabilities at 0°, 90°, 180°, 270°


@dataclass
class _Job:
    kind: str  # "infer" or "explain"
    x: torch.Tensor  # (C, H, W)
    future: Future
    turns: bool = False
    target: int | None = None

    @property
    def images(self) -> int:
        return len(QUARTER_TURNS) if self.turns else 1


@dataclass
class Arrival:
    """A request on its way to the engine (see :meth:`InferenceEngine.arriving`)."""

    engine: InferenceEngine
    submitted: bool = False


@dataclass
class EngineStats:
    batches: int = 0
    requests: int = 0
    images: int = 0
    explanations: int = 0
    largest_batch: int = 0
    requests_per_batch: dict[int, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        mean = self.requests / self.batches if self.batches else 0.0
        return {
            "batches": self.batches,
            "requests": self.requests,
            "images": self.images,
            "explanations": self.explanations,
            "mean_requests_per_batch": round(mean, 3),
            "largest_batch_requests": self.largest_batch,
            "requests_per_batch": dict(sorted(self.requests_per_batch.items())),
        }


class InferenceEngine:
    """A :class:`~rmnet.api.RunModel` serving many threads through micro-batching worker threads.

    The forward passes and Grad-CAM are the RunModel's own (:meth:`RunModel.forward`,
    :meth:`RunModel.gradcam`), so the service answers exactly as ``rmnet.load_run(run).predict``.
    """

    def __init__(
        self,
        model: RunModel | nn.Module,
        transform=None,
        info: ModelInfo | None = None,
        *,
        device: str | torch.device | None = None,
        max_batch: int = 32,
        forward_batch: int | None = None,
        batch_wait_ms: float = 2.0,
        max_queue: int = 256,
        workers: int = 1,
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        if max_batch < len(QUARTER_TURNS):
            raise ValueError(f"max_batch must be at least {len(QUARTER_TURNS)} (one predict's quarter turns)")
        if not isinstance(model, RunModel):  # a bare model (tests, benchmarks): wrapped with its info
            if info is None:
                raise TypeError("a bare model needs its ModelInfo: InferenceEngine(model, transform, info)")
            model = RunModel(
                model,
                class_names=info.class_names,
                image_size=info.image_size,
                resize=info.resize,
                transform=transform,
                device=device or "cpu",
                info=info,
            )
        elif device is not None and torch.device(device) != model.device:
            raise ValueError(f"the RunModel is on {model.device}, not {device}: load it there")
        self.run_model = model
        self.device, self.model, self.info = model.device, model.model, model.info
        self.max_batch, self.batch_wait, self.max_queue = max_batch, batch_wait_ms / 1000, max_queue
        self.cam_layer_name, self.cam_layer = model.cam_layer_name, model.cam_layer
        self.torch_threads = torch.get_num_threads()
        self.forward_times: dict[int, float] = {}  # batch size → seconds per forward pass (tune())
        self.forward_batch = forward_batch or self.tune()
        # requests gathered per batch: one forward pass, or one predict when a pass is smaller
        self.gather_limit = min(self.max_batch, max(self.forward_batch, len(QUARTER_TURNS)))
        self.stats = EngineStats()
        self._stats_lock = threading.Lock()
        self._model_lock = _SharedExclusiveLock()
        self._queue: deque[_Job] = deque()
        self._arriving = 0
        self._closed = False
        self._cond = threading.Condition()
        self.workers = [
            threading.Thread(target=self._run, name=f"rmnet-inference-{i}", daemon=True)
            for i in range(workers)
        ]
        for worker in self.workers:
            worker.start()

    @classmethod
    def from_run(
        cls, run_dir: str | os.PathLike, *, checkpoint: str = "best", device: str = "auto", **options: Any
    ) -> InferenceEngine:
        """The model of run folder ``run_dir`` (checkpoints/best.pt or last.pt): ``rmnet.load_run``."""
        return cls(load_run(run_dir, checkpoint=checkpoint, device=device), **options)

    def tune(self, budget_s: float = 3.0) -> int:
        """The forward batch size (a power of two from 4 up to ``max_batch``) with the lowest time per
        image; never below 4, so that a predict's four quarter turns share one pass.

        Each size runs 5 times on a dummy batch (the median kept: some sizes are fast only now and
        then, when their copies happen to stay in the cache); a larger size must be 10 % cheaper
        per image to win, and the search stops once the cost per image doubles or after
        ``budget_s``. Runs before the worker starts, so nothing else uses the model meanwhile.
        """
        size = self.info.image_size
        with torch.inference_mode():
            self.model.forward_codes(torch.zeros(1, 3, size, size, device=self.device))  # warm-up
            first = len(QUARTER_TURNS)
            best, best_cost, started, batch = first, float("inf"), time.perf_counter(), first
            while batch <= self.max_batch:
                x = torch.zeros(batch, 3, size, size, device=self.device)
                times = []
                for _ in range(5):
                    begin = time.perf_counter()
                    self.model.forward_codes(x)
                    times.append(time.perf_counter() - begin)
                self.forward_times[batch] = float(np.median(times))
                cost = self.forward_times[batch] / batch
                if cost < 0.9 * best_cost:
                    best, best_cost = batch, cost
                elif cost > 2 * best_cost or time.perf_counter() - started > budget_s:
                    break
                batch *= 2
        log.info("forward batch %d (seconds per pass by batch size: %s)", best, self.forward_times)
        return best

    # -- what requests call (any thread) ---------------------------------------------------------

    def prepare(self, image: Image.Image) -> torch.Tensor:
        """The network input (3, S, S) of an upright RGB image: the run's eval transform."""
        return self.run_model.transform(image)

    @contextlib.contextmanager
    def arriving(self) -> Iterator[Arrival]:
        """Announce a request that will call :meth:`infer` soon (its image is being decoded), so that
        a batch starting now waits for it (up to ``batch_wait_ms``) instead of leaving without it."""
        arrival = Arrival(self)
        with self._cond:
            self._arriving += 1
        try:
            yield arrival
        finally:
            if not arrival.submitted:
                with self._cond:
                    self._arriving -= 1
                    self._cond.notify_all()

    def infer(self, x: torch.Tensor, *, turns: bool = False, arrival: Arrival | None = None) -> Future:
        """Future of an :class:`Inference` of network input ``x`` (3, S, S); with ``turns``, also the
        probabilities of its four quarter turns (one batch of 4)."""
        return self._submit(_Job("infer", x, Future(), turns=turns), arrival)

    def explain(self, x: torch.Tensor, target: int | None = None) -> Future:
        """Future of an :class:`Explanation`: captum's LayerGradCam for class ``target`` (default:
        the predicted class) at the last feature map before global pooling."""
        if target is not None and not 0 <= target < len(self.info.class_names):
            raise ValueError(f"no class {target}")
        return self._submit(_Job("explain", x, Future(), target=target), None)

    def close(self) -> None:
        """Stop the worker after the batch it is running; waiting requests fail with EngineClosedError."""
        with self._cond:
            self._closed = True
            waiting, self._queue = list(self._queue), deque()
            self._cond.notify_all()
        for job in waiting:
            if job.future.set_running_or_notify_cancel():
                job.future.set_exception(EngineClosedError("the service is shutting down"))
        for worker in self.workers:
            worker.join(timeout=30)

    def _submit(self, job: _Job, arrival: Arrival | None) -> Future:
        with self._cond:
            if arrival is not None and not arrival.submitted:
                arrival.submitted = True
                self._arriving -= 1
            if self._closed:
                raise EngineClosedError("the service is shutting down")
            if len(self._queue) >= self.max_queue:
                waiting = len(self._queue)
                raise EngineBusyError(f"{waiting} requests are waiting for the model; try again shortly")
            self._queue.append(job)
            self._cond.notify_all()
        return job.future

    # -- the worker threads ----------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                first = self._queue.popleft()
                batch = [first] if first.kind == "infer" else []
                if batch:
                    self._gather(batch)
            try:
                if batch:
                    self._run_batch(batch)
                else:
                    self._run_explain(first)
            except Exception as err:  # noqa: BLE001 - fail these requests, keep serving the others
                log.exception("inference failed")
                for job in batch or [first]:
                    if not job.future.done():
                        job.future.set_exception(err)

    def _gather(self, batch: list[_Job]) -> None:
        """Add waiting requests to ``batch`` (lock held): all that fit now, then, while requests are
        announced but not yet submitted, those that come within ``batch_wait`` seconds."""
        size = batch[0].images
        deadline = time.monotonic() + self.batch_wait
        while True:
            while self._queue and self._queue[0].kind == "infer":
                if size + self._queue[0].images > self.gather_limit:
                    return
                job = self._queue.popleft()
                batch.append(job)
                size += job.images
            if self._queue or self._arriving == 0 or size >= self.gather_limit or self._closed:
                return  # an explanation is next, nobody else is coming, or the batch is full
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._cond.wait(remaining)

    def _run_batch(self, batch: list[_Job]) -> None:
        batch = [job for job in batch if job.future.set_running_or_notify_cancel()]
        if not batch:
            return
        images = []
        for job in batch:
            images.append(quarter_turns(job.x[None]) if job.turns else job.x[None])
        stacked = torch.cat(images)
        with self._model_lock.shared():
            out = self.run_model.forward(stacked, batch_size=self.forward_batch)
        start = 0
        for job in batch:
            end = start + job.images
            turns = out.probabilities[start:end] if job.turns else None
            job.future.set_result(Inference(out.probabilities[start], out.codes[start], turns))
            start = end
        with self._stats_lock:
            stats = self.stats
            stats.batches += 1
            stats.requests += len(batch)
            stats.images += len(stacked)
            stats.largest_batch = max(stats.largest_batch, len(batch))
            stats.requests_per_batch[len(batch)] = stats.requests_per_batch.get(len(batch), 0) + 1

    def _run_explain(self, job: _Job) -> None:
        if not job.future.set_running_or_notify_cancel():
            return
        with self._model_lock.exclusive():
            explanation = self.run_model.gradcam(job.x, job.target)
        with self._stats_lock:
            self.stats.explanations += 1
        job.future.set_result(explanation)


class _SharedExclusiveLock:
    """A readers-writer lock: any number of shared holders, or one exclusive holder. A waiting
    exclusive request stops new shared ones, so an explanation is not starved by a busy queue."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._shared = 0
        self._exclusive = False
        self._waiting_exclusive = 0

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            while self._exclusive or self._waiting_exclusive:
                self._cond.wait()
            self._shared += 1
        try:
            yield
        finally:
            with self._cond:
                self._shared -= 1
                self._cond.notify_all()

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            self._waiting_exclusive += 1
            while self._exclusive or self._shared:
                self._cond.wait()
            self._waiting_exclusive -= 1
            self._exclusive = True
        try:
            yield
        finally:
            with self._cond:
                self._exclusive = False
                self._cond.notify_all()


def heatmap_overlay(
    image: Image.Image, heatmap: np.ndarray, *, resize: int, image_size: int, max_side: int = 512
) -> bytes:
    """PNG of the part of ``image`` the network saw (the eval transform's centre crop, in the
    original's resolution, at most ``max_side`` px) with ``heatmap`` drawn over it (jet colours,
    opacity growing with the heat)."""
    from matplotlib import colormaps

    width, height = image.size
    side = image_size * min(width, height) / resize  # the crop, in the original image's pixels
    left, top = (width - side) / 2, (height - side) / 2
    display = int(min(max_side, max(256, round(side))))
    crop = image.crop((round(left), round(top), round(left + side), round(top + side)))
    crop = crop.resize((display, display), Image.Resampling.BICUBIC)
    heat = Image.fromarray((heatmap * 255).astype(np.uint8))
    heat = np.asarray(heat.resize((display, display), Image.Resampling.BILINEAR), np.float32) / 255
    colours = colormaps["jet"](heat)[..., :3]
    alpha = (0.65 * heat**0.75)[..., None]
    blended = (1 - alpha) * (np.asarray(crop, np.float32) / 255) + alpha * colours
    out = io.BytesIO()
    Image.fromarray((blended * 255).round().astype(np.uint8)).save(out, "PNG")
    return out.getvalue()
