//! The run lock: one MigrateInstance at a time per source instance.
//!
//! create-image takes the lock after the input is checked and before the AMI is made; cleanup
//! gives it back at the end, either way. The lock is one DynamoDB item per instance, written with
//! a condition, so two runs racing for it cannot both win. Its holder is an execution ARN: a
//! holder that is no longer RUNNING (aborted by an operator, or ended without its cleanup) is
//! taken over, so a lost release never blocks an instance for longer than one DescribeExecution.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;

use crate::error::{aws, Error, Result};

/// DynamoDB removes a lock nobody gave back after this long (longer than any run can last).
pub const LOCK_TTL_SECONDS: u64 = 7 * 24 * 3600;

/// The lock table and the clients that read the holder.
pub struct RunLock<'a> {
    pub ddb: &'a aws_sdk_dynamodb::Client,
    pub sfn: &'a aws_sdk_sfn::Client,
    pub table: &'a str,
}

/// Who asks for the lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimant<'a> {
    pub execution: &'a str,
    pub execution_arn: &'a str,
}

/// What to do when the lock is held by another execution, given that execution's status
/// (`None`: Step Functions does not know it). Pure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Contention {
    /// The holder still runs: this run must not start.
    Busy,
    /// The holder has ended without giving the lock back: take it over.
    TakeOver,
}

pub fn contention(holder_status: Option<&str>) -> Contention {
    match holder_status {
        Some("RUNNING") | Some("PENDING_REDRIVE") => Contention::Busy,
        _ => Contention::TakeOver,
    }
}

fn busy(resource: &str, holder: &str) -> Error {
    Error::InstanceBusy(format!(
        "instanceId: {resource} is being migrated by execution {holder}; wait for it to end or stop it"
    ).into())
}

/// A conditional write whose condition did not hold.
const CONDITION_FAILED: &str = "ConditionalCheckFailedException";

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

