"""SendTaskFailure keeps its cause.

AWS: SendTaskFailure takes `error` and `cause`, and the task fails with both
(https://docs.aws.amazon.com/step-functions/latest/apireference/API_SendTaskFailure.html).
moto 5.2.5's response handler passes the error on and drops the cause.
"""

from __future__ import annotations

from moto.core.responses import EmptyResult
from moto.stepfunctions.responses import StepFunctionResponse


def send_task_failure(self: StepFunctionResponse):
    self.stepfunction_backend.send_task_failure(
        self._get_param("taskToken"), error=self._get_param("error"), cause=self._get_param("cause")
    )
    return EmptyResult()


def install() -> None:
    StepFunctionResponse.send_task_failure = send_task_failure
