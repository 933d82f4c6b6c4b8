"""Seeded random directions with the same bits on every device (docs/zeroth-order.md (Seeded in-place perturbation (MeZO trick)), issue 17).

The zeroth-order methods regenerate each direction from its seed many times
per step (MeZO, Malladi et al., NeurIPS 2023, arXiv 2305.17333), and zo-seed
replicas rebuild the model from ``(seed, scalar)`` histories, possibly on other
devices. This module makes a direction a pure function of ``(seed, element
index)`` computed on the device the parameters live on:

1. **Counter-based integers.** Element ``i`` of direction ``seed`` hashes the
   counter ``i`` with two 32-bit keys from SplitMix64(``seed``): ``x = i ^ k0``,
   ``x = F(x)``, ``x = F(x ^ k1)``, where F is the ``lowbias32`` integer mixer
   (Wellons, "Hash Prospector"). Only int32 xor, masked shifts and wrapping
   multiplication are used: exact, identical on CPU and CUDA.
2. **Irwin-Hall transform, in integers.** The four bytes of ``x`` are summed
   exactly: ``z_int = Σ bytes − 510``, an integer in [−510, 510] with mean 0
   and variance 4·(256² − 1)/12 = 21845. The Gaussian family uses
   ``z = z_int / √21845``: mean 0, variance 1, independent coordinates, excess
   kurtosis −0.3, |z| ≤ 3.45. It is Gaussian-like, not normal; the two-point
   estimators only need E[z] = 0 and E[zzᵀ] = I (docs/zeroth-order.md (Estimators)).
3. **Exact float arithmetic.** ``z_int`` converts to float32 exactly. Every
   coefficient ``a`` that multiplies it is rounded on the host to 15
   significant bits (:func:`exact_coefficient`), so ``a·z_int`` (|z_int| < 2⁹)
   is exact in float32: ``θ + a·z`` then rounds once whether a device fuses it
   into an FMA or not. Norms (``sphere``) are sums of integers below 2⁵³,
   exact in float64 in any order.

Guarantee: for float32 or float64 tensors and |a·z_int| ≥ 2⁻¹²⁶ (no
subnormals), :func:`add_direction_` and :func:`square_norm` give the same bits
on CPU and CUDA, in any chunking, compiled or eager. Chunks bound the extra
memory to ``chunk`` elements (int32 scratch and a float32 slice), never a
full-size direction.

On CUDA the integer kernel is fused with ``torch.compile`` when it is available
and agrees bit for bit with the eager kernel on a check chunk; otherwise the
eager kernel runs (``FEDZG_ZO_BACKEND = auto | eager | compiled``).
"""

from __future__ import annotations

import logging
import math
import os
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

log = logging.getLogger(__name__)

#: lowbias32's multipliers as signed int32 (Wellons, Hash Prospector).
MIX_A = 0x7FEB352D
MIX_B = 0x846CA68B - (1 << 32)
BYTE_LANES = 0x00FF00FF
#: z_int = (sum of four bytes) − Z_MAX lies in [−Z_MAX, Z_MAX].
Z_MAX = 510
#: Var(z_int) = 4 (256² − 1) / 12.
VARIANCE = 21845
SIGMA = math.sqrt(VARIANCE)
#: Significant bits kept in a coefficient: 15 + 9 (|z_int| < 2⁹) = float32's 24.
COEFF_BITS = 15
#: Counters are int32: at most 2³¹ − 1 elements per direction.
MAX_ELEMENTS = (1 << 31) - 1
#: Default chunk (elements) by device type: cache-sized on CPU, launch-amortising on CUDA.
CHUNK = {"cpu": 1 << 17, "cuda": 1 << 22}

_M64 = (1 << 64) - 1


def seed_keys(seed: int) -> tuple[int, int]:
    """The two int32 keys (k0, k1) of ``seed``: SplitMix64 (Steele et al., 2014), split in halves."""
    z = (int(seed) + 0x9E3779B97F4A7C15) & _M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    z ^= z >> 31
    return _signed32(z & 0xFFFFFFFF), _signed32(z >> 32)


def _signed32(v: int) -> int:
    return v - (1 << 32) if v >= 1 << 31 else v


