"""Background prefetching of feature batches, so the trainer computes while the next batches are read.

    for positions, x in PrefetchingBatches(view.features, sampler.epoch(), device, index_of=view.fit_indices):
        y = labels[positions]; method.train_step(x, y)

A reader thread fills `depth` preallocated host buffers ahead of the consumer (pinned when the
device is CUDA, so the copy to the GPU is asynchronous), reading up to `depth` batches at once. On CUDA a float16 store is moved as
float16, half the bytes, and converted on the GPU. On the CPU the yielded tensor *is* a host
buffer: it stays valid until the next batch is requested.
"""

from __future__ import annotations

import os
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
        self._reads = None
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
                # up to `depth` batches read at once: the reader's threads go on to the next batch's
                # items as the last ones of this batch are read, instead of waiting for them
                self._ready.put((positions, slot, len(indices), self._reads.submit(self._read, indices, view)))
                if self._stop.is_set():
                    return
            self._ready.put(_DONE)
        except BaseException as err:  # noqa: BLE001 - handed to the consumer, raised there
            self._ready.put(_Failure(err))

    def _read(self, indices: np.ndarray, view: torch.Tensor) -> None:
        if hasattr(self.source, "read_into"):
            self.source.read_into(indices, view)
        else:
            view.copy_(torch.from_numpy(np.ascontiguousarray(self.source.read(indices))))

    def __iter__(self) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
        if self._used:
            raise RuntimeError("a PrefetchingBatches iterates once; make a new one for the next epoch")
        self._used = True
        from concurrent.futures import ThreadPoolExecutor

        self._reads = ThreadPoolExecutor(self.depth, thread_name_prefix="feature-prefetch-read")
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
                positions, slot, n, read = item
                read.result()  # its error, if any, is raised here, in order
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
        if self._reads is not None:
            self._reads.shutdown(wait=True)  # the batches being read finish

    def __enter__(self) -> PrefetchingBatches:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---------------------------------------------------------------- resident features

# Automatic residency takes at most this share of the memory it measures (the device's free memory
# on CUDA, available RAM on the CPU): the model, its activations and the evaluation need the rest.
RESIDENT_SHARE = 0.5
_LOAD_CHUNK = 256  # items read per host buffer while loading


def _available_ram() -> int:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def resident_bytes(count: int, source) -> int:
    """Bytes one resident copy of `count` items of `source` takes (float16 for a float16 cache)."""
    return count * source.feature_dim * source.num_regions * _resident_dtype(source).itemsize


def _resident_dtype(source) -> torch.dtype:
    return torch.float16 if str(getattr(source, "dtype", "")) == "float16" else torch.float32


def resident_fits(nbytes: int, device: str | torch.device, share: float = RESIDENT_SHARE,
                  fraction: float = 1.0) -> tuple[bool, str]:
    """Whether `nbytes` of features may stay resident on `device`, and a one-line reason.

    The budget is `share` of the memory there now (CUDA: the device's free memory; CPU: available
    RAM), and at most `share` of `fraction` of the whole device: a trial given a fraction of a GPU
    (Ray's fractional GPUs) keeps to its part even when it starts before the others have taken theirs.
    """
    device = torch.device(device)
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        what = f"{device}'s free memory"
    else:
        free = total = _available_ram()
        what = "available RAM"
    budget = share * min(free, fraction * total)
    part = f" ({fraction:g} of the device)" if fraction < 1 else ""
    gib = f"{nbytes / 2**30:.2f} GiB against {budget / 2**30:.2f} GiB ({share:.0%} of {what}, {free / 2**30:.1f} GiB{part})"
    if nbytes <= budget:
        return True, f"features resident on {device}: {gib}"
    return False, f"features not resident on {device}, read from the cache per batch: {gib} does not fit"


