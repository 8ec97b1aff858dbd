"""Threat-intelligence exchange: campaign indicators as STIX 2.1, shared over TAXII 2.1, matched in detection.

- `stix.py`      the vocabulary: TLP 2.0 markings, the `x-distillshield-template` extension, patterns, ids
- `export.py`    a detected campaign (an analyser report's cluster, or one account) -> a STIX 2.1 bundle
- `indicators.py` a received bundle -> the indicators DistillShield can match (validated, expiry, revocation)
- `store.py`     imported indicators in the gateway's store (SQLite or PostgreSQL)
- `matcher.py`   IP ranges (sorted, bisect), user agents (exact), template fingerprints (MinHash LSH, frames)
- `live.py`      the store's active indicators kept current, matched per request before the policy decides
                 (the gateway extension that publishes them as `state.intel`, contracts.IntelWatch)
- `taxii.py`     push a bundle to a TAXII 2.1 collection, pull what is new since the last pull

Detection reads the matcher through `detect/signals/intel.py`; the policy's `intel_match` reads `live.py` (and
detection's signal). docs/intel.md describes what leaves and what never does.
"""
