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

log = logging.getLogger(__name__)

QUARTER_TURNS = (0, 90, 180, 270)  # degrees counterclockwise, as torch.rot90 turns (H, W)


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


@dataclass(frozen=True)
class Explanation:
    """A Grad-CAM heat map over the network input, for one class."""

    heatmap: np.ndarray  # (H, W) in [0, 1], the network input's size
    target: int  # the class explained
    probabilities: np.ndarray  # (num_classes,)


@dataclass(frozen=True)
class ModelInfo:
    """What the service says about its model (``GET /healthz``, every prediction)."""

    run: str
    checkpoint: str
    description: str
    fingerprint: str
    code_length: int
    class_names: tuple[str, ...]
    image_size: int
    resize: int
    rm: str | None = None
    k: int | None = None
    hash_bits: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "run": self.run,
            "checkpoint": self.checkpoint,
            "description": self.description,
            "fingerprint": self.fingerprint,
            "code_length": self.code_length,
            "classes": list(self.class_names),
            "image_size": self.image_size,
            "resize": self.resize,
            "rm": self.rm,
            "k": self.k,
            "hash_bits": self.hash_bits,
        }


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
    """A model with its eval transform, serving many threads through one micro-batching worker."""

    def __init__(
        self,
        model: nn.Module,
        transform,
        info: ModelInfo,
        *,
        device: str | torch.device = "cpu",
        max_batch: int = 32,
        forward_batch: int | None = None,
        batch_wait_ms: float = 2.0,
        max_queue: int = 256,
        workers: int = 1,
    ) -> None:
        if not hasattr(model, "forward_codes"):
            raise TypeError(f"{type(model).__name__} has no forward_codes(): the service serves rmnet models")
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        if max_batch < len(QUARTER_TURNS):
            raise ValueError(f"max_batch must be at least {len(QUARTER_TURNS)} (one predict's quarter turns)")
        self.device = torch.device(device)
        self.model = model.eval().to(self.device)
        self.transform, self.info = transform, info
        self.max_batch, self.batch_wait, self.max_queue = max_batch, batch_wait_ms / 1000, max_queue
        self.cam_layer_name, self.cam_layer = _gradcam_layer(self.model, info.image_size, self.device)
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
        """The model of run folder ``run_dir`` (checkpoints/best.pt or last.pt) and its eval transform."""
        from rmnet.data import build_transform
        from rmnet.io import resolve_device
        from rmnet.retrieval.codes import model_fingerprint
        from rmnet.runs import Run, load_checkpoint

        run = Run(run_dir)
        path = run.best_checkpoint if checkpoint == "best" else run.last_checkpoint
        model, config, class_names = load_checkpoint(path)
        info = ModelInfo(
            run=str(run.dir.resolve()),
            checkpoint=str(path.resolve()),
            description=f"{config.arch} rm={config.rm} hash_bits={config.hash_bits} loss={config.loss}",
            fingerprint=model_fingerprint(model),
            code_length=getattr(model, "hash_bits", None) or model.num_features,
            class_names=tuple(class_names),
            image_size=config.image_size,
            resize=config.resize_short_edge(),
            rm=config.rm,
            k=config.k if config.rm else None,
            hash_bits=config.hash_bits,
        )
        transform = build_transform(False, config.image_size, resize=config.resize)
        return cls(model, transform, info, device=resolve_device(device), **options)

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
        return self.transform(image)

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
            images += [torch.rot90(job.x, i, dims=(1, 2)) for i in range(job.images)]
        stacked, step = torch.stack(images).to(self.device), self.forward_batch
        with self._model_lock.shared(), torch.inference_mode():
            outputs = [self.model.forward_codes(stacked[i : i + step]) for i in range(0, len(stacked), step)]
        codes = torch.cat([c for c, _ in outputs]).float().cpu().numpy()
        probabilities = (
            torch.softmax(torch.cat([logits for _, logits in outputs]).float(), dim=1).cpu().numpy()
        )
        start = 0
        for job in batch:
            end = start + job.images
            turns = probabilities[start:end] if job.turns else None
            job.future.set_result(Inference(probabilities[start], codes[start], turns))
            start = end
        with self._stats_lock:
            stats = self.stats
            stats.batches += 1
            stats.requests += len(batch)
            stats.images += len(images)
            stats.largest_batch = max(stats.largest_batch, len(batch))
            stats.requests_per_batch[len(batch)] = stats.requests_per_batch.get(len(batch), 0) + 1

    def _run_explain(self, job: _Job) -> None:
        if not job.future.set_running_or_notify_cancel():
            return
        if self.cam_layer is None:
            raise RuntimeError("this model has no spatial feature map for Grad-CAM")
        from captum.attr import LayerAttribution, LayerGradCam

        x = job.x[None].to(self.device).requires_grad_(True)
        with self._model_lock.exclusive(), torch.inference_mode(False), torch.enable_grad():
            with torch.no_grad():
                probabilities = torch.softmax(self.model(x).float(), dim=1)[0].cpu().numpy()
            target = int(probabilities.argmax()) if job.target is None else job.target
            attribution = LayerGradCam(self.model, self.cam_layer).attribute(
                x, target=target, relu_attributions=True
            )
            size = tuple(x.shape[-2:])
            upsampled = LayerAttribution.interpolate(attribution, size, interpolate_mode="bilinear")
        heatmap = upsampled[0].sum(0).detach().float().cpu().numpy()
        peak = float(heatmap.max())
        heatmap = np.clip(heatmap / peak, 0, 1) if peak > 0 else np.zeros_like(heatmap)
        with self._stats_lock:
            self.stats.explanations += 1
        job.future.set_result(Explanation(heatmap, target, probabilities))


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


def _gradcam_layer(model: nn.Module, image_size: int, device: torch.device) -> tuple[str, nn.Module | None]:
    """The module whose output is the model's last spatial feature map of the image batch itself.

    Found by one dry forward pass: the last module to finish with a (1, C, H, W) output, H·W > 1.
    In an RM model whose region ends the trunk this is the RotationMeanout module (its blocks see the
    k·B rotated copies; RM's output is the realigned, fused map of the B images): the heat map of the
    fused, rotation-equivariant features. In a plain model it is the last block.
    """
    found: list[tuple[str, nn.Module]] = []

    def record(name: str):
        def hook(module: nn.Module, _inputs: Any, output: Any) -> None:
            if isinstance(output, torch.Tensor) and output.dim() == 4 and output.shape[0] == 1:
                if output.shape[-1] * output.shape[-2] > 1:
                    found.append((name, module))

        return hook

    handles = [m.register_forward_hook(record(name)) for name, m in model.named_modules() if name]
    try:
        with torch.inference_mode():
            model(torch.zeros(1, 3, image_size, image_size, device=device))
    finally:
        for handle in handles:
            handle.remove()
    if not found:
        log.warning("no spatial feature map found in %s: /api/explain is unavailable", type(model).__name__)
        return "", None
    return found[-1]


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
