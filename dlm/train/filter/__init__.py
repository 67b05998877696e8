"""Training of the learned unmasking filter of ``learned_filter`` (Learn2PD, arXiv:2509.25188; the filter itself is
:mod:`dlm.filter`).

Three stages, each usable alone:

1. :mod:`.collect`: decode every prompt with the reference, LLaDA's ``low_confidence`` one token per step at
   temperature 0, through ``model.generate``, with a scheduler that *is* the reference plus a recorder
   (:class:`~.collect.ReferenceRecorder`): at every step it keeps, for the active block of every row still decoding,
   each position's candidate token, its confidence, margin and entropy, and which positions are still masked. When
   the decode is over, every recorded masked position gets the label "its candidate at that step equals the final
   output". The paper decodes twice (once for the final output, once to record); at temperature 0 the recording
   run is the reference run itself (the recorder decides exactly what ``low_confidence`` decides), so one decode
   gives both and the labels are computed afterwards. Positions filled by the stop rule (EOS after the answer's
   end) are labelled against the EOS they finally hold. The data: :class:`~.dataset.FilterData`.
2. :mod:`.fit`: fit a :class:`~dlm.filter.FilterNet` with binary cross-entropy on the masked positions, AdamW
   (lr 3e-3), cosine decay; the epoch with the lowest validation loss is kept.
3. :mod:`.tune`: decode held-out prompts with the ``learned_filter`` scheduler at a grid of thresholds and keep
   the one with the fewest forward passes whose answers still equal the reference's for all but
   ``max_disagreement`` of the prompts.

:func:`~.pipeline.run` chains them (``dlm train-filter``, :mod:`.cli`) and writes the filter as
``FILE.safetensors`` + ``FILE.json``; :mod:`.prompts` makes the prompts.
"""

from .collect import ReferenceRecorder, StepRecord, collect, collect_parallel, data_fingerprint, recording_scheduler
from .dataset import FilterData
from .fit import (TrainSettings, accept_probabilities, bce, confidence_metrics, filter_metrics, samples, train,
                  windows)
from .pipeline import run
from .prompts import Prompt, code_prompts, encode_prompts, read_prompts, task_prompts
from .tune import decode, decode_metrics, tune_threshold, within_disagreement

__all__ = [
    "FilterData", "Prompt", "ReferenceRecorder", "StepRecord", "TrainSettings", "accept_probabilities", "bce",
    "code_prompts", "collect", "collect_parallel", "confidence_metrics", "data_fingerprint", "decode",
    "decode_metrics", "encode_prompts", "filter_metrics", "read_prompts", "recording_scheduler", "run", "samples",
    "task_prompts", "train", "tune_threshold", "windows", "within_disagreement",
]
