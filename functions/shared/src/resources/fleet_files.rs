//! A fleet's files in S3, under `fleets/<execution>/`: the plan, each wave's items (which the
//! Distributed Map reads with its ItemReader), the children's results (which Step Functions writes
//! with the Map's ResultWriter), and the report. A fleet's plan and results grow with the fleet,
//! so they live here, not in the execution's state, which Step Functions caps at 256 KiB
//! (https://docs.aws.amazon.com/step-functions/latest/dg/service-quotas.html).

use aws_sdk_s3::primitives::ByteStream;
use serde_json::{json, Value};

use crate::error::{aws, Error, Result};

pub struct FleetFiles<'a> {
    pub s3: &'a aws_sdk_s3::Client,
    pub bucket: &'a str,
}

/// Where a fleet's files are. Pure.
pub fn prefix(execution: &str) -> String {
    format!("fleets/{execution}/")
}

pub fn plan_key(execution: &str) -> String {
    format!("{}plan.json", prefix(execution))
}

pub fn report_key(execution: &str) -> String {
    format!("{}report.json", prefix(execution))
}

/// The items of wave `index`, a JSON array the Map reads (ReaderConfig InputType JSON).
pub fn wave_key(execution: &str, index: usize) -> String {
    format!("{}waves/{index}.json", prefix(execution))
}

/// Where the Map of wave `index` writes its results: Step Functions adds the Map Run's id, then
/// `manifest.json` and the result files.
pub fn results_prefix(execution: &str, index: usize) -> String {
    format!("{}results/{index}", prefix(execution))
}

pub fn results_root(execution: &str) -> String {
    format!("{}results/", prefix(execution))
}

pub fn s3_uri(bucket: &str, key: &str) -> String {
    format!("s3://{bucket}/{key}")
}

/// The bucket and key of an `s3://bucket/key` location (`s3_uri`'s inverse). Pure.
pub fn bucket_and_key(location: &str) -> Option<(&str, &str)> {
    location.strip_prefix("s3://")?.split_once('/')
}

impl FleetFiles<'_> {
    pub async fn put(&self, key: &str, value: &Value) -> Result<()> {
        let body = serde_json::to_vec(value).expect("a value is JSON");
        self.s3
            .put_object()
            .bucket(self.bucket)
            .key(key)
            .content_type("application/json")
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(aws("PutObject"))?;
        Ok(())
    }

    pub async fn get(&self, key: &str) -> Result<Value> {
        let answer = self
            .s3
            .get_object()
            .bucket(self.bucket)
            .key(key)
            .send()
            .await
            .map_err(aws("GetObject"))?;
        let bytes = answer.body.collect().await.map_err(|e| {
            Error::ServiceUnavailable(format!("GetObject s3://{}/{key}: {e}", self.bucket).into())
        })?;
        serde_json::from_slice(&bytes.into_bytes()).map_err(|e| {
            Error::UnexpectedAnswer(format!("s3://{}/{key} is not JSON: {e}", self.bucket).into())
        })
    }

    /// Every key under `prefix`, over all of ListObjectsV2's pages.
    pub async fn keys(&self, prefix: &str) -> Result<Vec<String>> {
        let mut keys = Vec::new();
        let mut pages = self
            .s3
            .list_objects_v2()
            .bucket(self.bucket)
            .prefix(prefix)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(aws("ListObjectsV2"))?;
            keys.extend(
                page.contents()
                    .iter()
                    .filter_map(|o| o.key().map(str::to_string)),
            );
        }
        Ok(keys)
    }

    /// What every child workflow of the Maps under `root` returned: each Map Run's manifest
    /// names its result files, whose records are read into outputs (`outputs_of`).
    pub async fn results(&self, root: &str) -> Result<Vec<Value>> {
        let mut outputs = Vec::new();
        for manifest_key in self
            .keys(root)
            .await?
            .into_iter()
            .filter(|k| k.ends_with("/manifest.json"))
        {
            let manifest = self.get(&manifest_key).await?;
            for key in result_files(&manifest) {
                outputs.extend(outputs_of(self.get(&key).await?));
            }
        }
        Ok(outputs)
    }
}

