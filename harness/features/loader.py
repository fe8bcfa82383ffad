"""Background prefetching of feature batches, so the trainer computes while the next batches are read.

    for positions, x in PrefetchingBatches(view.features, sampler.epoch(), device, index_of=view.fit_indices):
        y = labels[positions]; method.train_step(x, y)

A reader thread fills `depth` preallocated host buffers ahead of the consumer (pinned when the
device is CUDA, so the copy to the GPU is asynchronous). On CUDA a float16 store is moved as
float16, half the bytes, and converted on the GPU. On the CPU the yielded tensor *is* a host
buffer: it stays valid until the next batch is requested.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator

import numpy as np
import torch

_DONE = object()


class _Failure:
    def __init__(self, error: BaseException) -> None:
        self.error = error


class PrefetchingBatches:
    """Iterate (positions, features [n, F, R] float32 on `device`) over `batches`, reading ahead.

    `batches` yields index arrays; with `index_of`, the features read are those of
    `index_of[positions]` (e.g. sampler positions -> image ids), and `positions` are yielded as given.
    Iterate once; `close()` (or leaving the loop) stops the reader thread.
    """

    def __init__(self, source, batches: Iterable[np.ndarray], device: str | torch.device = "cpu",
                 depth: int = 2, index_of: np.ndarray | None = None) -> None:
        if depth < 1:
            raise ValueError("depth must be at least 1")
        self.source = source
        self.batches = batches
        self.device = torch.device(device)
        self.depth = depth
        self.index_of = None if index_of is None else np.asarray(index_of)
        cuda = self.device.type == "cuda"
        self._pin = cuda and torch.cuda.is_available()
        raw16 = cuda and hasattr(source, "read_into") and str(getattr(source, "dtype", "")) == "float16"
        self._host_dtype = torch.float16 if raw16 else torch.float32
        slots = depth + 1  # `depth` being filled or ready, one held by the consumer
        self._host: list[torch.Tensor | None] = [None] * slots
        self._events: list = [None] * slots
        self._free: queue.Queue[int] = queue.Queue()
        for slot in range(slots):
            self._free.put(slot)
        self._ready: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._used = False

    def __len__(self) -> int:
        return len(self.batches)  # type: ignore[arg-type]

    def _buffer(self, slot: int, n: int) -> torch.Tensor:
        buf = self._host[slot]
        if buf is None or len(buf) < n:
            shape = (n, self.source.feature_dim, self.source.num_regions)
            buf = torch.empty(shape, dtype=self._host_dtype, pin_memory=self._pin)
            self._host[slot] = buf
        return buf

    def _take_slot(self) -> int | None:
        while not self._stop.is_set():
            try:
                return self._free.get(timeout=0.1)
            except queue.Empty:
                continue
        return None

    def _produce(self) -> None:
        try:
            for positions in self.batches:
                slot = self._take_slot()
                if slot is None:
                    return
                positions = np.asarray(positions)
                indices = positions if self.index_of is None else self.index_of[positions]
                if self._events[slot] is not None:  # the GPU copy out of this buffer must be done
                    self._events[slot].synchronize()
                    self._events[slot] = None
                view = self._buffer(slot, len(indices))[: len(indices)]
                if hasattr(self.source, "read_into"):
                    self.source.read_into(indices, view)
                else:
                    view.copy_(torch.from_numpy(np.ascontiguousarray(self.source.read(indices))))
                self._ready.put((positions, slot, len(indices)))
                if self._stop.is_set():
                    return
            self._ready.put(_DONE)
        except BaseException as err:  # noqa: BLE001 - handed to the consumer, raised there
            self._ready.put(_Failure(err))

    def __iter__(self) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
        if self._used:
            raise RuntimeError("a PrefetchingBatches iterates once; make a new one for the next epoch")
        self._used = True
        self._thread = threading.Thread(target=self._produce, name="feature-prefetch", daemon=True)
        self._thread.start()
        held: int | None = None
        try:
            while True:
                if held is not None:  # the consumer is done with the previous CPU batch
                    self._free.put(held)
                    held = None
                item = self._ready.get()
                if item is _DONE:
                    return
                if isinstance(item, _Failure):
                    raise item.error
                positions, slot, n = item
                host = self._host[slot][:n]
                if self.device.type == "cuda":
                    out = host.to(self.device, non_blocking=True)
                    event = torch.cuda.Event()
                    event.record()
                    self._events[slot] = event
                    self._free.put(slot)
                    yield positions, out.float() if out.dtype != torch.float32 else out
                else:
                    held = slot
                    yield positions, host
        finally:
            self.close()

    def close(self) -> None:
        """Stop the reader thread (it finishes the batch it is reading)."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread.is_alive() and thread is not threading.current_thread():
            thread.join()  # it waits on free slots with a timeout, so it sees the stop flag

    def __enter__(self) -> PrefetchingBatches:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