impl RunLock<'_> {
    fn item(&self, resource: &str, who: &Claimant<'_>) -> HashMap<String, AttributeValue> {
        HashMap::from([
            ("resourceId".into(), AttributeValue::S(resource.into())),
            ("execution".into(), AttributeValue::S(who.execution.into())),
            (
                "executionArn".into(),
                AttributeValue::S(who.execution_arn.into()),
            ),
            (
                "expiresAt".into(),
                AttributeValue::N((now() + LOCK_TTL_SECONDS).to_string()),
            ),
        ])
    }

    /// Writes the lock if `condition` holds; false when it does not.
    async fn put_if(
        &self,
        resource: &str,
        who: &Claimant<'_>,
        condition: &str,
        values: HashMap<String, AttributeValue>,
    ) -> Result<bool> {
        let put = self
            .ddb
            .put_item()
            .table_name(self.table)
            .set_item(Some(self.item(resource, who)))
            .condition_expression(condition)
            .set_expression_attribute_values(Some(values))
            .send()
            .await;
        match put.map_err(aws("PutItem")) {
            Ok(_) => Ok(true),
            Err(e) if e.is_code(CONDITION_FAILED) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Creates the failure counter of an EvacuateZone run (`fleet#<execution>`, failures 0), which
    /// the state machine reads before each child and adds to when one fails. A retried plan
    /// leaves a counter already there as it is.
    pub async fn open_counter(&self, key: &str) -> Result<()> {
        let written = self
            .ddb
            .put_item()
            .table_name(self.table)
            .item("resourceId", AttributeValue::S(key.into()))
            .item("failures", AttributeValue::N("0".into()))
            .item(
                "expiresAt",
                AttributeValue::N((now() + LOCK_TTL_SECONDS).to_string()),
            )
            .condition_expression("attribute_not_exists(resourceId)")
            .send()
            .await
            .map_err(aws("PutItem"));
        match written {
            Ok(_) => Ok(()),
            Err(e) if e.is_code(CONDITION_FAILED) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Takes the lock on `resource` for `who`, or fails with `InstanceBusy` naming the holder.
    /// Taking it again for the same execution (a retried create-image) succeeds.
    pub async fn acquire(&self, resource: &str, who: &Claimant<'_>) -> Result<()> {
        match self.try_acquire(resource, who).await? {
            None => Ok(()),
            Some(holder) => Err(busy(resource, &holder)),
        }
    }

    /// Takes the lock on `resource` for `who`: `None` when taken, or the execution ARN of the
    /// running execution that holds it.
    pub async fn try_acquire(&self, resource: &str, who: &Claimant<'_>) -> Result<Option<String>> {
        let mine = HashMap::from([(
            ":me".to_string(),
            AttributeValue::S(who.execution_arn.into()),
        )]);
        if self
            .put_if(
                resource,
                who,
                "attribute_not_exists(resourceId) OR executionArn = :me",
                mine,
            )
            .await?
        {
            tracing::info!(resource, execution = who.execution, "run lock taken");
            return Ok(None);
        }
        let held = self
            .ddb
            .get_item()
            .table_name(self.table)
            .key("resourceId", AttributeValue::S(resource.into()))
            .consistent_read(true)
            .send()
            .await
            .map_err(aws("GetItem"))?;
        let Some(holder) = held
            .item()
            .and_then(|i| i.get("executionArn"))
            .and_then(|v| v.as_s().ok())
            .cloned()
        else {
            // Given back between the two calls: the next attempt of this step takes it.
            return Err(Error::Throttled(
                format!("run lock on {resource}: released while being read; retry").into(),
            ));
        };
        let status = match self
            .sfn
            .describe_execution()
            .execution_arn(&holder)
            .send()
            .await
            .map_err(aws("DescribeExecution"))
        {
            Ok(d) => Some(d.status().as_str().to_string()),
            Err(e) if e.is_code("ExecutionDoesNotExist") => None,
            Err(e) => return Err(e),
        };
        if contention(status.as_deref()) == Contention::Busy {
            return Ok(Some(holder));
        }
        let theirs = HashMap::from([(":holder".to_string(), AttributeValue::S(holder.clone()))]);
        if self
            .put_if(resource, who, "executionArn = :holder", theirs)
            .await?
        {
            tracing::warn!(resource, previous = %holder, status = ?status, "run lock taken over from an ended execution");
            Ok(None)
        } else {
            Ok(Some("that took it over at the same moment".to_string()))
        }
    }

    /// Gives the lock back if `execution` holds it; true when it did.
    pub async fn release(&self, resource: &str, execution: &str) -> Result<bool> {
        let deleted = self
            .ddb
            .delete_item()
            .table_name(self.table)
            .key("resourceId", AttributeValue::S(resource.into()))
            .condition_expression("execution = :me")
            .expression_attribute_values(":me", AttributeValue::S(execution.into()))
            .send()
            .await;
        match deleted.map_err(aws("DeleteItem")) {
            Ok(_) => Ok(true),
            Err(e) if e.is_code(CONDITION_FAILED) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::meta;
    use aws_sdk_dynamodb::operation::delete_item::{DeleteItemError, DeleteItemOutput};
    use aws_sdk_dynamodb::operation::get_item::GetItemOutput;
    use aws_sdk_dynamodb::operation::put_item::{PutItemError, PutItemOutput};
    use aws_sdk_sfn::operation::describe_execution::DescribeExecutionOutput;
    use aws_sdk_sfn::types::ExecutionStatus;
    use aws_smithy_mocks::{mock, mock_client, Rule, RuleMode};

    const ME: Claimant<'static> = Claimant {
        execution: "run-2",
        execution_arn: "arn:aws:states:us-east-1:123456789012:execution:MigrateInstance:run-2",
    };
    const HOLDER: &str = "arn:aws:states:us-east-1:123456789012:execution:MigrateInstance:run-1";

    #[test]
    fn only_a_running_holder_keeps_the_lock() {
        assert_eq!(contention(Some("RUNNING")), Contention::Busy);
        assert_eq!(contention(Some("PENDING_REDRIVE")), Contention::Busy);
        for ended in [
            Some("SUCCEEDED"),
            Some("FAILED"),
            Some("ABORTED"),
            Some("TIMED_OUT"),
            None,
        ] {
            assert_eq!(contention(ended), Contention::TakeOver, "{ended:?}");
        }
    }

    fn refused_put() -> Rule {
        mock!(aws_sdk_dynamodb::Client::put_item)
            .match_requests(|r| {
                r.condition_expression()
                    .is_some_and(|c| c.contains("attribute_not_exists"))
            })
            .then_error(|| PutItemError::generic(meta("ConditionalCheckFailedException")))
    }

    fn held_by(arn: &'static str) -> Rule {
        mock!(aws_sdk_dynamodb::Client::get_item).then_output(move || {
            GetItemOutput::builder()
                .item("executionArn", AttributeValue::S(arn.into()))
                .build()
        })
    }

    fn holder_is(status: ExecutionStatus) -> Rule {
        mock!(aws_sdk_sfn::Client::describe_execution).then_output(move || {
            DescribeExecutionOutput::builder()
                .execution_arn(HOLDER)
                .state_machine_arn(
                    "arn:aws:states:us-east-1:123456789012:stateMachine:MigrateInstance",
                )
                .status(status.clone())
                .start_date(aws_smithy_types::DateTime::from_secs(0))
                .build()
                .unwrap()
        })
    }

    #[tokio::test]
    async fn a_free_lock_is_taken_with_a_condition_and_an_expiry() {
        let put = mock!(aws_sdk_dynamodb::Client::put_item)
            .match_requests(|r| {
                r.table_name() == Some("locks")
                    && r.condition_expression()
                        == Some("attribute_not_exists(resourceId) OR executionArn = :me")
                    && r.item().is_some_and(|i| {
                        i.contains_key("expiresAt")
                            && i.get("execution") == Some(&AttributeValue::S("run-2".into()))
                    })
            })
            .then_output(|| PutItemOutput::builder().build());
        let ddb = mock_client!(aws_sdk_dynamodb, [&put]);
        let sfn = mock_client!(aws_sdk_sfn, RuleMode::MatchAny, &[] as &[&Rule]);
        let lock = RunLock {
            ddb: &ddb,
            sfn: &sfn,
            table: "locks",
        };
        lock.acquire("i-1", &ME).await.unwrap();
        assert_eq!(put.num_calls(), 1);
    }

    #[tokio::test]
    async fn a_running_holder_makes_the_run_busy_naming_it() {
        let (put, get, describe) = (
            refused_put(),
            held_by(HOLDER),
            holder_is(ExecutionStatus::Running),
        );
        let ddb = mock_client!(aws_sdk_dynamodb, RuleMode::MatchAny, [&put, &get]);
        let sfn = mock_client!(aws_sdk_sfn, [&describe]);
        let lock = RunLock {
            ddb: &ddb,
            sfn: &sfn,
            table: "locks",
        };
        let err = lock.acquire("i-1", &ME).await.unwrap_err();
        assert_eq!(err.name(), "InstanceBusy");
        assert!(
            err.to_string()
                .starts_with("instanceId: i-1 is being migrated by execution arn:aws:states"),
            "{err}"
        );
        assert!(
            err.to_string()
                .ends_with(":run-1; wait for it to end or stop it"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn an_ended_holder_is_taken_over_only_if_it_still_holds() {
        let take_over = mock!(aws_sdk_dynamodb::Client::put_item)
            .match_requests(|r| r.condition_expression() == Some("executionArn = :holder"))
            .then_output(|| PutItemOutput::builder().build());
        let (put, get, describe) = (
            refused_put(),
            held_by(HOLDER),
            holder_is(ExecutionStatus::Aborted),
        );
        let ddb = mock_client!(
            aws_sdk_dynamodb,
            RuleMode::MatchAny,
            [&put, &get, &take_over]
        );
        let sfn = mock_client!(aws_sdk_sfn, [&describe]);
        let lock = RunLock {
            ddb: &ddb,
            sfn: &sfn,
            table: "locks",
        };
        lock.acquire("i-1", &ME).await.unwrap();
        assert_eq!(take_over.num_calls(), 1);

        let lost_race = mock!(aws_sdk_dynamodb::Client::put_item)
            .match_requests(|r| r.condition_expression() == Some("executionArn = :holder"))
            .then_error(|| PutItemError::generic(meta("ConditionalCheckFailedException")));
        let (put, get, describe) = (
            refused_put(),
            held_by(HOLDER),
            holder_is(ExecutionStatus::Failed),
        );
        let ddb = mock_client!(
            aws_sdk_dynamodb,
            RuleMode::MatchAny,
            [&put, &get, &lost_race]
        );
        let sfn = mock_client!(aws_sdk_sfn, [&describe]);
        let lock = RunLock {
            ddb: &ddb,
            sfn: &sfn,
            table: "locks",
        };
        assert_eq!(
            lock.acquire("i-1", &ME).await.unwrap_err().name(),
            "InstanceBusy"
        );
    }

    #[tokio::test]
    async fn release_gives_back_only_this_executions_lock() {
        let mine = mock!(aws_sdk_dynamodb::Client::delete_item)
            .match_requests(|r| r.condition_expression() == Some("execution = :me"))
            .then_output(|| DeleteItemOutput::builder().build());
        let ddb = mock_client!(aws_sdk_dynamodb, [&mine]);
        let sfn = mock_client!(aws_sdk_sfn, RuleMode::MatchAny, &[] as &[&Rule]);
        let lock = RunLock {
            ddb: &ddb,
            sfn: &sfn,
            table: "locks",
        };
        assert!(lock.release("i-1", "run-2").await.unwrap());

        let theirs = mock!(aws_sdk_dynamodb::Client::delete_item)
            .then_error(|| DeleteItemError::generic(meta("ConditionalCheckFailedException")));
        let ddb = mock_client!(aws_sdk_dynamodb, [&theirs]);
        let lock = RunLock {
            ddb: &ddb,
            sfn: &sfn,
            table: "locks",
        };
        assert!(!lock.release("i-1", "run-2").await.unwrap());
    }
}
