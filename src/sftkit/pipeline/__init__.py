"""The pipeline of `sftkit run`: stages over one run-directory object.

- `rundir`: `RunDir`, every file name of `runs/<name>/` with its readers and writers;
- `context`: `RunContext`, what the stages of one process share (config, run dir, model);
- the stages: `prepare`, `answers` (baseline, generate), `train`, `evaluate`, `judging`
  (judge; also judging a run or a file for `sftkit evaluate`), `report`;
- `changes`: what a changed configuration does to a started run;
- `run`: the chain, `run_pipeline`.

Example:
    >>> from sftkit.pipeline import STAGES
    >>> [stage.__name__.removeprefix("stage_") for stage in STAGES]
    ['prepare', 'baseline', 'train', 'generate', 'evaluate', 'judge', 'report']
"""

from sftkit.pipeline.answers import stage_baseline, stage_generate
from sftkit.pipeline.context import RunContext
from sftkit.pipeline.evaluate import format_comparison, stage_evaluate
from sftkit.pipeline.judging import evaluate_responses, resolve_target, stage_judge
from sftkit.pipeline.prepare import stage_prepare
from sftkit.pipeline.report import stage_report, write_report
from sftkit.pipeline.run import STAGES, run_pipeline, run_stages
from sftkit.pipeline.rundir import RunDir
from sftkit.pipeline.train import stage_train

__all__ = ["STAGES", "RunContext", "RunDir", "evaluate_responses", "format_comparison",
           "resolve_target", "run_pipeline", "run_stages", "stage_baseline", "stage_evaluate",
           "stage_generate", "stage_judge", "stage_prepare", "stage_report", "stage_train",
           "write_report"]
