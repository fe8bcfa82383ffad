"""One DAZLE training step, ours against the authors' formulation, side by side in one process.

A step is what the trainer does per batch: forward, the paper's loss (models/losses.py, lambda
0.1, self-calibration), backward, RMSprop with the authors' settings (lr 1e-4, momentum 0.9,
weight decay 1e-4). Both steps run on the same batches with the same parameter values, at the
shapes of DeepFashion, CUB and SUN (batch 50, 2048-d features over 7x7 regions, 300-d word
vectors). Repetitions are interleaved (ours, reference, a dense matmul probe; the order flips
every repetition) so that the noise of a shared machine hits both alike; the table reports
medians, the speed-up as the ratio of medians with the range of the per-repetition ratios, the
analytic FLOPs of each formulation, the matmul rate measured in the same loop, and the fraction
of it that our step achieves.

    python bench/train_step.py                          # CPU, fp32, all three shapes
    python bench/train_step.py --shapes deepfashion --repeats 9
    python bench/train_step.py --device cuda --amp bf16   # on a GPU
    python bench/train_step.py --thread-layouts 1x2,2x1   # trials x threads on this node
    python bench/train_step.py --threads 1 --clock cpu --profile   # where our step's time goes, by operator

FLOP counting: multiply-adds of every matrix product count 2 (elementwise work, softmax and
the optimiser are left out). "exact" counts the forward and backward products autograd really
runs: the region features need no gradient, so a product with them costs one more GEMM in the
backward pass, not two. The convention "3x fwd" counts forward + backward as 3x the forward.

Run from the repository root with the project installed (`pip install -e .`), as
`python bench/train_step.py`: it imports the project's packages as installed.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing as mp
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from models.dazle import DAZLE
from models.dazle_reference import ReferenceDAZLE
from models.losses import dazle_loss


@dataclass(frozen=True)
class Shape:
    name: str
    attributes: int
    classes: int
    seen: int


SHAPES = {
    "deepfashion": Shape("deepfashion", 1000, 46, 36),
    "cub": Shape("cub", 312, 200, 150),
    "sun": Shape("sun", 102, 717, 645),
}


# ------------------------------------------------------------------ analytic FLOPs


@dataclass(frozen=True)
class Dims:
    B: int  # batch
    F: int  # feature dim
    R: int  # regions
    D: int  # word-vector dim
    A: int  # attributes
    C: int  # classes

    @property
    def N(self) -> int:  # region columns of a batch
        return self.B * self.R


def _alpha_part(d: Dims, order: str) -> tuple[float, float]:
    """(forward, backward) flops of the attention logits v_a^T W_alpha f_r."""
    if order == "D":  # W_alpha f first, then V
        return 2 * d.D * d.F * d.N + 2 * d.A * d.D * d.N, 2 * d.D * d.F * d.N + 4 * d.A * d.D * d.N
    # V W_alpha first, then the regions
    return 2 * d.A * d.D * d.F + 2 * d.A * d.F * d.N, 2 * d.A * d.F * d.N + 4 * d.A * d.D * d.F


def _score_part(d: Dims, order: str) -> tuple[float, float]:
    """(forward, backward) flops of e and beta (two slabs)."""
    if order == "D":  # W_e f, W_beta f, then V: the word-vector route
        return 4 * d.D * d.F * d.N + 4 * d.A * d.D * d.N, 4 * d.D * d.F * d.N + 8 * d.A * d.D * d.N
    if order == "A":  # V W_e and V W_beta, then the regions: per-region projections
        return 4 * d.A * d.D * d.F + 4 * d.A * d.F * d.N, 4 * d.A * d.F * d.N + 8 * d.A * d.D * d.F
    # "h": h = sum_r alpha f_r built once [B, A, F], then e and beta as row dots with V W_e, V W_beta
    bah = d.B * d.A * d.F
    return 2 * d.A * d.F * d.N + 4 * d.A * d.D * d.F + 4 * bah, 2 * d.A * d.F * d.N + 8 * bah + 8 * d.A * d.D * d.F


ORDERS = {  # name -> (attention logits order, e/beta order)
    "ours, through D": ("D", "D"),
    "ours, through A": ("A", "A"),
    "reference (h built)": ("A", "h"),
    "h built, logits through D": ("D", "h"),
}


def step_flops(d: Dims, order: str) -> tuple[float, float]:
    """(forward, exact forward + backward) flops of one training step in `order` (trainable V)."""
    alpha, scores = _alpha_part(d, ORDERS[order][0]), _score_part(d, ORDERS[order][1])
    classes = (2 * d.B * d.A * d.C, 2 * d.B * d.A * d.C)  # eq. 7 and its gradient
    forward = alpha[0] + scores[0] + classes[0]
    return forward, forward + alpha[1] + scores[1] + classes[1]


def our_order(d: Dims) -> str:
    return "ours, through D" if d.A > d.D else "ours, through A"  # DAZLE(contraction="auto"), the default


def cheapest_order(d: Dims) -> str:
    return min(ORDERS, key=lambda o: step_flops(d, o)[1])


# ------------------------------------------------------------------ the two steps


def make_models(shape: Shape, args: argparse.Namespace, device: torch.device) -> tuple[DAZLE, ReferenceDAZLE]:
    gen = torch.Generator().manual_seed(0)
    model = DAZLE(
        class_semantics=torch.rand(shape.classes, shape.attributes, generator=gen),
        attribute_semantics=torch.randn(shape.attributes, args.word_dim, generator=gen),
        seen_classes=torch.arange(shape.seen),
        unseen_classes=torch.arange(shape.seen, shape.classes),
        feature_dim=args.feature_dim,
    )
    with torch.no_grad():  # as after some training: attention and gates not at their zero init
        model.W_alpha.normal_(0.0, 0.05, generator=gen)
        model.W_beta.normal_(0.0, 0.05, generator=gen)
    model.to(device)
    return model, ReferenceDAZLE.from_model(model).to(device)


def make_step(module: torch.nn.Module, shape: Shape, args: argparse.Namespace,
              device: torch.device) -> Callable[[torch.Tensor, torch.Tensor], None]:
    """forward, paper loss, backward, RMSprop: the trainer's step for `module` (ours or reference)."""
    params = [p for p in module.parameters() if p.requires_grad]
    opt = torch.optim.RMSprop(params, lr=1e-4, momentum=0.9, weight_decay=1e-4)
    margin = torch.full((shape.classes,), -1.0, device=device)
    margin[shape.seen:] = 1.0
    seen = torch.arange(shape.seen, device=device)
    unseen = torch.arange(shape.seen, shape.classes, device=device)
    forward = torch.compile(module) if args.compile and isinstance(module, DAZLE) else module
    amp = (torch.autocast(device.type, dtype=torch.bfloat16) if args.amp == "bf16"
           else contextlib.nullcontext())

    def step(features: torch.Tensor, labels: torch.Tensor) -> None:
        with amp:
            out = forward(features)
            scores = out["scores"] if isinstance(out, dict) else out.scores
            total, _, _ = dazle_loss(scores.float(), labels, margin=margin, seen_classes=seen,
                                     unseen_classes=unseen, lam=0.1)
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()

    return step


