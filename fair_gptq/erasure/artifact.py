"""The eraser file: one `torch.save` dict, written atomically, read back with `weights_only=True`.

Every kind is stored as the affine map h -> bias + P (h - bias) on the hidden state named in the metadata:
INLP has P symmetric idempotent and no bias (h -> P h); LEACE has an oblique P and the fitting mean as bias.

    {"format": ARTIFACT_FORMAT, "kind": "inlp" | "leace", "projection": (d, d) float64,
     "bias": (d,) float64 | None, "metadata": {location, fitting data sha256 and counts, settings, versions, ...}}
"""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from fair_gptq.cache import write_bytes_atomically

ARTIFACT_FORMAT = "fair_gptq.erasure.eraser/1"
ERASER_KINDS = ("inlp", "leace")


class EraserFileError(ValueError):
    """An eraser file that is missing, unreadable or not in ARTIFACT_FORMAT."""


@dataclass(frozen=True)
class Eraser:
    kind: str
    projection: torch.Tensor  # (d, d)
    bias: torch.Tensor | None = None  # (d,)
    metadata: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.kind not in ERASER_KINDS:
            raise ValueError(f"unknown eraser kind {self.kind!r}: choose one of {', '.join(ERASER_KINDS)}")
        p = self.projection
        if not isinstance(p, torch.Tensor) or p.ndim != 2 or p.shape[0] != p.shape[1] or p.shape[0] == 0:
            raise ValueError(f"the projection must be a square (d, d) tensor, got {getattr(p, 'shape', p)!r}")
        if self.bias is not None and (not isinstance(self.bias, torch.Tensor) or tuple(self.bias.shape) != (p.shape[0],)):
            raise ValueError(f"the bias must have shape ({p.shape[0]},), got {getattr(self.bias, 'shape', self.bias)!r}")
        if not torch.isfinite(p).all() or (self.bias is not None and not torch.isfinite(self.bias).all()):
            raise ValueError("the eraser holds NaN or infinite values")

    @property
    def hidden_size(self) -> int:
        return int(self.projection.shape[0])

    def apply(self, hidden: torch.Tensor) -> torch.Tensor:
        """bias + P (h - bias) for every vector h along the last dimension; computed in float32 at least,
        returned in `hidden`'s dtype. Out of place: the caller's tensor is never changed."""
        if hidden.shape[-1] != self.hidden_size:
            raise ValueError(f"eraser for width {self.hidden_size} given hidden states of width {hidden.shape[-1]}")
        dtype = torch.promote_types(hidden.dtype, torch.float32)
        p = self.projection.to(device=hidden.device, dtype=dtype)
        h = hidden.to(dtype)
        if self.bias is None:
            return (h @ p.T).to(hidden.dtype)
        b = self.bias.to(device=hidden.device, dtype=dtype)
        return ((h - b) @ p.T + b).to(hidden.dtype)


def save_eraser(eraser: Eraser, path: str | os.PathLike) -> str:
    """Write `eraser` to `path` (temp file, then rename); returns the file's sha256."""
    payload = {"format": ARTIFACT_FORMAT, "kind": eraser.kind, "projection": eraser.projection.detach().cpu(),
               "bias": None if eraser.bias is None else eraser.bias.detach().cpu(), "metadata": eraser.metadata}
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    data = buffer.getvalue()
    write_bytes_atomically(Path(path), data)
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_eraser(path: str | os.PathLike) -> Eraser:
    """Read an eraser file; EraserFileError (one line, naming the file) when it is not one."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise EraserFileError(f"eraser file {file} does not exist")
    try:
        payload = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - pickle/zip errors of every kind: not an eraser file
        raise EraserFileError(f"{file}: not a readable eraser file ({type(exc).__name__}: {exc})") from None
    if not isinstance(payload, dict) or payload.get("format") != ARTIFACT_FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise EraserFileError(f"{file}: format {found!r}, expected {ARTIFACT_FORMAT!r}")
    try:
        return Eraser(kind=payload["kind"], projection=payload["projection"], bias=payload["bias"],
                      metadata=payload.get("metadata") or {})
    except (KeyError, ValueError) as exc:
        raise EraserFileError(f"{file}: {exc}") from None


def describe_eraser(eraser: Eraser, path: str | os.PathLike) -> dict:
    """What a result records about the eraser it was made with (loaded from `path`): changes with its bytes."""
    fitting = eraser.metadata.get("fitting", {})
    return {"file": Path(path).name, "sha256": file_sha256(path), "kind": eraser.kind,
            "labels": fitting.get("label_mode"), "hidden_size": eraser.hidden_size,
            "location": eraser.metadata.get("location")}
