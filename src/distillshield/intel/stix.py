"""The STIX 2.1 vocabulary DistillShield speaks: TLP 2.0 markings, the template-fingerprint extension,
the three pattern shapes it writes, deterministic ids, and bundle validation.

Ids are uuid5 over stable content (the producer and what the object says), so exporting the same campaign
again gives the same ids with a newer `modified`: a consumer updates its copy instead of adding a second.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

NAMESPACE = uuid.UUID("6f1d1c3e-52a4-5b7e-9c1f-2d0a7c4e8b31")  # DistillShield's uuid5 namespace for STIX ids

# TLP 2.0 marking definitions as the OASIS CTI TC published them (cti-stix-common-objects,
# extension-definition-specifications/tlp-2.0): fixed ids and `created`; consumers recognise them by id.
TLP2_EXTENSION = "extension-definition--60a3c5c5-0d10-413e-aab3-9e08dde9e88d"
TLP2_CREATED = "2022-10-01T00:00:00.000Z"
IDENTITY_CREATED = "2026-01-01T00:00:00.000Z"  # one version of the producer's identity, whatever it exports
TLP2_IDS = {
    "clear": "marking-definition--94868c89-83c2-464b-929b-a1a8aa3c8487",
    "green": "marking-definition--bab4a63c-aed9-4cf5-a766-dfca5abac2bb",
    "amber": "marking-definition--55d920b0-5e8b-4f79-9ee9-91f868d9b421",
    "amber+strict": "marking-definition--939a9414-2ddd-4d32-a0cd-375ea402b003",
    "red": "marking-definition--e828b379-4e03-4974-9ac4-e53a884c97c1",
}
TLP_LEVELS = tuple(TLP2_IDS)

# The template-fingerprint extension (docs/intel.md, "The x-distillshield-template extension").
TEMPLATE_EXTENSION_NAME = "x-distillshield-template"
TEMPLATE_EXTENSION_VERSION = "1.0"
# The pattern's object type: `[x-distillshield-template:fingerprint = '...']`
TEMPLATE_OBJECT = "x-distillshield-template"
# STIX allows the schema as plain text; the normative definition is the project's documentation.
TEMPLATE_SCHEMA = "DistillShield docs/intel.md, section 'The x-distillshield-template extension'"
UA_PATH = "network-traffic:extensions.'http-request-ext'.request_header.'User-Agent'"


class BundleError(ValueError):
    """A bundle that is not valid STIX 2.1 (or not a bundle); the message says what and where."""


def stix_id(kind: str, *parts: str) -> str:
    """`kind--uuid5(namespace, parts)`: the same content gives the same id in every export."""
    return f"{kind}--{uuid.uuid5(NAMESPACE, '|'.join((kind, *parts)))}"


def template_extension_id() -> str:
    """The extension definition's id: one for every producer, so consumers recognise the extension by it."""
    return stix_id("extension-definition", TEMPLATE_EXTENSION_NAME, TEMPLATE_EXTENSION_VERSION)


def template_extension_definition() -> dict[str, Any]:
    """The `x-distillshield-template` extension definition. Bundles refer to it by id and do not carry it (as
    bundles refer to the TLP 2.0 extension): docs/intel.md publishes it, and TAXII servers that index objects
    by a `version` property (medallion) mistake its own `version` for a timestamp."""
    return {
        "type": "extension-definition",
        "spec_version": "2.1",
        "id": template_extension_id(),
        "created_by_ref": stix_id("identity", "DistillShield project"),
        "created": "2026-12-01T00:00:00.000Z",
        "modified": "2026-12-01T00:00:00.000Z",
        "name": TEMPLATE_EXTENSION_NAME,
        "description": "Privacy-preserving fingerprints of a prompt template: the MinHash signature of a family of "
        "prompt skeletons, or the hash of a template's opening (or closing) words. Never the prompt text.",
        "schema": TEMPLATE_SCHEMA,
        "version": TEMPLATE_EXTENSION_VERSION,
        "extension_types": ["property-extension"],
    }


