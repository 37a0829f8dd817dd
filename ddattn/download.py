"""Downloading files over HTTP(S) with the standard library: progress, atomic writes, one-line errors."""

import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from .errors import UserError
from .paths import atomic_path


class NotFoundError(UserError):
    """The server answered HTTP 404: the file does not exist there (callers may try another file)."""


def download(url: str, dest: Path, timeout: float = 30.0) -> Path:
    """Fetch `url` into `dest` atomically (a temp file in the same folder, renamed when complete).

    Raises UserError with one line when the server cannot be reached or answers with an error, so a
    machine without internet gets "cannot download ... (offline?)" instead of a traceback; a 404 raises
    the subclass NotFoundError. Nothing is left at `dest` unless the whole file arrived.
    """
    dest = Path(dest)
    request = urllib.request.Request(url, headers={"User-Agent": "ddattn"})
    try:
        with (
            atomic_path(dest) as tmp,
            open(tmp, "wb") as out,
            urllib.request.urlopen(request, timeout=timeout) as response,
        ):
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name, leave=False) as bar:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    bar.update(len(chunk))
    except urllib.error.HTTPError as e:
        error = NotFoundError if e.code == 404 else UserError
        raise error(f"cannot download {url}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise UserError(f"cannot download {url}: {reason} (offline? copy the file in by hand)") from None
    return dest
