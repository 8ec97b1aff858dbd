"""Personas: one small module per kind of client, honest (personas/honest) and attacking (personas/attack).

`PERSONAS` maps each persona's name (as used in scenario files and in labels) to its class.
"""

from __future__ import annotations

from distillshield.simulate.personas.attack.adaptive import Adaptive
from distillshield.simulate.personas.attack.bulk_harvester import BulkHarvester
from distillshield.simulate.personas.attack.capability_sweep import CapabilitySweep
from distillshield.simulate.personas.attack.cot_harvester import CotHarvester
from distillshield.simulate.personas.attack.hydra import Hydra
from distillshield.simulate.personas.attack.logprobs_harvester import LogprobsHarvester
from distillshield.simulate.personas.attack.model_pivot import ModelPivot
from distillshield.simulate.personas.attack.reseller_mix import ResellerMix
from distillshield.simulate.personas.attack.rubric_grader import RubricGrader
from distillshield.simulate.personas.base import Account, Context, Knobs, Limits, ModelPlan, Persona, Req
from distillshield.simulate.personas.honest.agent import Agent
from distillshield.simulate.personas.honest.batch_pipeline import BatchPipeline
from distillshield.simulate.personas.honest.casual_chat import CasualChat
from distillshield.simulate.personas.honest.coding_assistant import CodingAssistant
from distillshield.simulate.personas.honest.corporate_nat import CorporateNat
from distillshield.simulate.personas.honest.education import Education
from distillshield.simulate.personas.honest.eval_run import EvalRun
from distillshield.simulate.personas.honest.multilingual import Multilingual
from distillshield.simulate.personas.honest.rag_support import RagSupport
from distillshield.simulate.personas.honest.reseller import Reseller

PERSONAS: dict[str, type[Persona]] = {
    p.name: p
    for p in (
        CasualChat,
        CodingAssistant,
        BatchPipeline,
        EvalRun,
        Agent,
        RagSupport,
        Multilingual,
        CorporateNat,
        Education,
        Reseller,
        BulkHarvester,
        CotHarvester,
        CapabilitySweep,
        RubricGrader,
        Hydra,
        LogprobsHarvester,
        ModelPivot,
        ResellerMix,
        Adaptive,
    )
}

__all__ = ["PERSONAS", "Account", "Context", "Knobs", "Limits", "ModelPlan", "Persona", "Req"]
