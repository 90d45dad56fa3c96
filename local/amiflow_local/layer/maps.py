"""A Distributed Map's ResultWriter writes the children's results to S3.

AWS: a Distributed Map state with a `ResultWriter` (`arn:aws:states:::s3:putObject`, Parameters
`Bucket` and `Prefix`) exports the results of its child workflow executions to S3: under
`<Prefix>/<map run id>/` it writes `manifest.json` (`DestinationBucket`, `MapRunArn`, and
`ResultFiles` with the `SUCCEEDED`, `FAILED` and `PENDING` files, each `{"Key", "Size"}`) and the
result files themselves, `SUCCEEDED_0.json` and so on: JSON arrays with one record per child
workflow execution whose `Status` is its status and whose `Output` is its output as a JSON string.
The state's output is then `{"MapRunArn", "ResultWriterDetails": {"Bucket", "Key"}}`, the key being
the manifest's (https://docs.aws.amazon.com/step-functions/latest/dg/input-output-resultwriter.html).
moto 5.2.5 writes the manifest with every list of `ResultFiles` empty and drops the results
("TODO: generate result files"), so whoever reads them finds nothing.

AWS: the ResultWriter's (and ItemReader's) `Bucket.$`, `Key.$` and `Prefix.$` are reference paths
"to an existing key-value pair in your Distributed Map state input"
(https://docs.aws.amazon.com/step-functions/latest/dg/iam-policies-eg-dist-map.html). moto 5.2.5
evaluates the ResultWriter's against the Map's results instead, so a path to the input fails the
execution with States.Runtime.

Here the paths are read from the state's input, and the results are written as AWS writes them: one `SUCCEEDED_0.json` with a record per child
that ended, in item order, and the manifest names it. moto keeps neither the children's execution
ARNs nor their inputs, so a record carries `Status`, `Output` and `OutputDetails` only; a child
that failed fails the whole Map on moto (no tolerance is used here), so there is no FAILED file to
write.
"""

from __future__ import annotations

import json
from typing import Any

from moto.stepfunctions.parser.asl.component.state.exec.state_map.result_writer.resource_eval import resource_eval_s3
from moto.stepfunctions.parser.asl.component.state.exec.state_map.result_writer.resource_eval.resource_eval_s3 import ResourceEvalS3
from moto.stepfunctions.parser.asl.component.state.exec.state_map.result_writer.result_writer_decl import ResultWriter
from moto.stepfunctions.parser.asl.component.state.exec.state_task.credentials import StateCredentials
from moto.stepfunctions.parser.asl.component.state.exec.state_task.service.resource import ResourceRuntimePart
from moto.stepfunctions.parser.asl.eval.environment import Environment


def records(outputs: list[Any]) -> list[dict[str, Any]]:
    """One result-file record per child output, as AWS writes them for SUCCEEDED children."""
    out = []
    for output in outputs:
        text = json.dumps(output, separators=(",", ":"))
        out.append({"Status": "SUCCEEDED", "Output": text, "OutputDetails": {"Included": True}})
    return out


def manifest(bucket: str, map_run_arn: str, succeeded_key: str, size: int) -> dict[str, Any]:
    return {
        "DestinationBucket": bucket,
        "MapRunArn": map_run_arn,
        "ResultFiles": {"FAILED": [], "PENDING": [], "SUCCEEDED": [{"Key": succeeded_key, "Size": size}]},
    }


def put_object(env: Environment, resource_runtime_part: ResourceRuntimePart, state_credentials: StateCredentials) -> None:
    parameters = env.stack.pop()
    outputs = env.stack.pop()
    s3 = resource_eval_s3.ResourceEvalS3._get_s3_client(resource_runtime_part=resource_runtime_part,
                                                       state_credentials=state_credentials)
    map_run_record = env.map_run_record_pool_manager.get_all()[-1]
    map_run_arn = map_run_record.map_run_arn
    prefix = parameters.get("Prefix", "")
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    folder = prefix + map_run_arn.split(":")[-1] + "/"
    bucket = parameters["Bucket"]
    body = json.dumps(records(outputs if isinstance(outputs, list) else [])).encode()
    s3.put_object(Bucket=bucket, Key=folder + "SUCCEEDED_0.json", Body=body)
    key = folder + "manifest.json"
    s3.put_object(Bucket=bucket, Key=key,
                  Body=json.dumps(manifest(bucket, map_run_arn, folder + "SUCCEEDED_0.json", len(body))).encode())
    env.stack.append({"MapRunArn": map_run_arn, "ResultWriterDetails": {"Bucket": bucket, "Key": key}})


def result_writer(self: ResultWriter, env: Environment) -> None:
    """Evaluates the Parameters against the state's input (the results stay below it on the stack
    for put_object)."""
    env.stack.append(env.states.get_input())
    self.parargs.eval(env=env)
    parameters = env.stack.pop()
    env.stack.pop()
    env.stack.append(parameters)
    self.resource_eval.eval_resource(env=env)


def install() -> None:
    ResourceEvalS3._handle_put_object = staticmethod(put_object)
    ResultWriter._eval_body = result_writer
