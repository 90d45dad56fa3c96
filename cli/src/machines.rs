//! Finding the amiflow state machines and their executions by name, and starting runs.

use aws_sdk_sfn::Client;
use serde_json::Value;

use crate::failure::{api, Failure};

pub const WORKFLOWS: [&str; 5] = [
    "MigrateInstance",
    "EvacuateZone",
    "ShareImage",
    "UnshareImage",
    "CopyImage",
];

pub struct Machines {
    pub sfn: Client,
    pub s3: aws_sdk_s3::Client,
    pub prefix: String,
}

impl Machines {
    /// The ARN of `<prefix><workflow>`.
    pub async fn arn(&self, workflow: &str) -> Result<String, Failure> {
        let wanted = format!("{}{workflow}", self.prefix);
        let mut pages = self.sfn.list_state_machines().into_paginator().send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(api("ListStateMachines"))?;
            if let Some(m) = page.state_machines().iter().find(|m| m.name() == wanted) {
                return Ok(m.state_machine_arn().to_string());
            }
        }
        Err(format!("no state machine named {wanted} in this account and region; is the amiflow stack deployed here (and --name-prefix right)?").into())
    }

    pub async fn start(
        &self,
        workflow: &str,
        name: &str,
        input: &Value,
    ) -> Result<String, Failure> {
        let arn = self.arn(workflow).await?;
        let started = self
            .sfn
            .start_execution()
            .state_machine_arn(arn)
            .name(name)
            .input(input.to_string())
            .send()
            .await
            .map_err(api("StartExecution"))?;
        Ok(started.execution_arn().to_string())
    }

    /// An execution's ARN from its ARN or its name (looked for in every amiflow workflow).
    pub async fn execution(&self, name_or_arn: &str) -> Result<String, Failure> {
        if name_or_arn.starts_with("arn:") {
            return Ok(name_or_arn.to_string());
        }
        for workflow in WORKFLOWS {
            let machine = match self.arn(workflow).await {
                Ok(machine) => machine,
                Err(Failure::Refused(_)) => continue,
                Err(failure) => return Err(failure),
            };
            let arn = format!(
                "{}:{name_or_arn}",
                machine.replacen(":stateMachine:", ":execution:", 1)
            );
            match self
                .sfn
                .describe_execution()
                .execution_arn(&arn)
                .send()
                .await
            {
                Ok(_) => return Ok(arn),
                Err(e)
                    if e.as_service_error()
                        .is_some_and(|s| s.is_execution_does_not_exist()) => {}
                Err(e) => return Err(api("DescribeExecution")(e)),
            }
        }
        Err(format!("no amiflow execution named {name_or_arn}").into())
    }
}