class Batches:
    """A few host batches reused in turn; on a GPU pinned and copied without blocking, as the loader does."""

    def __init__(self, shape: Shape, args: argparse.Namespace, device: torch.device, count: int = 3) -> None:
        gen = torch.Generator().manual_seed(1)
        self.device = device
        self.host = [torch.rand(args.batch, args.feature_dim, args.regions, generator=gen) for _ in range(count)]
        self.labels = [torch.randint(0, shape.seen, (args.batch,), generator=gen) for _ in range(count)]
        if device.type == "cuda":
            self.host = [x.pin_memory() for x in self.host]
            self.labels = [y.pin_memory() for y in self.labels]
        self.i = 0

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        self.i = (self.i + 1) % len(self.host)
        x, y = self.host[self.i], self.labels[self.i]
        return x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


CLOCK = time.perf_counter  # --clock cpu: time.process_time, this process's CPU seconds (all its threads)


def timed(fn: Callable[[], None], device: torch.device) -> float:
    _sync(device)
    start = CLOCK()
    fn()
    _sync(device)
    return CLOCK() - start


class MatmulProbe:
    """A dense GEMM the size of our step's largest ([B*R, F] x [F, 3D]), in the step's precision."""

    def __init__(self, args: argparse.Namespace, device: torch.device) -> None:
        dtype = torch.bfloat16 if args.amp == "bf16" else torch.float32
        n = args.batch * args.regions
        self.a = torch.randn(n, args.feature_dim, device=device, dtype=dtype)
        self.b = torch.randn(args.feature_dim, 3 * args.word_dim, device=device, dtype=dtype)
        self.flops = 2 * n * args.feature_dim * 3 * args.word_dim
        self.device = device

    def rate(self) -> float:
        """GFLOP/s of the best of three back-to-back products."""
        return self.flops / min(timed(lambda: self.a @ self.b, self.device) for _ in range(3)) / 1e9

    def sustained_rate(self, seconds: float) -> float:
        """GFLOP/s over back-to-back products for about `seconds` (as long as a step): a diagnostic of
        --profile, since the best of three short products may run at a clock a long step does not hold."""
        count = max(1, round(seconds * self.rate() * 1e9 / self.flops))
        return count * self.flops / timed(lambda: [self.a @ self.b for _ in range(count)], self.device) / 1e9

    def cold_rate(self) -> float:
        """GFLOP/s of one product after a 64 MiB write has pushed its operands out of the caches
        (a diagnostic of --profile: the step's GEMMs read operands that other passes evicted)."""
        torch.empty(16 * 2**20, device=self.device).fill_(1.0)
        return self.flops / timed(lambda: self.a @ self.b, self.device) / 1e9


