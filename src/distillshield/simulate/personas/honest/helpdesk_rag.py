"""IT help desk bot (fresh variant of `rag_support`): an organisation's service desk answering its staff.

Imitates an internal RAG app: one account, many end users (staff or students of one organisation,
OpenAI `user` field and `sim.end_user`), each request the same long system prompt with retrieved
help-desk articles plus a short question (VPN, MFA, printing, passwords...), one or two cloud
addresses, office-hours rhythm of the organisation's market. Same behaviour as `rag_support`; new
organisations, articles, questions and system prompt.
"""

from __future__ import annotations

from pydantic import Field

from distillshield.simulate import fresh_text
from distillshield.simulate.personas.honest.rag_support import RagSupport, RagSupportKnobs


class HelpdeskRagKnobs(RagSupportKnobs):
    requests_per_day: float = Field(300.0, gt=0, description="mean requests per app per day")
    end_users: int = Field(1200, ge=1, description="people who may talk to one app over the scenario")


class HelpdeskRag(RagSupport):
    name = "helpdesk_rag"
    split = "fresh"
    Knobs = HelpdeskRagKnobs
    signature = "one help-desk app account, many staff users, a fixed system prompt with retrieved articles"
    companies = fresh_text.HELPDESK_ORGS
    kb_topics = fresh_text.HELPDESK_KB
    questions = fresh_text.HELPDESK_QUESTIONS
    system_template = fresh_text.HELPDESK_SYSTEM