def exact_coefficient(a: float) -> float:
    """``a`` rounded to :data:`COEFF_BITS` significant bits (half to even).

    Then a·z_int is exact in float32 for every |z_int| ≤ 510, so a device's
    fused multiply-add and a separate multiply and add round identically.
    """
    if a == 0.0 or not math.isfinite(a):
        return float(a)
    mantissa, exponent = math.frexp(a)  # a = mantissa · 2^exponent, 0.5 <= |mantissa| < 1
    return math.ldexp(round(mantissa * (1 << COEFF_BITS)), exponent - COEFF_BITS)


# -- the integer kernel -----------------------------------------------------------------------


def _lowbias32_(x: Tensor, t: Tensor) -> None:
    """x ← lowbias32(x) in place on int32 (t: scratch); logical shifts by masking."""
    torch.bitwise_right_shift(x, 16, out=t)
    x.bitwise_xor_(t.bitwise_and_(0xFFFF))
    x.mul_(MIX_A)
    torch.bitwise_right_shift(x, 15, out=t)
    x.bitwise_xor_(t.bitwise_and_(0x1FFFF))
    x.mul_(MIX_B)
    torch.bitwise_right_shift(x, 16, out=t)
    x.bitwise_xor_(t.bitwise_and_(0xFFFF))


_RAMP: list[Tensor] = []  # one CPU ramp 0, 1, ..., grown on demand and sliced


def _counters(start: int, n: int, device: torch.device, out: Tensor) -> Tensor:
    """out ← start, start+1, ..., start+n−1 as int32 (CPU: a cached ramp plus an offset)."""
    if device.type != "cpu":
        return torch.arange(start, start + n, dtype=torch.int32, device=device, out=out)
    if not _RAMP or _RAMP[0].numel() < n:
        _RAMP[:] = [torch.arange(n, dtype=torch.int32)]
    return torch.add(_RAMP[0][:n], start, out=out)


def eager_normals(
    seed: int, start: int, n: int, device: torch.device, out: Tensor | None = None,
    scratch: tuple[Tensor, Tensor] | None = None,
) -> Tensor:
    """z_int for elements [start, start+n) of direction ``seed``, as exact float32 (n,)."""
    k0, k1 = seed_keys(seed)
    x, t = scratch if scratch is not None else (
        torch.empty(n, dtype=torch.int32, device=device),
        torch.empty(n, dtype=torch.int32, device=device),
    )
    x, t = _counters(start, n, device, x[:n]), t[:n]
    x.bitwise_xor_(k0)
    _lowbias32_(x, t)
    x.bitwise_xor_(k1)
    _lowbias32_(x, t)
    # Irwin-Hall over the four bytes, SWAR: two 16-bit lanes, then their sum
    torch.bitwise_right_shift(x, 8, out=t)
    x.bitwise_and_(BYTE_LANES).add_(t.bitwise_and_(BYTE_LANES))
    torch.bitwise_right_shift(x, 16, out=t)  # x >= 0 here: arithmetic = logical
    x.bitwise_and_(0xFFFF).add_(t).sub_(Z_MAX)
    out = torch.empty(n, dtype=torch.float32, device=device) if out is None else out[:n]
    return out.copy_(x)  # exact: |z_int| <= 510


def _fused_kernel(params: Tensor, n: int) -> Tensor:
    """The same function as :func:`eager_normals`, written for ``torch.compile``.

    ``params`` = int32 (start, k0, k1) on the device, so seeds and offsets never
    trigger a recompile; ``n`` is a compile-time size.
    """
    start, k0, k1 = params[0], params[1], params[2]
    x = (torch.arange(n, dtype=torch.int32, device=params.device) + start) ^ k0
    for key in (None, k1):
        if key is not None:
            x = x ^ key
        x = x ^ ((x >> 16) & 0xFFFF)
        x = x * MIX_A
        x = x ^ ((x >> 15) & 0x1FFFF)
        x = x * MIX_B
        x = x ^ ((x >> 16) & 0xFFFF)
    lanes = (x & BYTE_LANES) + ((x >> 8) & BYTE_LANES)
    return ((lanes & 0xFFFF) + (lanes >> 16) - Z_MAX).to(torch.float32)


NormalsFn = Callable[[int, int, int, torch.device], Tensor]
_FUSED: dict[str, NormalsFn | None] = {}


def backend() -> str:
    """``FEDZG_ZO_BACKEND``: ``auto`` (fused on CUDA when it checks out), ``eager`` or ``compiled``."""
    name = os.environ.get("FEDZG_ZO_BACKEND", "auto")
    if name not in ("auto", "eager", "compiled"):
        raise ValueError(f"FEDZG_ZO_BACKEND = {name!r}: allowed are auto, eager, compiled")
    return name