@dataclass
class Row:
    shape: Shape
    ref_s: list[float]
    ours_s: list[float]
    rates: list[float]


def measure(shape: Shape, args: argparse.Namespace, device: torch.device, progress) -> Row:
    model, reference = make_models(shape, args, device)
    steps = {"ours": make_step(model, shape, args, device), "reference": make_step(reference, shape, args, device)}
    batches = Batches(shape, args, device)
    probe = MatmulProbe(args, device)
    for _ in range(args.warmup):
        for step in steps.values():
            timed(lambda step=step: step(*batches.next()), device)
        probe.rate()
    times: dict[str, list[float]] = {"ours": [], "reference": []}
    rates = []
    for rep in range(args.repeats):
        order = ["ours", "reference"] if rep % 2 == 0 else ["reference", "ours"]
        for name in order:
            x, y = batches.next()
            times[name].append(timed(lambda name=name, x=x, y=y: steps[name](x, y), device))
        rates.append(probe.rate())
        progress.update(1)
    return Row(shape, times["reference"], times["ours"], rates)


# ------------------------------------------------------------------ report


def _fmt_flops(d: Dims, order: str) -> str:
    fwd, exact = step_flops(d, order)
    return f"{exact / 1e9:.1f} ({3 * fwd / 1e9:.1f})"