/// The result files a Map Run's manifest names, succeeded, failed and pending alike
/// (https://docs.aws.amazon.com/step-functions/latest/dg/input-output-resultwriter.html). Pure.
pub fn result_files(manifest: &Value) -> Vec<String> {
    ["SUCCEEDED", "FAILED", "PENDING"]
        .iter()
        .flat_map(|status| {
            manifest["ResultFiles"][status]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .filter_map(|f| f["Key"].as_str().map(str::to_string))
        .collect()
}

/// A result file's records as the outputs of the children: a succeeded child workflow's output
/// (a JSON string), or, for one that failed or never ended, an entry naming its instance (from
/// its input) with its status, error and cause. Pure.
pub fn outputs_of(records: Value) -> Vec<Value> {
    let parse = |v: &Value| -> Value {
        v.as_str()
            .and_then(|s| serde_json::from_str(s).ok())
            .unwrap_or(Value::Null)
    };
    records
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|record| {
            let status = record["Status"].as_str().unwrap_or("FAILED");
            if status == "SUCCEEDED" {
                return parse(&record["Output"]);
            }
            let input = parse(&record["Input"]);
            json!({
                "instanceId": input["child"]["instanceId"],
                "status": "FAILED",
                "error": record["Error"].as_str().map(str::to_string)
                    .unwrap_or_else(|| format!("MapChild{}", status.to_lowercase())),
                "cause": record["Cause"],
            })
        })
        .filter(|v| v.is_object())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fleets_files_sit_under_its_execution() {
        assert_eq!(plan_key("f1"), "fleets/f1/plan.json");
        assert_eq!(wave_key("f1", 2), "fleets/f1/waves/2.json");
        assert_eq!(results_prefix("f1", 2), "fleets/f1/results/2");
        assert!(results_prefix("f1", 2).starts_with(&results_root("f1")));
        assert_eq!(
            s3_uri("b", &report_key("f1")),
            "s3://b/fleets/f1/report.json"
        );
        assert_eq!(
            bucket_and_key("s3://amiflow-fleets/fleets/evac/report.json"),
            Some(("amiflow-fleets", "fleets/evac/report.json"))
        );
        assert_eq!(bucket_and_key("fleets/evac/report.json"), None);
    }

    #[test]
    fn a_manifest_names_every_result_file() {
        let manifest = json!({
            "DestinationBucket": "b",
            "MapRunArn": "arn:aws:states:us-east-1:1:mapRun:EvacuateZone/Instances:abc",
            "ResultFiles": {
                "FAILED": [{"Key": "r/abc/FAILED_0.json", "Size": 10}],
                "PENDING": [],
                "SUCCEEDED": [{"Key": "r/abc/SUCCEEDED_0.json", "Size": 20},
                              {"Key": "r/abc/SUCCEEDED_1.json", "Size": 5}]
            }
        });
        assert_eq!(
            result_files(&manifest),
            [
                "r/abc/SUCCEEDED_0.json",
                "r/abc/SUCCEEDED_1.json",
                "r/abc/FAILED_0.json"
            ]
        );
        assert!(result_files(&json!({})).is_empty());
    }

    #[test]
    fn records_become_outputs_and_a_failed_child_workflow_names_its_instance() {
        let records = json!([
            {"Status": "SUCCEEDED", "Output": "{\"instanceId\":\"i-1\",\"status\":\"SUCCEEDED\"}",
             "Input": "{}"},
            {"Status": "FAILED", "Error": "States.Timeout", "Cause": "too long",
             "Input": "{\"child\":{\"instanceId\":\"i-2\"}}"},
            {"Status": "SUCCEEDED", "Output": "not json"}
        ]);
        let outputs = outputs_of(records);
        assert_eq!(outputs.len(), 2);
        assert_eq!(outputs[0]["instanceId"], "i-1");
        assert_eq!(outputs[1]["instanceId"], "i-2");
        assert_eq!(outputs[1]["status"], "FAILED");
        assert_eq!(outputs[1]["error"], "States.Timeout");
        assert_eq!(outputs[1]["cause"], "too long");
    }
}
