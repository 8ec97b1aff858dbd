"""Personas: one small module per kind of client, honest (personas/honest) and attacking (personas/attack).

`PERSONAS` maps each persona's name (as used in scenario files and in labels) to its class; each
class's `split` says whether it is a dev, held-out, fresh, fresh2, fresh3 or fresh4 persona.
"""

from __future__ import annotations

from distillshield.simulate.personas.attack.adaptive import Adaptive
from distillshield.simulate.personas.attack.batch_window import BatchWindow
from distillshield.simulate.personas.attack.bulk_harvester import BulkHarvester
from distillshield.simulate.personas.attack.burst_hydra import BurstHydra
from distillshield.simulate.personas.attack.capability_sweep import CapabilitySweep
from distillshield.simulate.personas.attack.cot_harvester import CotHarvester
from distillshield.simulate.personas.attack.cot_paraphraser import CotParaphraser
from distillshield.simulate.personas.attack.crop_desk import CropDesk
from distillshield.simulate.personas.attack.hidden_end_user import HiddenEndUser
from distillshield.simulate.personas.attack.human_sweep import HumanSweep
from distillshield.simulate.personas.attack.hydra import Hydra
from distillshield.simulate.personas.attack.label_distiller import LabelDistiller
from distillshield.simulate.personas.attack.logit_extraction import LogitExtraction
from distillshield.simulate.personas.attack.logprobs_harvester import LogprobsHarvester
from distillshield.simulate.personas.attack.mixed_in_app import MixedInApp
from distillshield.simulate.personas.attack.model_pivot import ModelPivot
from distillshield.simulate.personas.attack.paraphrase_fanout import ParaphraseFanout
from distillshield.simulate.personas.attack.polyglot_sweep import PolyglotSweep
from distillshield.simulate.personas.attack.rapid_cot import RapidCot
from distillshield.simulate.personas.attack.reseller_mix import ResellerMix
from distillshield.simulate.personas.attack.rubric_grader import RubricGrader
from distillshield.simulate.personas.attack.selfinstruct_farm import SelfInstructFarm
from distillshield.simulate.personas.attack.slow_hydra import SlowHydra
from distillshield.simulate.personas.attack.thin_hydra import ThinHydra
from distillshield.simulate.personas.attack.trajectory_farm import TrajectoryFarm
from distillshield.simulate.personas.attack.trivia_sweep import TriviaSweep
from distillshield.simulate.personas.attack.vertical_bank import VerticalBank
from distillshield.simulate.personas.base import (
    Account,
    Context,
    Knobs,
    Limits,
    LiveObserver,
    ModelPlan,
    Persona,
    Req,
)
from distillshield.simulate.personas.honest.agent import Agent
from distillshield.simulate.personas.honest.agent_loop import AgentLoop
from distillshield.simulate.personas.honest.anthropic_platform import AnthropicPlatform
from distillshield.simulate.personas.honest.batch_pipeline import BatchPipeline
from distillshield.simulate.personas.honest.bench_burst import BenchBurst
from distillshield.simulate.personas.honest.casual_chat import CasualChat
from distillshield.simulate.personas.honest.ci_evals import CiEvals
from distillshield.simulate.personas.honest.coding_assistant import CodingAssistant
from distillshield.simulate.personas.honest.copy_agency import CopyAgency
from distillshield.simulate.personas.honest.corporate_nat import CorporateNat
from distillshield.simulate.personas.honest.doc_pipeline import DocPipeline
from distillshield.simulate.personas.honest.education import Education
from distillshield.simulate.personas.honest.enrolment_cohort import EnrolmentCohort
from distillshield.simulate.personas.honest.etl_extract import EtlExtract
from distillshield.simulate.personas.honest.eval_run import EvalRun
from distillshield.simulate.personas.honest.helpdesk_rag import HelpdeskRag
from distillshield.simulate.personas.honest.l10n_batch import L10nBatch
from distillshield.simulate.personas.honest.labeling_pipeline import LabelingPipeline
from distillshield.simulate.personas.honest.law_firm import LawFirm
from distillshield.simulate.personas.honest.light_user import LightUser
from distillshield.simulate.personas.honest.multilingual import Multilingual
from distillshield.simulate.personas.honest.nightly_eval import NightlyEval
from distillshield.simulate.personas.honest.platform_reseller import PlatformReseller
from distillshield.simulate.personas.honest.quiz_app import QuizApp
from distillshield.simulate.personas.honest.rag_support import RagSupport
from distillshield.simulate.personas.honest.research_power_user import ResearchPowerUser
from distillshield.simulate.personas.honest.reseller import Reseller
from distillshield.simulate.personas.honest.school_district import SchoolDistrict
from distillshield.simulate.personas.honest.self_learner import SelfLearner
from distillshield.simulate.personas.honest.student import Student
from distillshield.simulate.personas.honest.support_bot import SupportBot
from distillshield.simulate.personas.honest.translation_app import TranslationApp

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
        SelfLearner,
        # Honest accounts created together (a course's or a school intake's sign-ups): the `dev_cohorts`
        # scenario only, where the cohort evidence of detect/cohort.py is measured against honest waves.
        EnrolmentCohort,
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
        # The published logit-extraction attack (docs/simulator.md, `logit_extraction`): its own scenario,
        # `logit`; not in smoke, dev or heldout, whose figures were measured before it existed.
        LogitExtraction,
        # The fresh split (docs/simulator.md, "Fresh held-out split"): reported once, never tuned on.
        LightUser,
        Student,
        DocPipeline,
        BenchBurst,
        HelpdeskRag,
        PlatformReseller,
        ThinHydra,
        HumanSweep,
        CotParaphraser,
        # The fresh2 split (docs/simulator.md, "Fresh2 held-out split"): defined 2026-12-03 before anyone
        # measured on it; reported once, never tuned on.
        TranslationApp,
        SchoolDistrict,
        LabelingPipeline,
        ResearchPowerUser,
        AnthropicPlatform,
        TriviaSweep,
        LabelDistiller,
        SlowHydra,
        HiddenEndUser,
        PolyglotSweep,
        # The fresh3 split (docs/simulator.md, "Fresh3 held-out split"): defined 2026-12-03 before anyone
        # measured on it; reported once, never tuned on.
        LawFirm,
        SupportBot,
        NightlyEval,
        CopyAgency,
        QuizApp,
        VerticalBank,
        TrajectoryFarm,
        ParaphraseFanout,
        MixedInApp,
        SelfInstructFarm,
        # The fresh4 split (docs/simulator.md, "Fresh4 held-out split"): defined 2026-12-03 before anyone
        # measured on it; about pacing; reported once, never tuned on.
        CiEvals,
        EtlExtract,
        AgentLoop,
        L10nBatch,
        RapidCot,
        BatchWindow,
        BurstHydra,
        CropDesk,
    )
}

__all__ = ["PERSONAS", "Account", "Context", "Knobs", "Limits", "LiveObserver", "ModelPlan", "Persona", "Req"]
