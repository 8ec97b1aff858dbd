"""Response and request transforms for degraded accounts: strip reasoning, drop logprobs, cap requests."""

from distillshield.gateway.transforms.reasoning import ReasoningFilter, summarize
from distillshield.gateway.transforms.request import cap_request
from distillshield.gateway.transforms.response import ResponseTransform, strip_thinking_blocks

__all__ = ["ReasoningFilter", "ResponseTransform", "cap_request", "strip_thinking_blocks", "summarize"]
