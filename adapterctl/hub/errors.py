"""Hub failures as adapterctl errors: one line, a hint, an exit code, never a traceback or a token.

huggingface_hub raises its own exception types (and httpx2's for the network); the CLI knows only
``AdapterError``. ``hub_errors()`` wraps every call into huggingface_hub and turns what it raises
into one of the errors below through ``_TABLE`` (first match wins, so subclasses come first), in
the spirit of huggingface_hub's own ``cli/_errors.py``. Server text is clipped, escaped and has
the token blanked out: a server (or a proxy) may echo request headers back.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Callable, Iterator, Optional

from adapterctl.errors import AdapterError
from adapterctl.textsafe import clip

EXIT_HUB = 7  # the Hub said no, or could not be reached
EXIT_INTEGRITY = 8  # what arrived is not what the Hub's metadata (or the lock) promised


class HubError(AdapterError):
    exit_code = EXIT_HUB
    code = "hub_error"


class RepoNotFound(HubError):
    code = "repo_not_found"


class RevisionNotFound(HubError):
    code = "revision_not_found"


class EntryNotFound(HubError):
    code = "entry_not_found"


class AuthError(HubError):
    code = "auth_error"


class Offline(HubError):
    code = "offline"


class HubUnreachable(HubError):
    code = "connection_error"


class IntegrityError(AdapterError):
    """A downloaded file's sha256 (or size) is not the expected one; nothing was written."""

    exit_code = EXIT_INTEGRITY
    code = "integrity_error"


class UnsafeRemoteName(AdapterError):
    """A file name in a repository that would land outside the output directory if written."""

    exit_code = 3
    code = "unsafe_remote_name"


_PRIVATE_HINT = "check the spelling; a private repository needs --token or HF_TOKEN with read access"


def _repo(exc, ctx) -> AdapterError:
    return RepoNotFound(f"repository '{ctx['repo']}' not found on {ctx['endpoint']}", hint=_PRIVATE_HINT)


def _revision(exc, ctx) -> AdapterError:
    rev = ctx.get("revision") or "main"
    return RevisionNotFound(f"revision '{clip(rev, 100)}' not found in '{ctx['repo']}'",
                            hint="give a branch, a tag or a full 40-hex commit sha (REPO@REVISION)")


def _entry(exc, ctx) -> AdapterError:
    name = ctx.get("filename")
    what = f"file '{clip(name, 200)}'" if name else "the requested file"
    return EntryNotFound(f"{what} not found in '{ctx['repo']}' at {_rev(ctx)}",
                         hint=f"list the repository's files with 'adapterctl pull {ctx['repo']} --json' (no FILE)")


def _local_entry(exc, ctx) -> AdapterError:
    return Offline(f"'{ctx['repo']}' at {_rev(ctx)} is not in the local cache and the Hub is not reachable "
                   "(HF_HUB_OFFLINE or no network)",
                   hint="pull it once while online; HF_HOME must point at the same cache")


def _offline(exc, ctx) -> AdapterError:
    return Offline("HF_HUB_OFFLINE is set, and this needs the Hub", hint="unset HF_HUB_OFFLINE to go online")


def _revision_resolution(exc, ctx) -> AdapterError:
    return Offline(f"cannot resolve '{clip(ctx.get('revision') or 'main', 100)}' of '{ctx['repo']}': the Hub is "
                   "not reachable and the cache has no record of it",
                   hint="pull once while online, or give the full 40-hex commit sha")


def _http(exc, ctx) -> AdapterError:
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    server = _server_text(exc, ctx)
    if status == 401:
        return AuthError(f"the Hub did not accept the credentials (HTTP 401){server}",
                         hint="pass a valid token with --token or HF_TOKEN (it is never printed)")
    if status == 403:
        return AuthError(f"the token may not do this on '{ctx['repo']}' (HTTP 403){server}",
                         hint="a write needs a token with write access to this namespace")
    if status == 412:
        return HubError(f"'{ctx['repo']}' changed while pushing (HTTP 412){server}",
                        hint="run the command again; it compares against the new head")
    if status == 429:
        return HubError(f"the Hub is rate-limiting these requests (HTTP 429){server}", hint="wait and retry")
    if status is not None and status >= 500:
        return HubUnreachable(f"the Hub failed (HTTP {status}){server}", hint="retry later")
    return HubError(f"the Hub refused the request (HTTP {status}){server}")


def _transport(exc, ctx) -> AdapterError:
    return HubUnreachable(f"cannot reach {ctx['endpoint']}: {type(exc).__name__}",
                          hint="check the network or HF_ENDPOINT; with files already pulled, HF_HUB_OFFLINE=1 "
                               "reads the cache")


def _repo_id(exc, ctx) -> AdapterError:
    from adapterctl.errors import UsageError

    return UsageError(f"'{ctx['repo']}' is not a valid repository id", hint="write it as OWNER/NAME")


def _rev(ctx) -> str:
    return f"'{clip(ctx['revision'], 100)}'" if ctx.get("revision") else "main"


def _server_text(exc, ctx) -> str:
    text = getattr(exc, "server_message", None)
    if not text:
        return ""
    return ": " + clip(scrub(str(text), ctx.get("token")), 200)


def scrub(text: str, token: Optional[str]) -> str:
    """``text`` with the token (if any) replaced, before it can reach a terminal or a log."""
    return text.replace(token, "<token>") if token and len(token) >= 4 else text


def _table(errors) -> list[tuple[type, Callable]]:
    table = [
        (errors.RevisionNotFoundError, _revision),
        (errors.RepositoryNotFoundError, _repo),  # GatedRepoError too
        (errors.RemoteEntryNotFoundError, _entry),
        (errors.LocalEntryNotFoundError, _local_entry),
        (errors.EntryNotFoundError, _entry),
        (errors.OfflineModeIsEnabled, _offline),
        (errors.RevisionResolutionError, _revision_resolution),
        (errors.HFValidationError, _repo_id),
        (errors.HfHubHTTPError, _http),
    ]
    for module in ("httpx2", "httpx", "requests"):  # whichever transport huggingface_hub has loaded
        lib = sys.modules.get(module)
        if lib is None:
            continue
        base = getattr(lib, "TransportError", None) or getattr(lib, "ConnectionError", None)
        if base is not None:
            table.append((base, _transport))
    table.append((ConnectionError, _transport))
    return table


@contextmanager
def hub_errors(*, repo: str, endpoint: Optional[str], token: Optional[str] = None, revision: Optional[str] = None,
               filename: Optional[str] = None) -> Iterator[dict]:
    """Translate huggingface_hub's exceptions raised inside the block. The yielded dict is the
    context for the messages: a caller may set ``filename`` as it goes from file to file."""
    # Not through _client.hub() (which imports this module): callers have imported huggingface_hub already.
    import huggingface_hub.constants as constants
    import huggingface_hub.errors as hf_errors
    ctx = {"repo": clip(repo, 200), "endpoint": clip(endpoint or constants.ENDPOINT, 200), "token": token,
           "revision": revision, "filename": filename}
    try:
        yield ctx
    except AdapterError:
        raise
    except Exception as exc:  # noqa: BLE001 - only the table's types are translated; others re-raised
        for kind, build in _table(hf_errors):
            if isinstance(exc, kind):
                raise build(exc, ctx) from None
        if token and token in str(exc):  # an unexpected error must not carry the token to the CLI
            raise HubError(f"{type(exc).__name__}: {clip(scrub(str(exc), token), 300)}") from None
        raise
