"""Dead letters of a stage: its own rejections (tagged DEAD by its DoFns) and its unexpected
exceptions (Beam's failed elements), made into DeadLetters by the stage that caused them."""
from __future__ import annotations

from typing import Callable, Iterable, List, Tuple

import apache_beam as beam

from synanno_datagen.transforms.records import DEAD, DeadLetter, Instance, exception_text


def failure_to_dead_letters(failure, reason: str, stage: str,
                            instances_of: Callable[[object], Iterable[Instance]]
                            ) -> List[DeadLetter]:
    """Beam's (element, (type, repr, traceback)) -> one DeadLetter per instance the element
    holds (``instances_of`` knows the stage's element type), arrays dropped."""
    element, (exc_type, exc_repr, _) = failure
    details = exception_text(exc_type, exc_repr)
    return [DeadLetter.for_instance(i, reason, details, stage)
            for i in sorted(instances_of(element), key=lambda i: i.instance_id)]


def of_crop(crop) -> List[Instance]:
    """``instances_of`` for a stage whose elements are Crops (Fetched, Cleaned, Varied)."""
    return [crop.instance]


def guarded_pardo(pcoll, label: str, fn: beam.DoFn, reason: str, stage: str,
                  instances_of=of_crop) -> Tuple[beam.PCollection, beam.PCollection]:
    """``pcoll | ParDo(fn)``: (its main output, its DeadLetters). An exception in ``fn`` becomes
    a ``reason`` dead letter for the element's instances instead of failing the run; DeadLetters
    that ``fn`` yields on the DEAD tag are kept."""
    out = pcoll | label >> beam.ParDo(fn).with_exception_handling(use_subprocess=False)
    failed = out.bad | f"{label}Failures" >> beam.FlatMap(
        failure_to_dead_letters, reason, stage, instances_of)
    dead = (out[DEAD], failed) | f"{label}DeadLetters" >> beam.Flatten()
    return out.good, dead