def _device_key(device: torch.device) -> str:
    """``cuda`` and ``cuda:0`` (when current) are one device: one compiled kernel."""
    if device.type == "cuda" and device.index is None:
        return f"cuda:{torch.cuda.current_device()}"
    return str(device)


def fused_available(device: torch.device | str) -> bool:
    """Whether the fused kernel runs on ``device`` (built and checked on first use)."""
    return _FUSED.get(_device_key(torch.device(device))) is not None


def _bucket(n: int) -> int:
    return max(1 << 16, 1 << (n - 1).bit_length())


def _build_fused(device: torch.device) -> NormalsFn | None:
    """Compile the kernel for ``device`` and check it against the eager kernel, bit for bit."""
    try:
        compiled = torch.compile(_fused_kernel, fullgraph=True, dynamic=False)

        def fused(seed: int, start: int, n: int, dev: torch.device) -> Tensor:
            k0, k1 = seed_keys(seed)
            params = torch.tensor([start, k0, k1], dtype=torch.int32).to(dev, non_blocking=True)
            return compiled(params, _bucket(n))[:n]

        probe = (987654321, 12345, CHUNK["cuda"])
        if not torch.equal(fused(*probe, device), eager_normals(*probe, device)):
            raise RuntimeError("the compiled kernel disagrees with the eager kernel")
    except Exception as err:  # any compiler failure: the eager kernel gives the same bits
        if backend() == "compiled":
            raise
        log.warning("fused direction kernel unavailable on %s (%s); using the eager kernel",
                    device, err)
        return None
    return fused


class _EagerChunks:
    """:func:`eager_normals` with its scratch (two int32, one float32 chunk) reused across calls."""

    def __init__(self, chunk: int, device: torch.device) -> None:
        self.bufs = [torch.empty(chunk, dtype=dt, device=device)
                     for dt in (torch.int32, torch.int32, torch.float32)]

    def __call__(self, seed: int, start: int, n: int, device: torch.device) -> Tensor:
        x, t, out = self.bufs
        return eager_normals(seed, start, n, device, out, (x, t))


def chunk_generator(device: torch.device, chunk: int) -> NormalsFn:
    """A chunk generator for ``device`` (chunks of at most ``chunk``): fused or eager, same bits."""
    name = backend()
    if name == "compiled" or (name == "auto" and device.type == "cuda"):
        key = _device_key(device)
        if key not in _FUSED:
            _FUSED[key] = _build_fused(device)
        fused = _FUSED[key]
        if fused is not None:
            return fused
    if device.type != "cpu":
        return _EagerChunks(chunk, device)
    if not _CPU_SCRATCH or _CPU_SCRATCH[0].bufs[0].numel() < chunk:
        _CPU_SCRATCH[:] = [_EagerChunks(chunk, device)]
    return _CPU_SCRATCH[0]


#: One CPU scratch, the largest chunk asked for (12 B per element: 1.5 MiB at 2^17), reused.
_CPU_SCRATCH: list[_EagerChunks] = []


def normals(seed: int, start: int, n: int, device: torch.device | str = "cpu") -> Tensor:
    """z_int(seed)[start : start+n] as exact float32 (n,), generated on ``device``."""
    device = torch.device(device)
    if start < 0 or start + n > MAX_ELEMENTS:
        raise ValueError(f"direction elements [{start}, {start + n}) outside [0, 2^31 - 1)")
    chunk = CHUNK.get(device.type, CHUNK["cuda"])
    if n <= chunk:
        return chunk_generator(device, max(n, 1))(seed, start, n, device).clone()  # scratch view
    out = torch.empty(n, dtype=torch.float32, device=device)
    gen = chunk_generator(device, chunk)
    for s, m in _chunks(n, chunk):
        out[s:s + m] = gen(seed, start + s, m, device)
    return out


# -- directions over a list of tensors -------------------------------------------------------


def _chunks(total: int, chunk: int) -> list[tuple[int, int]]:
    return [(s, min(chunk, total - s)) for s in range(0, total, chunk)]


