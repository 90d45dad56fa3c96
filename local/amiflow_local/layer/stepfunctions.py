"""SendTaskFailure keeps its cause; executions send their status changes to EventBridge.

AWS: SendTaskFailure takes `error` and `cause`, and the task fails with both
(https://docs.aws.amazon.com/step-functions/latest/apireference/API_SendTaskFailure.html).
moto 5.2.5's response handler passes the error on and drops the cause.

AWS: a standard execution sends a `Step Functions Execution Status Change` event (source
`aws.states`) to the account's default bus when it starts (RUNNING) and when it ends (SUCCEEDED,
FAILED, TIMED_OUT, ABORTED), with `executionArn`, `stateMachineArn`, `name`, `status`, `startDate`
and `stopDate` in milliseconds, `input`, `output`, `error` and `cause`
(https://docs.aws.amazon.com/step-functions/latest/dg/eventbridge-integration.html).
moto 5.2.5 sends none.

AWS: StopExecution stops the execution at once: it is ABORTED from then on
(https://docs.aws.amazon.com/step-functions/latest/apireference/API_StopExecution.html).
moto 5.2.5 keeps it RUNNING until the state it is in returns (a task token wait: until it is
answered or times out), and a stop that comes while a waitForTaskToken task is being set up can
end it FAILED with States.Runtime instead.

AWS: a Task state whose Resource (a Lambda function or a service integration such as
`arn:aws-cn:states:::lambda:invoke`) is in another partition than the execution fails with
`States.Runtime`: "The resource belongs to a different partition from the running execution"
(the Task state's Resource is an ARN, https://docs.aws.amazon.com/step-functions/latest/dg/state-task.html;
in the China Regions the integrations are `arn:aws-cn:states:::…`,
https://docs.amazonaws.cn/en_us/step-functions/latest/dg/lambda-iam.html). moto 5.2.5 runs it.

AWS: `States.Runtime` is neither retried nor caught: it always fails the execution, whatever the
Retry and Catch say; `States.ALL` does not match it, nor the terminal `States.DataLimitExceeded`
(https://docs.aws.amazon.com/step-functions/latest/dg/concepts-error-handling.html). So such a
failure skips the state machine's rollback. moto 5.2.5 matches both with `States.ALL`, and an
explicit `States.Runtime` catches it.

AWS: Step Functions publishes execution metrics to CloudWatch in the `AWS/States` namespace with
the dimension `StateMachineArn`: ExecutionsStarted, ExecutionsSucceeded, ExecutionsFailed,
ExecutionsAborted and ExecutionsTimedOut, each a count of executions
(https://docs.aws.amazon.com/step-functions/latest/dg/procedure-cw-metrics.html). The template's
alarms watch ExecutionsFailed. moto 5.2.5 publishes none.

AWS: a Task state can start an execution of another state machine with the optimized
integration `arn:aws:states:::states:startExecution` (also `.sync` and `.sync:2`, which wait for
it to end). Its Parameters name the API's fields as the state language does, `StateMachineArn`,
`Input` (JSON, or a string) and `Name`; its result has the API response's fields with capital
initials (`ExecutionArn`, `StartDate`, and for `.sync:2` the child's `Status`, `Output` as JSON,
`StopDate` …), dates as Unix milliseconds
(https://docs.aws.amazon.com/step-functions/latest/dg/connect-stepfunctions.html). moto 5.2.5
passes `StateMachineArn` to boto3 as it is, which refuses it, so every such task failed with
`States.Runtime` ("'StateMachineArn'"), and it looked for `ExecutionArn` in boto3's
`executionArn` response.

AWS: GetExecutionHistory answers at most `maxResults` events (100 by default, up to 1,000) with a
`nextToken` for the rest, oldest first, or newest first with `reverseOrder`
(https://docs.aws.amazon.com/step-functions/latest/apireference/API_GetExecutionHistory.html).
moto 5.2.5 ignores all three and answers the whole history, oldest first.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from moto.core.responses import EmptyResult
from moto.stepfunctions.parser.api import ExecutionStatus, HistoryEventType, TaskFailedEventDetails
from moto.stepfunctions.parser.asl.component.common.error_name.error_equals_decl import ErrorEqualsDecl
from moto.stepfunctions.parser.asl.component.common.error_name.failure_event import FailureEvent, FailureEventException
from moto.stepfunctions.parser.asl.component.common.error_name.states_error_name import StatesErrorName
from moto.stepfunctions.parser.asl.component.common.error_name.states_error_name_type import StatesErrorNameType
from moto.stepfunctions.parser.asl.component.state.exec.state_task.service.resource import Resource, ResourceRuntimePart
from moto.stepfunctions.parser.asl.component.state.exec.state_task.service.state_task_service_sfn import StateTaskServiceSfn
from moto.stepfunctions.parser.utils import snake_to_camel_case
from moto.stepfunctions.parser.asl.eval.environment import Environment
from moto.stepfunctions.parser.asl.eval.event.event_detail import EventDetails
from moto.stepfunctions.parser.backend.execution import BaseExecutionWorkerCommunication, Execution
from moto.stepfunctions.responses import StepFunctionResponse
from moto.utilities.utils import get_partition

from .state import faults

log = logging.getLogger(__name__)


def send_task_failure(self: StepFunctionResponse):
    self.stepfunction_backend.send_task_failure(
        self._get_param("taskToken"), error=self._get_param("error"), cause=self._get_param("cause")
    )
    return EmptyResult()


def get_execution_history(self: StepFunctionResponse):
    import base64

    from moto.core.responses import ActionResult

    answer = _original_history(self)
    history = dict(answer.result) if isinstance(answer, ActionResult) else None
    if history is None:
        return answer
    events = list(history.get("events", []))
    if self._get_param("reverseOrder"):
        events.reverse()
    size = int(self._get_param("maxResults") or 100)
    size = 100 if size == 0 else max(1, min(size, 1000))
    token = self._get_param("nextToken")
    start = int(base64.b64decode(token).decode()) if token else 0
    page = {"events": events[start:start + size]}
    if start + size < len(events):
        page["nextToken"] = base64.b64encode(str(start + size).encode()).decode()
    return ActionResult(page)


_original_history = StepFunctionResponse.get_execution_history


def _millis(moment: Any) -> int | None:
    return int(moment.timestamp() * 1000) if moment is not None else None


def status_event(execution: Execution) -> dict[str, Any]:
    from .events import envelope

    status = execution.exec_status.value if execution.exec_status else "RUNNING"
    detail = {
        "executionArn": execution.exec_arn,
        "stateMachineArn": execution.state_machine.arn,
        "name": execution.name,
        "status": status,
        "startDate": _millis(execution.start_date),
        "stopDate": _millis(getattr(execution, "stop_date", None)) if status != "RUNNING" else None,
        "input": execution.input_data if isinstance(execution.input_data, str) else json.dumps(execution.input_data, default=str),
        "output": getattr(execution, "output", None) if status == "SUCCEEDED" else None,
        "error": getattr(execution, "error", None),
        "cause": getattr(execution, "cause", None),
    }
    if isinstance(detail["output"], (dict, list)):
        detail["output"] = json.dumps(detail["output"], default=str)
    return envelope(execution.account_id, execution.region_name, "aws.states",
                    "Step Functions Execution Status Change", [execution.exec_arn], detail)


def _send_status(execution: Execution) -> None:
    from .events import deliver

    status = execution.exec_status.value if execution.exec_status else "RUNNING"
    sent = execution.__dict__.setdefault("amiflow_statuses_sent", set())
    if status in sent:
        return
    sent.add(status)
    try:
        deliver(execution.account_id, execution.region_name, "default", status_event(execution))
    except Exception:  # noqa: BLE001 - an event that cannot be sent must not break the execution
        log.exception("could not send the status change of %s", execution.exec_arn)
    _count(execution, status)


# The execution metric each status counts in.
METRICS = {
    "RUNNING": "ExecutionsStarted",
    "SUCCEEDED": "ExecutionsSucceeded",
    "FAILED": "ExecutionsFailed",
    "ABORTED": "ExecutionsAborted",
    "TIMED_OUT": "ExecutionsTimedOut",
}


def _count(execution: Execution, status: str) -> None:
    from moto.cloudwatch.models import cloudwatch_backends

    cloudwatch_backends[execution.account_id][execution.region_name].put_metric_data("AWS/States", [{
        "MetricName": METRICS[status],
        "Dimensions": [{"Name": "StateMachineArn", "Value": execution.state_machine.arn}],
        "Value": 1,
        "Unit": "Count",
    }])


_original_start = Execution.start
_original_stop = Execution.stop
_original_terminated = BaseExecutionWorkerCommunication.terminated
_original_runtime_part = Resource._eval_runtime_part
_original_error_equals = ErrorEqualsDecl._eval_body


def start(self: Execution) -> None:
    # RUNNING is sent before the worker starts: a short execution may end before start returns.
    _send_status(self)
    _original_start(self)


def stop(self: Execution, stop_date: Any, error: str | None, cause: str | None) -> None:
    running = self.exec_status == ExecutionStatus.RUNNING
    _original_stop(self, stop_date=stop_date, error=error, cause=cause)
    if running:
        # A stop wins over whatever the interpreter makes of the state it interrupts (moto can
        # fail a waitForTaskToken task it stops mid-evaluation, and report that after the stop).
        self.__dict__["amiflow_stopped"] = (stop_date, error or None, cause or None)
        _abort(self)


def _abort(execution: Execution) -> None:
    execution.exec_status = ExecutionStatus.ABORTED
    execution.stop_date, execution.error, execution.cause = execution.__dict__["amiflow_stopped"]
    _send_status(execution)


def terminated(self: BaseExecutionWorkerCommunication) -> None:
    if "amiflow_stopped" in self.execution.__dict__:
        # Stopped: ABORTED already, whatever state the interpreter ended in.
        return
    _original_terminated(self)
    _send_status(self.execution)


def _runtime_error(env: Environment, cause: str) -> FailureEventException:
    # moto puts "An error occurred while executing the state '…'" before the cause, as AWS does.
    return FailureEventException(
        failure_event=FailureEvent(
            env=env,
            error_name=StatesErrorName(typ=StatesErrorNameType.StatesRuntime),
            event_type=HistoryEventType.TaskFailed,
            event_details=EventDetails(
                taskFailedEventDetails=TaskFailedEventDetails(error=StatesErrorNameType.StatesRuntime.to_name(), cause=cause)
            ),
        )
    )


def runtime_part(self: Resource, env: Environment) -> ResourceRuntimePart:
    execution_partition = get_partition(env.aws_execution_details.region)
    if self.partition != execution_partition:
        raise _runtime_error(env, (
            f"The resource belongs to a different partition from the running execution: {self.resource_arn} "
            f"is in {self.partition}, the execution in {execution_partition}."
        ))
    state = env.states.context_object.context_object_data["State"]["Name"]
    if faults.runtime_error_in(state):
        raise _runtime_error(env, "Injected by the local stack's states-runtime fault, as the interpreter fails a state it cannot process.")
    return _original_runtime_part(self, env)


def error_equals(self: ErrorEqualsDecl, env: Environment) -> None:
    error_name = env.stack[-1]
    kind = getattr(error_name, "typ", None)
    wildcard = any(getattr(n, "typ", None) == StatesErrorNameType.StatesALL for n in self.error_names)
    if kind == StatesErrorNameType.StatesRuntime or (kind == StatesErrorNameType.StatesStatesDataLimitExceeded and wildcard):
        env.stack.pop()
        env.stack.append(False)
        return
    _original_error_equals(self, env)


_original_sfn_parameters = StateTaskServiceSfn._normalise_parameters


def _operation(task: StateTaskServiceSfn, service_action_name: str | None):
    import botocore.session

    model = _MODELS.get("stepfunctions")
    if model is None:
        model = _MODELS["stepfunctions"] = botocore.session.get_session().get_service_model("stepfunctions")
    return model.operation_model(snake_to_camel_case(task._get_boto_service_action(service_action_name)))


_MODELS: dict[str, Any] = {}


def sfn_parameters(self: StateTaskServiceSfn, parameters: dict, boto_service_name: str | None = None,
                   service_action_name: str | None = None) -> None:
    # StartExecution's Input becomes a string first (moto's own step), then the state language's
    # names become the API's (StateMachineArn -> stateMachineArn).
    _original_sfn_parameters(self, parameters, boto_service_name, service_action_name)
    self._to_boto_request(parameters, _operation(self, service_action_name).input_shape)


def _millis_everywhere(value: Any) -> Any:
    import datetime

    if isinstance(value, datetime.datetime):
        return int(value.timestamp() * 1000)
    if isinstance(value, dict):
        return {key: _millis_everywhere(inner) for key, inner in value.items()}
    if isinstance(value, list):
        return [_millis_everywhere(inner) for inner in value]
    return value


def sfn_response(self: StateTaskServiceSfn, response: Any, boto_service_name: str | None = None,
                 service_action_name: str | None = None) -> None:
    if not isinstance(response, dict):
        return
    self._from_boto_response(response, _operation(self, service_action_name).output_shape)
    converted = _millis_everywhere(response)
    response.clear()
    response.update(converted)


def install() -> None:
    StateTaskServiceSfn._normalise_parameters = sfn_parameters
    StateTaskServiceSfn._normalise_response = sfn_response
    ErrorEqualsDecl._eval_body = error_equals
    Resource._eval_runtime_part = runtime_part
    StepFunctionResponse.send_task_failure = send_task_failure
    StepFunctionResponse.get_execution_history = get_execution_history
    Execution.start = start
    Execution.stop = stop
    BaseExecutionWorkerCommunication.terminated = terminated
