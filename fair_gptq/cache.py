"""One download cache for every Fair-GPTQ data file fetched by URL.

Files land under `$FAIR_GPTQ_CACHE` (else `~/.cache/fair_gptq`), are written atomically (temp file + rename, so
an interrupted download never looks finished) and are reused later, also offline. With HF_HUB_OFFLINE or
HF_DATASETS_OFFLINE set, a file that is not cached fails at once instead of waiting for a network time-out.
"""
from __future__ import annotations

import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable

CACHE_ENV_VAR = "FAIR_GPTQ_CACHE"
DOWNLOAD_TIMEOUT_SECONDS = 60


class DownloadError(ValueError):
    """A URL could not be fetched (offline, network error) or returned something unusable."""


class UnusableDownload(DownloadError):
    """The URL answered, but `check` refused what it returned."""


def cache_root() -> Path:
    """Root of Fair-GPTQ's caches: `$FAIR_GPTQ_CACHE`, else `~/.cache/fair_gptq`."""
    override = os.environ.get(CACHE_ENV_VAR)
    return Path(override).expanduser() if override else Path.home() / ".cache" / "fair_gptq"


def is_url(source: str) -> bool:
    return source.startswith(("http://", "https://"))


def offline_mode() -> bool:
    truthy = {"1", "true", "yes", "on"}
    return any(os.environ.get(var, "").strip().lower() in truthy for var in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"))


def write_bytes_atomically(path: Path, payload: bytes) -> None:
    """Temp file + rename: a reader never sees a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as tmp:
            tmp.write(payload)
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def download_cached(url: str, target: Path, check: Callable[[bytes], None] | None = None) -> Path:
    """Return `target`, downloading `url` into it first unless it is there already.

    `check(payload)` may raise ValueError to refuse a payload (e.g. an HTML error page instead of JSON): then
    nothing is cached, because a bad cache file would be reused forever.
    """
    if target.is_file():
        return target
    if offline_mode():
        raise DownloadError(f"{url} is not cached in {target.parent} and offline mode is on "
                            f"(HF_DATASETS_OFFLINE / HF_HUB_OFFLINE)")
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_SECONDS) as response:
            payload = response.read()
    except (urllib.error.URLError, OSError, ValueError) as error:
        raise DownloadError(f"cannot download {url} ({error})") from None
    if check is not None:
        try:
            check(payload)
        except ValueError as error:
            raise UnusableDownload(f"{url} returned unusable data ({error}); nothing was cached") from None
    write_bytes_atomically(target, payload)
    return target
