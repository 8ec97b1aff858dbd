"""Document pipeline (fresh variant of `batch_pipeline`): a new fixed instruction over documents, 24/7.

Imitates an enterprise back-office job that runs one instruction it was written for (redact personal
data, turn text into FAQ entries, rewrite in plain language, tag topics) over a stream of documents,
at a machine-regular rate day and night, temperature 0, from one cloud address. Same behaviour as
`batch_pipeline`; the wording of the instructions is new, so a detector cannot have memorised it.
"""

from __future__ import annotations

from pydantic import Field, field_validator

from distillshield.simulate import fresh_text
from distillshield.simulate.personas.honest.batch_pipeline import BatchPipeline, BatchPipelineKnobs

DOC_TASKS = tuple(fresh_text.DOC_PIPELINE_TEMPLATES)


class DocPipelineKnobs(BatchPipelineKnobs):
    requests_per_day: float = Field(1500.0, gt=0, description="documents per pipeline per day")
    tasks: list[str] = Field(
        default_factory=lambda: list(DOC_TASKS), description=f"tasks pipelines may run, from {', '.join(DOC_TASKS)}"
    )

    @field_validator("tasks")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:  # replaces BatchPipelineKnobs._known (same name)
        bad = [t for t in v if t not in fresh_text.DOC_PIPELINE_TEMPLATES]
        if bad or not v:
            raise ValueError(f"unknown task(s) {bad or '[]'}; choose from {', '.join(DOC_TASKS)}")
        return v


class DocPipeline(BatchPipeline):
    name = "doc_pipeline"
    split = "fresh"
    Knobs = DocPipelineKnobs
    signature = "one new fixed instruction per account over many documents, machine-regular, around the clock"
    templates = fresh_text.DOC_PIPELINE_TEMPLATES