class ResidentFeatures:
    """The features of `indices` (a view's training images) loaded once into one tensor on `device`
    (float16 for a float16 cache, as stored: bitwise the values the cache reader gives), gathered by
    index there: no per-batch read, check or host-to-device copy.

    `batches(...)` takes the place of PrefetchingBatches (same arguments but the source, same
    (positions, float32 features on device) items). Reading goes through `source` (a view's
    RestrictedFeatures checks every index against its splits, the cache checks every CRC32) once.
    """

    def __init__(self, source, indices: np.ndarray, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        self.feature_dim, self.num_regions = source.feature_dim, source.num_regions
        self.dtype = _resident_dtype(source)
        self.row_of = np.full(len(source), -1, dtype=np.int64)
        self.row_of[self.indices] = np.arange(len(self.indices))
        shape = (len(self.indices), self.feature_dim, self.num_regions)
        self.data = torch.empty(shape, dtype=self.dtype, device=self.device)
        self.nbytes = self.data.numel() * self.data.element_size()
        cuda = self.device.type == "cuda"
        host = self.data if not cuda else torch.empty((_LOAD_CHUNK, *shape[1:]), dtype=self.dtype, pin_memory=True)
        for start in range(0, len(self.indices), _LOAD_CHUNK):
            part = self.indices[start : start + _LOAD_CHUNK]
            buf = host[: len(part)] if cuda else self.data[start : start + len(part)]
            if hasattr(source, "read_into"):
                source.read_into(part, buf)
            else:
                buf.copy_(torch.from_numpy(np.ascontiguousarray(source.read(part))))
            if cuda:
                self.data[start : start + len(part)].copy_(buf)  # synchronous: the buffer is reused next
        self._out: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.indices)

    def gather(self, indices: np.ndarray) -> torch.Tensor:
        """float32 [n, F, R] on the device for image `indices` (all resident). On the CPU the result
        is a reused buffer, valid until the next gather (as PrefetchingBatches' batches)."""
        indices = np.asarray(indices, dtype=np.int64)
        rows = self.row_of[indices]
        if (rows < 0).any():
            missing = indices[rows < 0][:5].tolist()
            raise KeyError(f"images {missing} are not among the resident features")
        rows_t = torch.from_numpy(rows)
        if self.device.type == "cuda":
            picked = self.data.index_select(0, rows_t.to(self.device, non_blocking=True))
            return picked.float() if picked.dtype != torch.float32 else picked
        n = len(rows)
        if self._out is None or len(self._out) < n:
            self._out = torch.empty((n, self.feature_dim, self.num_regions), dtype=torch.float32)
        out = self._out[:n]
        if self.dtype == torch.float32:
            torch.index_select(self.data, 0, rows_t, out=out)
        else:
            from harness.features.store import _convert

            for k, row in enumerate(rows.tolist()):  # row by row, in chunks: no intra-op thread hand-offs
                _convert(self.data[row], out[k])
        return out

    def batches(self, batches: Iterable[np.ndarray], index_of: np.ndarray | None = None) -> ResidentBatches:
        return ResidentBatches(self, batches, index_of)


class ResidentBatches:
    """Iterate (positions, features [n, F, R] float32 on the device) like PrefetchingBatches, from a
    ResidentFeatures: `index_of[positions]` (or the positions) are the images gathered."""

    def __init__(self, resident: ResidentFeatures, batches: Iterable[np.ndarray],
                 index_of: np.ndarray | None = None) -> None:
        self.resident = resident
        self.batches = batches
        self.index_of = None if index_of is None else np.asarray(index_of)
        self._used = False

    def __len__(self) -> int:
        return len(self.batches)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
        if self._used:
            raise RuntimeError("a ResidentBatches iterates once; make a new one for the next epoch")
        self._used = True
        for positions in self.batches:
            positions = np.asarray(positions)
            indices = positions if self.index_of is None else self.index_of[positions]
            yield positions, self.resident.gather(indices)

    def close(self) -> None:
        pass

    def __enter__(self) -> ResidentBatches:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def make_resident(source, indices: np.ndarray, device: str | torch.device, mode: str = "auto",
                  share: float = RESIDENT_SHARE, fraction: float = 1.0) -> tuple[ResidentFeatures | None, str]:
    """(ResidentFeatures or None, a one-line reason) for `mode` "auto" (on a CUDA device, resident when
    it fits within `share` of the free memory and of the trial's `fraction` of the device; on the CPU,
    not: the loader's background thread already hides the read there), "on" (resident unless it does
    not fit in 90% of the free memory at all) or "off". Falls back, with the line, when loading runs
    out of device memory (trials that started together took it)."""
    if mode not in ("auto", "on", "off"):
        raise ValueError(f"resident mode must be auto, on or off, got {mode!r}")
    if mode == "off":
        return None, "features read from the cache per batch (resident off)"
    if mode == "auto" and torch.device(device).type != "cuda":
        return None, ("features read from the cache per batch (resident auto: on CUDA devices only; on the CPU "
                      "it saves about 2 ms of a step of 100 ms or more and costs private memory; --resident on)")
    nbytes = resident_bytes(len(indices), source)
    fits, why = resident_fits(nbytes, device, *((share, fraction) if mode == "auto" else (0.9, 1.0)))
    if not fits:
        return None, why
    try:
        return ResidentFeatures(source, indices, device), why
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        return None, f"features not resident on {device}, read from the cache per batch: out of device memory " \
                     f"loading {nbytes / 2**30:.2f} GiB"
