"""What a gateway runs beside its hot path, composed here rather than listed inside the gateway.

`standard_extensions()` is the set `distillshield serve` hands to `gateway.app.build_app`: the watermark,
online detection and imported threat intelligence matched per request (each switched off by its own
settings). A deployment that wants another extension, or none (a fleet replica whose detection runs in
`distillshield worker detect` still builds it, switched off by `detection.enabled: false`), passes its own
list of factories (gateway/extensions.py declares the shape).
"""

from __future__ import annotations

from distillshield.gateway.extensions import ExtensionFactory


def standard_extensions() -> list[ExtensionFactory]:
    """The watermark, detection, then imported threat intelligence matched per request (start order; imported
    here, so the gateway stays free of all three)."""
    from distillshield.detect.online import detection_extension
    from distillshield.intel.live import intel_extension
    from distillshield.watermark.gateway import watermark_extension

    return [watermark_extension, detection_extension, intel_extension]
