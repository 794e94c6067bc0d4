"""Simulated annotators on the Label Studio side: users that submit given choices as real annotations.

Benchmarks and demos decide the choices elsewhere. This module only creates the users and posts one
annotation per (task, annotator), which ``completed_by`` attributes to that annotator.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

from connectors.labelstudio.client import CHOICES, Choice, LabelStudioClient
from engine.errors import InputError

logger = logging.getLogger(__name__)

ANNOTATOR_EMAIL = "sim-annotator-{number}@prefscout.local"


def ensure_annotators(client: LabelStudioClient, count: int) -> list[int]:
    """Return the user ids of sim-annotator-1@prefscout.local ... sim-annotator-`count`, creating missing ones."""
    if count < 1:
        raise InputError(f"invalid annotator count {count}; expected 1 or more")

    ids_by_email = {email: user_id for user_id, email in client.users(refresh=True).items()}
    annotator_ids = []
    for number in range(1, count + 1):
        email = ANNOTATOR_EMAIL.format(number=number)
        user_id = ids_by_email.get(email)
        if user_id is None:
            user_id = client.create_user(email)
        annotator_ids.append(user_id)
    return annotator_ids


def submit_annotations(
    client: LabelStudioClient,
    project_id: int,
    answers: Mapping[int, Sequence[Choice]],
    annotator_ids: Sequence[int],
) -> int:
    """Post ``answers[task_id][i]`` as an annotation by ``annotator_ids[i]``; return the number created.

    An annotator who already has an annotation on a task (submitted, skipped or invalid) is not asked
    again, so running this twice creates nothing new. A "skip" becomes a cancelled annotation.
    Each annotation is one request (120-190 ms each, measured with label-studio 1.23.2 on 2 cores).
    """
    _validate_answers(answers, annotator_ids)

    answered = {
        (int(annotation["task"]), annotation.get("completed_by"))
        for annotation in client.raw_annotations(project_id)
    }
    created = 0
    for task_id, choices in answers.items():
        for annotator_id, choice in zip(annotator_ids, choices):
            if (task_id, annotator_id) in answered:
                continue
            client.create_annotation(task_id, choice, completed_by=annotator_id)
            answered.add((task_id, annotator_id))
            created += 1

    logger.info("Submitted %d simulated annotations to project %d", created, project_id)
    return created


def _validate_answers(answers: Mapping[int, Sequence[Choice]], annotator_ids: Sequence[int]) -> None:
    if len(set(annotator_ids)) != len(annotator_ids):
        raise InputError(f"duplicate ids in annotator_ids {list(annotator_ids)}; pass each annotator once")
    for task_id, choices in answers.items():
        if len(choices) != len(annotator_ids):
            raise InputError(
                f"task {task_id} has {len(choices)} answers for {len(annotator_ids)} annotators; "
                "expected one answer per annotator"
            )
        for choice in choices:
            if choice not in CHOICES:
                raise InputError(f"invalid choice {choice!r} for task {task_id}; expected one of {', '.join(CHOICES)}")