def table(rows: list[Row], args: argparse.Namespace) -> str:
    head = ["shape", "A", "C", "reference ms", "ours ms", "speed-up [pair range]", "ref GFLOP",
            "ours GFLOP", "cheapest GFLOP", "matmul GFLOP/s", "achieved, cheapest", "achieved, own"]
    lines = []
    for row in rows:
        s = row.shape
        d = Dims(args.batch, args.feature_dim, args.regions, args.word_dim, s.attributes, s.classes)
        ref_ms, ours_ms = statistics.median(row.ref_s) * 1e3, statistics.median(row.ours_s) * 1e3
        pairs = [r / o for r, o in zip(row.ref_s, row.ours_s, strict=True)]
        rate = statistics.median(row.rates)
        mine, cheap = our_order(d), cheapest_order(d)
        frac_cheap = step_flops(d, cheap)[1] / (ours_ms / 1e3) / 1e9 / rate
        frac_own = step_flops(d, mine)[1] / (ours_ms / 1e3) / 1e9 / rate
        lines.append([
            s.name, str(s.attributes), str(s.classes), f"{ref_ms:.1f}", f"{ours_ms:.1f}",
            f"{ref_ms / ours_ms:.2f}x [{min(pairs):.2f}-{max(pairs):.2f}]",
            _fmt_flops(d, "reference (h built)"), f"{_fmt_flops(d, mine)} {mine.split(', ')[1]}",
            f"{_fmt_flops(d, cheap)} {cheap}", f"{rate:.0f}", f"{100 * frac_cheap:.0f}%", f"{100 * frac_own:.0f}%",
        ])
    widths = [max(len(h), *(len(r[i]) for r in lines)) for i, h in enumerate(head)]
    fmt = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"  # noqa: E731
    out = [fmt(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(fmt, lines)]
    return "\n".join(out)


def _cpu_name() -> str:
    """The CPU's model name, family and model (Linux), so that runs on different hosts are not compared unawares."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "cpu family", "model") and key.strip() not in fields:
                    fields[key.strip()] = value.strip()
                if not line.strip() and fields:  # the first processor's block is enough
                    break
    except OSError:
        return "unknown CPU"
    return f"{fields.get('model name', 'unknown CPU')}, family {fields.get('cpu family', '?')} model {fields.get('model', '?')}"


def describe(args: argparse.Namespace, device: torch.device) -> str:
    what = f"device {device}"
    if device.type == "cuda":
        what += f" ({torch.cuda.get_device_name(device)})"
    else:
        what += f" ({_cpu_name()}, {os.cpu_count()} cores)"
    return (f"torch {torch.__version__}, {what}, {torch.get_num_threads()} threads, "
            f"{'bf16 autocast' if args.amp == 'bf16' else 'fp32'}{', torch.compile' if args.compile else ''}, "
            f"{'CPU' if args.clock == 'cpu' else 'wall'} time; "
            f"batch {args.batch}, F={args.feature_dim}, R={args.regions}, D={args.word_dim}; "
            f"{args.repeats} interleaved repetitions after {args.warmup} warm-up")


# ------------------------------------------------------------------ profile by operation

GEMMS = ("mm", "addmm", "addmm_", "bmm", "baddbmm")


def _gemm_flops(name: str, shapes: tuple[tuple[int, ...], ...]) -> float:
    """2 m n k of a matrix product from its input shapes (addmm: the added matrix first)."""
    a, b = (shapes[0], shapes[1]) if name in ("mm", "bmm") else (shapes[1], shapes[2])
    return 2.0 * (a[0] if len(a) == 3 else 1) * a[-2] * a[-1] * b[-1]


class OpTimer(TorchDispatchMode):
    """Times every ATen operator of the forward, backward and optimiser on the bench's clock.

    torch.profiler reports wall time, which on a shared machine counts other processes' time
    against whichever operator was running; with --clock cpu this counts this process's CPU
    time, like the table. Keyed by operator, and for GEMMs by operator and input shapes.
    """

    def __init__(self, device: torch.device) -> None:
        super().__init__()
        self.device = device
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self.gemms: dict[tuple[str, tuple], float] = {}
        self.gemm_calls: dict[tuple[str, tuple], int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        _sync(self.device)
        start = CLOCK()
        out = func(*args, **(kwargs or {}))
        _sync(self.device)
        took = CLOCK() - start
        name = func.overloadpacket.__name__
        self.seconds[name] = self.seconds.get(name, 0.0) + took
        self.calls[name] = self.calls.get(name, 0) + 1
        if name in GEMMS:
            key = (name, tuple(tuple(a.shape) for a in args if isinstance(a, torch.Tensor)))
            self.gemms[key] = self.gemms.get(key, 0.0) + took
            self.gemm_calls[key] = self.gemm_calls.get(key, 0) + 1
        return out


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    fmt = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"  # noqa: E731
    return [fmt(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(fmt, rows)]


def profile(shape: Shape, args: argparse.Namespace, device: torch.device) -> str:
    """Our step at `shape`, timed by operator over --repeats steps, each GEMM against the matmul probe."""
    model, _ = make_models(shape, args, device)
    step, batches, probe = make_step(model, shape, args, device), Batches(shape, args, device), MatmulProbe(args, device)
    for _ in range(args.warmup + 2):
        step(*batches.next())
    plain, rates, cold, sustained, timer = [], [], [], [], OpTimer(device)
    for _ in range(args.repeats):
        plain.append(timed(lambda: step(*batches.next()), device))
        x, y = batches.next()
        with timer:
            step(x, y)
        rates.append(probe.rate())
        cold.append(probe.cold_rate())
        sustained.append(probe.sustained_rate(plain[-1]))
    steps, rate = args.repeats, statistics.median(rates)
    step_ms, op_ms = statistics.median(plain) * 1e3, sum(timer.seconds.values()) * 1e3 / steps
    per = lambda seconds: seconds * 1e3 / steps  # noqa: E731
    op_rows = [[name, f"{timer.calls[name] / steps:g}", f"{per(sec):.2f}", f"{100 * per(sec) / op_ms:.1f}%"]
               for name, sec in sorted(timer.seconds.items(), key=lambda kv: -kv[1]) if per(sec) >= 0.05]
    gemm_rows, gemm_s, gemm_flops = [], 0.0, 0.0
    for (name, shapes), sec in sorted(timer.gemms.items(), key=lambda kv: -kv[1]):
        calls = timer.gemm_calls[(name, shapes)]
        flops = _gemm_flops(name, shapes) * calls
        gemm_s, gemm_flops = gemm_s + sec, gemm_flops + flops
        achieved = flops / sec / 1e9
        gemm_rows.append([name, " x ".join(map(str, shapes)), f"{calls / steps:g}", f"{per(sec):.2f}",
                          f"{flops / 1e9 / steps:.2f}", f"{achieved:.0f} ({100 * achieved / rate:.0f}%)"])
    gemm_rate = gemm_flops / gemm_s / 1e9
    clock = "CPU" if CLOCK is time.process_time else "wall"
    lines = [f"### {shape.name} (A={shape.attributes}, C={shape.classes})", "",
             f"Step {step_ms:.1f} ms ({clock} time, median of {steps} plain steps); operators {op_ms:.1f} ms a step "
             f"when timed one by one. Matmul probe {rate:.0f} GFLOP/s (one product from cold caches "
             f"{statistics.median(cold):.0f}, back to back for a step's length {statistics.median(sustained):.0f}). GEMMs {per(gemm_s):.1f} ms for "
             f"{gemm_flops / 1e9 / steps:.2f} GFLOP = {gemm_rate:.0f} GFLOP/s ({100 * gemm_rate / rate:.0f}% of the "
             f"probe); everything else {op_ms - per(gemm_s):.1f} ms ({100 * (1 - per(gemm_s) / op_ms):.0f}%).",
             "", *_table(["operator", "calls", "ms", "share"], op_rows),
             "", *_table(["GEMM", "input shapes", "calls", "ms", "GFLOP", "GFLOP/s (of probe)"], gemm_rows)]
    return "\n".join(lines)


# ------------------------------------------------------------------ thread layouts


def _trial_worker(shape_name: str, threads: int, seconds: float, argv: list[str], barrier, results) -> None:
    torch.set_num_threads(threads)
    args = get_args_parser().parse_args(argv)
    shape, device = SHAPES[shape_name], torch.device("cpu")
    model, _ = make_models(shape, args, device)
    step, batches = make_step(model, shape, args, device), Batches(shape, args, device)
    step(*batches.next())  # warm-up
    barrier.wait()
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        step(*batches.next())
        done += 1
    results.put(done / (time.perf_counter() - start))


def thread_layouts(args: argparse.Namespace, argv: list[str]) -> str:
    """Steps per second of our step with K concurrent trials of T threads each (K x T layouts)."""
    layouts = [tuple(int(v) for v in item.split("x")) for item in args.thread_layouts.split(",")]
    ctx = mp.get_context("spawn")
    totals: dict[tuple[int, int], list[float]] = {lay: [] for lay in layouts}
    per_trial: dict[tuple[int, int], list[float]] = {lay: [] for lay in layouts}
    for _ in range(args.rounds):
        for trials, threads in layouts:
            barrier, results = ctx.Barrier(trials), ctx.Queue()
            procs = [ctx.Process(target=_trial_worker, args=(args.shapes.split(",")[0], threads, args.seconds,
                                                             argv, barrier, results)) for _ in range(trials)]
            for p in procs:
                p.start()
            rates = [results.get() for _ in procs]
            for p in procs:
                p.join()
            totals[(trials, threads)].append(sum(rates))
            per_trial[(trials, threads)].append(statistics.mean(rates))
    base = statistics.median(totals[layouts[0]])
    lines = ["| trials x threads | steps/s per trial | steps/s, node total | vs first layout |", "|---|---|---|---|"]
    for lay in layouts:
        total = statistics.median(totals[lay])
        lines.append(f"| {lay[0]} x {lay[1]} | {statistics.median(per_trial[lay]):.2f} | {total:.2f} "
                     f"[{min(totals[lay]):.2f}-{max(totals[lay]):.2f}] | {total / base:.2f}x |")
    return "\n".join(lines)


# ------------------------------------------------------------------ CLI


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python bench/train_step.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", default="deepfashion,cub,sun", help=f"comma-separated, from {', '.join(SHAPES)}")
    p.add_argument("--repeats", type=int, default=5, help="interleaved timed repetitions per shape")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--batch", type=int, default=50)
    p.add_argument("--feature-dim", type=int, default=2048)
    p.add_argument("--regions", type=int, default=49)
    p.add_argument("--word-dim", type=int, default=300)
    p.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    p.add_argument("--amp", choices=["none", "bf16"], default="none", help="bf16 autocast for both steps")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--compile", action="store_true", help="torch.compile our model")
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                   help="cpu: CPU seconds of this process instead of wall time; with --threads 1 it is "
                        "far less sensitive to other processes on a shared machine")
    p.add_argument("--thread-layouts", default=None,
                   help="instead of the table: steps/s of K concurrent trials x T threads, e.g. 1x2,2x1,2x2")
    p.add_argument("--seconds", type=float, default=20.0, help="per layout and round (--thread-layouts)")
    p.add_argument("--rounds", type=int, default=2, help="rounds over the layouts (--thread-layouts)")
    p.add_argument("--profile", action="store_true",
                   help="instead of the table: our step's time by operator (on --clock), per shape, over "
                        "--repeats steps, with each GEMM's achieved rate against the matmul probe")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = get_args_parser().parse_args(argv)
    unknown = [s for s in args.shapes.split(",") if s not in SHAPES]
    if unknown:
        print(f"train_step: error: --shapes: unknown {unknown}; expected some of {', '.join(SHAPES)}", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(f"train_step: error: --device {args.device}: no CUDA device is visible here", file=sys.stderr)
        return 2
    if args.repeats < 1 or args.batch < 1:
        print("train_step: error: --repeats and --batch must be at least 1", file=sys.stderr)
        return 2
    if args.clock == "cpu":
        if device.type == "cuda":
            print("train_step: error: --clock cpu: GPU steps are timed by the wall clock", file=sys.stderr)
            return 2
        global CLOCK
        CLOCK = time.process_time
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.thread_layouts:
        print(f"thread layouts, our step at {args.shapes.split(',')[0]}'s shape, {args.seconds:.0f} s per layout, "
              f"{args.rounds} rounds (medians [range]); load average {os.getloadavg()[0]:.1f}")
        print(thread_layouts(args, argv))
        return 0

    shapes = [SHAPES[s] for s in args.shapes.split(",")]
    if args.profile:
        print(describe(args, device).split("; ")[0] + f"; load average {os.getloadavg()[0]:.1f}")
        for shape in shapes:
            print()
            print(profile(shape, args, device))
        return 0

    from tqdm import tqdm

    load_before = os.getloadavg()[0]
    with tqdm(total=len(shapes) * args.repeats, desc="interleaved steps", unit="rep", file=sys.stderr) as bar:
        rows = [measure(shape, args, device, bar) for shape in shapes]
    print(describe(args, device))
    print(f"load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after (1-min)")
    print(table(rows, args))
    print("GFLOP per step: exact forward + backward (in brackets: 3x forward). matmul: median over the "
          "repetitions of the best of 3 GEMMs [B*R, F] x [F, 3D]. achieved = GFLOP of the cheapest order "
          "(or of our own order) / our median step time / that matmul rate")
    return 0


if __name__ == "__main__":
    sys.exit(main())
