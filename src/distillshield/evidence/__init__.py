"""Evidence bundles for one account or cluster: report, charts, watermark results and the audit-log
hash-chain proof of the rows cited (bundle.py builds, verify.py checks)."""

from distillshield.evidence.bundle import (
    Traffic,
    build_bundle,
    chained_traffic,
    traffic_from_file,
    traffic_from_store,
    watermark_detector,
)
from distillshield.evidence.collect import EvidenceError, load_report
from distillshield.evidence.verify import BundleCheck, verify_bundle

__all__ = [
    "BundleCheck",
    "EvidenceError",
    "Traffic",
    "build_bundle",
    "chained_traffic",
    "load_report",
    "traffic_from_file",
    "traffic_from_store",
    "verify_bundle",
    "watermark_detector",
]
