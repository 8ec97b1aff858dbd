"""Per-account output watermarks, their detection and attribution, and the suspect-model audit.

- keys.py: HMAC key derivation per account/cluster and the seeding function all schemes share
- kgw.py: GreenListWatermark (Kirchenbauer et al.): processor and detector side by side
- gumbel.py: GumbelWatermark: distortion-free keyed Gumbel-max sampling and its detector
- tournament.py: TournamentWatermark: SynthID-style tournament sampling (distortion-free per step, still
  random) and its mean-score detector
- weights.py: entropy-weighted detection for the tournament (per-token weights from the model, and the
  weighted count's exact null)
- stats.py: exact one-sided p-values, Holm/Bonferroni correction
- attribution.py: test a text under every account key and name the likely sources
- radioactivity.py: was a suspect model trained on our watermarked outputs? (Sander et al. 2024)
- tokenizer.py: the Tokenizer interface and the embedded model's tokenizer
- gateway.py: WatermarkRegistry (per-account mode, set by the policy) and the gateway Extension
- vllm.py: the same watermark as a vLLM logits processor, for HTTP upstreams
"""

from distillshield.watermark.attribution import Attribution, attribute
from distillshield.watermark.base import Detection, scored_pairs
from distillshield.watermark.detect import Detector
from distillshield.watermark.gumbel import GumbelWatermark
from distillshield.watermark.keys import KeyRing, WatermarkKey, derive_key, key_label
from distillshield.watermark.kgw import GreenListWatermark
from distillshield.watermark.radioactivity import radioactivity_test
from distillshield.watermark.schemes import build_scheme
from distillshield.watermark.tournament import TournamentWatermark
from distillshield.watermark.weights import ModelWeigher, TokenWeigher

__all__ = [
    "Attribution",
    "Detection",
    "Detector",
    "GreenListWatermark",
    "GumbelWatermark",
    "KeyRing",
    "ModelWeigher",
    "TokenWeigher",
    "TournamentWatermark",
    "WatermarkKey",
    "attribute",
    "build_scheme",
    "derive_key",
    "key_label",
    "radioactivity_test",
    "scored_pairs",
]
