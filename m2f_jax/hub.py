"""Where a model and its settings come from: a local path or a Hugging Face hub id, decided in one place.

The rule (`local_or_hub`): a path that exists is local. Anything else is a hub id only if it has a hub
id's form, `name` or `namespace/name` made of letters, digits, '.', '_' and '-' (each part starting and
ending with a letter, digit or '_', no '--' or '..'), and its namespace is not an existing local folder
(`converted/my-model` beside a `converted/` folder is a mistyped path). Everything else, e.g. './x',
'../x', '/x', '~/x', 'a/b/c', is a missing local path: FileNotFoundError at once, with no network.

Hub files come through `snapshot_download` only (no listing call first), so a repository already in the
local HF cache loads offline: with HF_HUB_OFFLINE=1 the cache is read directly, and when the hub cannot be
reached the cache is tried before giving up. huggingface_hub is imported only when a hub id is used.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from typing import Any

_PART = r"[A-Za-z0-9_](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9_])?"
_HUB_ID = re.compile(rf"(?:{_PART}/)?{_PART}")
_TRUE = {"1", "on", "yes", "true"}


def is_hub_id(name: str) -> bool:
    """Whether `name` has the form of a hub id (`name` or `namespace/name`); says nothing about existence."""
    return bool(_HUB_ID.fullmatch(name)) and "--" not in name and ".." not in name


def local_or_hub(name_or_path: str | os.PathLike) -> tuple[str, bool]:
    """(path or hub id, is_local) by the module's rule; FileNotFoundError for a missing local path."""
    if isinstance(name_or_path, os.PathLike):
        path = os.fspath(name_or_path)
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path} does not exist")
        return path, True
    if not isinstance(name_or_path, str):
        raise TypeError(f"expected a path or a hub id (str), got {type(name_or_path).__name__}")
    path = os.path.expanduser(name_or_path) if name_or_path.startswith("~") else name_or_path
    if os.path.exists(path):
        return path, True
    if not is_hub_id(name_or_path):
        raise FileNotFoundError(f"{name_or_path} does not exist (and is not a hub id: expected namespace/name)")
    namespace = name_or_path.partition("/")[0] if "/" in name_or_path else None
    if namespace is not None and os.path.isdir(namespace):
        raise FileNotFoundError(
            f"{name_or_path} does not exist (read as a local path, since ./{namespace} is a local folder)"
        )
    return name_or_path, False


def is_offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) as set now, or as huggingface_hub read it at import."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in _TRUE:
            return True
    try:
        from huggingface_hub import constants
    except ImportError:  # pragma: no cover - huggingface_hub is a dependency
        return False
    return bool(getattr(constants, "HF_HUB_OFFLINE", False))


def snapshot(repo_id: str, revision: str | None = None, allow_patterns: list[str] | None = None) -> str:
    """The local folder of a hub repository's files matching `allow_patterns`: downloaded, or from the
    cache when offline or when the hub cannot be reached. FileNotFoundError says which and why."""
    try:
        import huggingface_hub
        from huggingface_hub.utils import RepositoryNotFoundError, RevisionNotFoundError
    except ImportError as e:  # pragma: no cover - huggingface_hub is a dependency
        raise ImportError("hub ids need huggingface_hub (pip install huggingface_hub)") from e

    def download(local_files_only: bool) -> str:
        return huggingface_hub.snapshot_download(
            repo_id, revision=revision, allow_patterns=allow_patterns, local_files_only=local_files_only
        )

    where = f"{repo_id}" + (f" (revision {revision})" if revision else "")
    if not is_offline():
        try:
            return download(local_files_only=False)
        except RepositoryNotFoundError as e:  # gated and private repositories too
            raise FileNotFoundError(
                f"{repo_id} is not a local path, and the hub has no repository of that name that you can read "
                "(a private or gated one needs `hf auth login`)"
            ) from e
        except RevisionNotFoundError as e:
            raise FileNotFoundError(f"{repo_id} has no revision {revision!r} on the hub") from e
        except Exception as e:  # unreachable hub, server errors: the cache may still hold it
            reason = f"the hub cannot be reached ({type(e).__name__}: {_first_line(e)})"
    else:
        reason = "offline mode is on (HF_HUB_OFFLINE)"
    try:
        return download(local_files_only=True)
    except Exception as e:
        cached = "the local Hugging Face cache" + f" ({huggingface_hub.constants.HF_HUB_CACHE})"
        incomplete = type(e).__name__ == "IncompleteSnapshotError"  # then its own message says what is missing
        detail = f" ({_first_line(e)})" if incomplete else ""
        raise FileNotFoundError(f"{where} is not a local path, {reason}, and {cached} does not hold it{detail}") from e


def find_file(name_or_path: str | os.PathLike, filename: str, revision: str | None = None) -> str | None:
    """A local path to `filename` of a folder or a hub repository (cached or downloaded), or None when the
    source has no such file. A missing local path or unknown repository raises FileNotFoundError."""
    path, local = local_or_hub(name_or_path)
    if local:
        if not os.path.isdir(path):
            raise NotADirectoryError(f"{path} is a file; expected a folder or a hub id")
        candidate = os.path.join(path, filename)
        return candidate if os.path.isfile(candidate) else None
    candidate = os.path.join(snapshot(path, revision, [filename]), filename)
    if os.path.isfile(candidate):
        return candidate
    if is_offline():
        warnings.warn(f"{filename} of {path} is not in the local cache; offline, so treated as absent", stacklevel=2)
    return None


def read_json(path: str | os.PathLike) -> dict[str, Any]:
    """A JSON file that must hold an object; ValueError naming the file otherwise."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{os.fspath(path)} is not valid JSON ({e})") from e
    if not isinstance(data, dict):
        raise ValueError(f"{os.fspath(path)} must hold a JSON object {{...}}, got a JSON {_json_kind(data)}")
    return data


def _json_kind(value: Any) -> str:
    kinds = {list: "array", str: "string", bool: "boolean", int: "number", float: "number", type(None): "null"}
    return kinds.get(type(value), type(value).__name__)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