class Layout:
    """Where each element of the concatenated (canonical-order) tensors lies.

    Element ``i`` of the direction lands in the tensor holding global index ``i``,
    so a direction depends only on (seed, total size), never on chunking.
    """

    def __init__(self, tensors: Sequence[Tensor], chunk: int | None = None) -> None:
        if not tensors:
            raise ValueError("a direction needs at least one tensor")
        self.device = tensors[0].device
        self.flats: list[Tensor] = []
        for t in tensors:
            if not t.is_contiguous():
                raise ValueError(f"directions need contiguous tensors; got shape {tuple(t.shape)}")
            self.flats.append(t.view(-1))
        self.sizes = [f.numel() for f in self.flats]
        self.starts = [0] * len(self.sizes)
        for i in range(1, len(self.sizes)):
            self.starts[i] = self.starts[i - 1] + self.sizes[i - 1]
        self.total = self.starts[-1] + self.sizes[-1]
        if self.total > MAX_ELEMENTS:
            raise ValueError(f"{self.total} elements: directions support at most 2^31 - 1")
        self.chunk = max(1, min(chunk or CHUNK.get(self.device.type, CHUNK["cuda"]), self.total))
        self.float32 = all(f.dtype == torch.float32 for f in self.flats)

    def pieces(self, start: int, n: int, z: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """Matching (tensor slice, z slice) views for global elements [start, start+n)."""
        stop = start + n
        first, last = bisect_right(self.starts, start) - 1, bisect_left(self.starts, stop)
        dst, sizes = [], []
        for k in range(first, last):
            lo, size = self.starts[k], self.sizes[k]
            a, b = max(start - lo, 0), min(stop - lo, size)
            dst.append(self.flats[k] if a == 0 and b == size else self.flats[k][a:b])
            sizes.append(b - a)
        src = list(z.split(sizes))
        if not self.float32:
            src = [s.to(d.dtype) for s, d in zip(src, dst, strict=True)]
        return dst, src


def add_direction_(
    tensors: Sequence[Tensor], seed: int, coeffs: float | Sequence[float],
    chunk: int | None = None,
) -> None:
    """θ ← θ + a·z_int(seed) in place for each a in ``coeffs``, chunk by chunk.

    Each a is ``exact_coefficient(a)``, so every add rounds once and the result is
    the same on every device and for every chunking. Several coefficients share
    one generation: ``[a, b]`` gives exactly the bits of two calls, a then b.
    """
    if torch.is_grad_enabled():
        with torch.no_grad():
            return add_direction_(tensors, seed, coeffs, chunk)
    scales = [exact_coefficient(c) for c in ([coeffs] if isinstance(coeffs, float | int) else coeffs)]
    scales = [a for a in scales if a != 0.0]
    if not scales:
        return None
    layout = Layout(tensors, chunk)
    gen = chunk_generator(layout.device, layout.chunk)
    for start, n in _chunks(layout.total, layout.chunk):
        z = gen(seed, start, n, layout.device)  # (n,) float32, exact integers
        dst, src = layout.pieces(start, n, z)
        for a in scales:
            torch._foreach_add_(dst, src, alpha=a)
    return None


_NORMS: dict[tuple[int, int], int] = {}


@torch.no_grad()
def square_norm(seed: int, total: int, device: torch.device | str = "cpu", chunk: int | None = None) -> int:
    """Σ z_int(seed)[i]² over i < ``total``: an exact integer, cached per (seed, total)."""
    key = (int(seed), int(total))
    if key not in _NORMS:
        device = torch.device(device)
        chunk = max(1, min(chunk or CHUNK.get(device.type, CHUNK["cuda"]), total))
        gen = chunk_generator(device, chunk)
        acc = torch.zeros((), dtype=torch.float64, device=device)
        for start, n in _chunks(total, chunk):
            z = gen(seed, start, n, device)
            acc += z.square().sum(dtype=torch.float64)  # integers < 2^53: exact in any order
        if len(_NORMS) > 4096:
            _NORMS.clear()
        _NORMS[key] = int(acc.item())
    return _NORMS[key]


@torch.no_grad()
def add_tensor_normals_(
    out: Tensor, seed: int, layout: Layout, index: int, coeff: float,
    gen: NormalsFn | None = None,
) -> None:
    """out ← out + a·z_int(seed) over tensor ``index`` of ``layout`` (flat ``out``, chunked)."""
    a = exact_coefficient(coeff)
    if a == 0.0:
        return
    gen = gen or chunk_generator(layout.device, layout.chunk)
    start = layout.starts[index]
    for s, m in _chunks(layout.flats[index].numel(), layout.chunk):
        z = gen(seed, start + s, m, layout.device)
        out[s:s + m].add_(z if z.dtype == out.dtype else z.to(out.dtype), alpha=a)