def timestamp(ts: float) -> str:
    """A STIX timestamp (UTC, millisecond precision) of a Unix time."""
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{int(ts * 1000) % 1000:03d}Z"


def parse_timestamp(value: Any) -> float | None:
    """Unix time of a STIX timestamp (a string, or a datetime as the stix2 library returns it)."""
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        return value.timestamp()
    try:
        return dt.datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def tlp_marking(level: str) -> dict[str, Any]:
    """The TLP 2.0 marking-definition object of `level` (clear, green, amber, amber+strict, red)."""
    if level not in TLP2_IDS:
        raise ValueError(f"unknown TLP level {level!r}; choose one of {', '.join(TLP_LEVELS)}")
    return {
        "type": "marking-definition",
        "spec_version": "2.1",
        "id": TLP2_IDS[level],
        "created": TLP2_CREATED,
        "name": f"TLP:{level.upper()}",
        "extensions": {TLP2_EXTENSION: {"extension_type": "property-extension", "tlp_2_0": level}},
    }


def quote(value: str) -> str:
    """A STIX pattern string literal: single quotes, with backslash and quote escaped."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def unquote(literal: str) -> str:
    """The value of a pattern string literal (as stix2-patterns' inspect() returns it, quotes included)."""
    s = literal[1:-1] if len(literal) >= 2 and literal[0] == literal[-1] == "'" else literal
    out, i = [], 0
    while i < len(s):
        if s[i] == "\\" and i + 1 < len(s):
            out.append(s[i + 1])
            i += 2
        else:
            out.append(s[i])
            i += 1
    return "".join(out)


def ip_range_pattern(network: str) -> str:
    kind = "ipv6-addr" if ":" in network else "ipv4-addr"
    return f"[{kind}:value ISSUBSET {quote(network)}]"


def user_agent_pattern(ua: str) -> str:
    return f"[{UA_PATH} = {quote(ua)}]"


def template_pattern(fingerprint: str) -> str:
    return f"[{TEMPLATE_OBJECT}:fingerprint = {quote(fingerprint)}]"


def address_object(network: str, marking: list[str]) -> dict[str, Any]:
    """The `ipv4-addr` / `ipv6-addr` cyber-observable of an address range (CIDR, as STIX 2.1 allows), its id the
    deterministic one STIX 2.1 defines for it (uuid5 over its value, computed by the stix2 library): every
    producer that observed the same range names it with the same id."""
    import json

    import stix2

    kind = stix2.IPv6Address if ":" in network else stix2.IPv4Address
    return dict(json.loads(kind(value=network, object_marking_refs=marking).serialize()))


def pattern_errors(pattern: str) -> list[str]:
    """What stix2-patterns finds wrong with a pattern (empty: valid STIX 2.1)."""
    from stix2patterns.validator import run_validator

    return [str(e) for e in run_validator(pattern, stix_version="2.1")]


def parse_bundle(data: str | bytes | dict[str, Any]) -> Any:
    """Validate a bundle with the stix2 library (every object, every property; custom content only through
    extension definitions) and check every indicator's STIX pattern; raises BundleError naming the problem."""
    import json

    import stix2
    from stix2.exceptions import STIXError

    if isinstance(data, (bytes, str)):
        try:
            data = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise BundleError(f"not JSON ({exc})") from None
    if not isinstance(data, dict) or data.get("type") != "bundle":
        got = data.get("type") if isinstance(data, dict) else type(data).__name__
        raise BundleError(f'not a STIX bundle (expected an object with "type": "bundle", got {got!r})')
    try:
        bundle = stix2.parse(data, allow_custom=False, version="2.1")
    except (STIXError, ValueError, TypeError, KeyError) as exc:
        raise BundleError(f"not valid STIX 2.1: {' '.join(str(exc).split())[:300]}") from None
    for obj in bundle.get("objects", []):
        if obj.get("type") == "indicator" and obj.get("pattern_type") == "stix":
            errors = pattern_errors(obj["pattern"])
            if errors:
                raise BundleError(f"{obj['id']}: invalid STIX pattern {obj['pattern']!r}: {errors[0]}")
    return bundle
