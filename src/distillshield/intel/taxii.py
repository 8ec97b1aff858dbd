"""TAXII 2.1 (taxii2-client): push a bundle's objects to a collection, pull the objects added since the last pull.

A pull reads the collection's manifest first (where it ends now: the latest `date_added`), then the objects
added after the previous pull's end, page by page; the end is stored per collection (intel/store.py), so
the next pull asks only for what is new. An object added between the two reads comes again next time, which
an import ignores (the same version is already stored).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

PAGE = 100


class TaxiiError(Exception):
    """The TAXII server could not be reached, refused us, or did not take the objects; the message says which."""


@dataclass(frozen=True)
class TaxiiTarget:
    api_root: str
    collection: str
    user: str | None = None
    password: str | None = None

    @property
    def url(self) -> str:
        return f"{self.api_root.rstrip('/')}/collections/{self.collection}/"


def _collection(target: TaxiiTarget) -> Any:
    from taxii2client.v21 import Collection

    return Collection(target.url, user=target.user, password=target.password)


def _explain(target: TaxiiTarget, exc: Exception) -> TaxiiError:
    import requests

    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        code = exc.response.status_code
        hint = {401: " (check intel.taxii_user / taxii_password)", 403: " (the user may not use this collection)",
                404: " (check intel.taxii_url and intel.taxii_collection)"}.get(code, "")  # fmt: skip
        return TaxiiError(f"TAXII server at {target.url} answered {code}{hint}")
    if isinstance(exc, requests.ConnectionError):
        return TaxiiError(f"cannot reach the TAXII server at {target.url}: {type(exc).__name__}")
    return TaxiiError(f"TAXII request to {target.url} failed: {' '.join(str(exc).split())[:200]}")


def push(target: TaxiiTarget, bundle: dict[str, Any], timeout_s: float = 60) -> dict[str, Any]:
    """Add the bundle's objects to the collection and wait for the server's final status."""
    from taxii2client.exceptions import TAXIIServiceException

    try:
        status = _collection(target).add_objects(
            {"objects": bundle["objects"]}, wait_for_completion=True, poll_interval=0.2, timeout=timeout_s
        )
    except (TAXIIServiceException, OSError, ValueError) as exc:
        raise _explain(target, exc) from None
    result = {
        "status": status.status,
        "total": status.total_count,
        "succeeded": status.success_count,
        "failed": status.failure_count,
        "pending": status.pending_count,
    }
    if status.failure_count:
        first = (status.failures or [{}])[0]
        raise TaxiiError(
            f"the TAXII server refused {status.failure_count} of {status.total_count} objects "
            f"(first: {first.get('id')}: {first.get('message', 'no reason given')})"
        )
    return result


def pull(target: TaxiiTarget, added_after: str | None) -> tuple[dict[str, Any], str | None]:
    """(a bundle of the objects added after `added_after`, where this pull ended) for the next pull."""
    from taxii2client.exceptions import TAXIIServiceException
    from taxii2client.v21 import as_pages

    filters = {"added_after": added_after} if added_after else {}
    try:
        col = _collection(target)
        end = added_after
        for page in as_pages(col.get_manifest, per_request=PAGE, **filters):
            for entry in page.get("objects", []):
                if end is None or entry["date_added"] > end:
                    end = entry["date_added"]
        objects: list[dict[str, Any]] = []
        if end != added_after:
            for page in as_pages(col.get_objects, per_request=PAGE, **filters):
                objects.extend(page.get("objects", []))
    except (TAXIIServiceException, OSError, ValueError, KeyError) as exc:
        raise _explain(target, exc) from None
    return {"type": "bundle", "id": f"bundle--{uuid.uuid4()}", "objects": objects}, end
