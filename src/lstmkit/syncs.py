"""Count the operations that make the host wait for the accelerator.

Why: on a GPU, a training step that never reads a device value lets Python queue the next
step's kernels while the current ones still run, so the per-step host work of any framework
(Lightning's loop, logging, callbacks) hides behind the GPU's work. Each read — ``loss.item()``,
``bool(mask.any())``, boolean indexing (its output size depends on the data), a device-to-host
copy, a blocking host-to-device copy — drains the queue and exposes that host work again. A plain
PyTorch loop that prints its loss reads once per step; lstmkit's step reads nothing between
logging steps, and :class:`HostSyncCounter` is how the tests hold it there.

On a CUDA run the counter sees the real waits (operations on device tensors, cross-device
copies). On a CPU run nothing waits, so it counts the same data-dependent operations as a
proxy: the ones that *would* wait if their inputs lived on a GPU, and explicit copies to the
host. That lets a 2-core CI machine check the property; ``scripts/bench_gpu.py`` reports the
real count on a GPU. What the CPU stand-in cannot see: ``.tolist()``, ``.numpy()`` and a
``.cpu()`` / ``.to("cpu")`` of a tensor already on the host (PyTorch does not dispatch them),
and copies inside PyTorch's own kernels (``F.ctc_loss`` reads its length tensors on the host).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import lightning as L
import torch
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten

# operations whose result the host needs (a scalar) or whose output size depends on tensor values
_READS = {
    aten._local_scalar_dense.default,  # .item(), float(), int(), bool()
    aten.is_nonzero.default,
    aten.equal.default,
    aten.nonzero.default,
    aten.masked_select.default,
    aten._unique2.default,
    aten.unique_dim.default,
    aten.unique_consecutive.default,
}
_BOOL_INDEXED = {aten.index.Tensor, aten.index_put.default, aten.index_put_.default, aten._index_put_impl_.default}
_COPIES = {aten._to_copy.default, aten.copy_.default}


def _tensors(values: Any) -> list[torch.Tensor]:
    out: list[torch.Tensor] = []
    for value in values:
        if isinstance(value, torch.Tensor):
            out.append(value)
        elif isinstance(value, (list, tuple)):
            out.extend(_tensors(value))
    return out


class HostSyncCounter(TorchDispatchMode):
    """A dispatch mode that counts host-device synchronisations by operation name.

    Use as a context manager around the code to audit; ``counts`` maps an operation name
    (``"_local_scalar_dense"``, ``"nonzero"``, ``"index(bool)"``, ``"copy(d2h)"``...) to how often
    it ran, and ``total`` sums them.

    Args:
        proxy: count data-dependent operations on CPU tensors too (the CPU stand-in for a GPU
            run). ``None`` (default): only when CUDA is not available; on a GPU machine only
            operations on device tensors count, since reading a host tensor waits for nothing.
    """

    def __init__(self, proxy: bool | None = None) -> None:
        super().__init__()
        self.proxy = (not torch.cuda.is_available()) if proxy is None else proxy
        self.counts: Counter[str] = Counter()

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        name = self._classify(func, args, kwargs)
        if name:
            self.counts[name] += 1
        return func(*args, **kwargs)

    def _on_device(self, tensors: list[torch.Tensor]) -> bool:
        return self.proxy or any(t.device.type not in ("cpu", "meta") for t in tensors)

    def _classify(self, func: Any, args: Any, kwargs: dict[str, Any]) -> str | None:
        if func in _READS:
            return func.__name__.split(".")[0] if self._on_device(_tensors(args)) else None
        if func in _BOOL_INDEXED:
            indices = _tensors(args[1:2])
            if any(t.dtype in (torch.bool, torch.uint8) for t in indices) and self._on_device(_tensors(args)):
                return "index(bool)"
            return None
        if func == aten.repeat_interleave.Tensor and kwargs.get("output_size") is None:
            return "repeat_interleave" if self._on_device(_tensors(args)) else None
        if func in _COPIES:
            return self._copy(func, args, kwargs)
        return None

    def _copy(self, func: Any, args: Any, kwargs: dict[str, Any]) -> str | None:
        if func == aten._to_copy.default:
            source, target = args[0].device, kwargs.get("device") or args[0].device
            non_blocking = bool(kwargs.get("non_blocking", False))
            if self.proxy and kwargs.get("device") is not None and torch.device(target).type == "cpu":
                return "copy(d2h)"  # an explicit copy to the host: a device read on a GPU
        else:
            target, source = args[0].device, args[1].device
            non_blocking = bool(args[2] if len(args) > 2 else kwargs.get("non_blocking", False))
        source, target = torch.device(source), torch.device(target)
        if source.type not in ("cpu", "meta") and target.type == "cpu":
            return "copy(d2h)"
        if source.type == "cpu" and target.type not in ("cpu", "meta") and not non_blocking:
            return "copy(h2d, blocking)"
        return None


class SyncAudit(L.Callback):
    """Count host syncs over ``steps`` training batches, from batch ``start`` of the first epoch.

    The window runs from one ``on_train_batch_start`` to a later one, so it covers the whole
    step as Lightning runs it: batch transfer, forward, backward, optimiser, every callback and
    Lightning's own logging. Data loading falls inside it too: on a GPU run its CPU-only work
    does not count; on CPU the stand-in counts it (lstmkit's collates read nothing, but a
    benchmark's hand-made batches may). ``per_step`` is the result;
    the epoch must have ``start + steps + 1`` batches before validation starts.
    """

    def __init__(self, start: int = 2, steps: int = 4, proxy: bool | None = None) -> None:
        self.start, self.steps = start, steps
        self.counter = HostSyncCounter(proxy)
        self.seen = 0
        self._active = False

    @property
    def per_step(self) -> float:
        return self.counter.total / max(self.seen, 1)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if trainer.current_epoch != 0:
            return
        if batch_idx == self.start:
            self.counter.__enter__()
            self._active = True
        elif self._active:
            self.seen = batch_idx - self.start
            if self.seen == self.steps:
                self._stop()

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._active:  # the window must not take in validation
            self._stop()
            raise RuntimeError(f"SyncAudit(start={self.start}, steps={self.steps}) needs an epoch of at "
                               f"least {self.start + self.steps + 1} training batches before validation")

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if self._active:  # a mode left on would go on counting for the rest of the process
            self._stop()

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self._active:
            self._stop()

    def _stop(self) -> None:
        self.counter.__exit__(None, None, None)
        self._active = False
