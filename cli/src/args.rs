//! The command line: subcommands, flags and their help, and the workflow inputs they build.

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::{json, Value};

#[derive(Debug, Parser)]
#[command(
    name = "amiflow",
    version,
    about = "Move EC2 instances between Availability Zones, and share or copy AMIs across accounts, with the amiflow state machines",
    long_about = "Starts and follows amiflow runs (MigrateInstance, ShareImage, UnshareImage, CopyImage), lists them, \
                  and checks ahead of a run what it would need. It works against AWS with the usual credentials, and \
                  against the local stack with --endpoint-url or AWS_ENDPOINT_URL."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct Global {
    /// AWS endpoint to use instead of AWS's own (e.g. http://127.0.0.1:4566 for the local stack).
    #[arg(long, global = true, env = "AWS_ENDPOINT_URL")]
    pub endpoint_url: Option<String>,
    /// AWS region (else AWS_REGION or the profile's).
    #[arg(long, global = true)]
    pub region: Option<String>,
    /// The profile of ~/.aws/config to use: keys, an assume-role chain, SSO, credential_process
    /// or `aws login` (else AWS_PROFILE, else the default chain).
    #[arg(long, global = true, env = "AWS_PROFILE")]
    pub profile: Option<String>,
    /// The NamePrefix the stack was deployed with: state machines are <prefix>MigrateInstance etc.
    #[arg(long, global = true, default_value = "")]
    pub name_prefix: String,
    /// Output for people (text) or for scripts (json).
    #[arg(long, global = true, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Text,
    Json,
}

#[derive(Debug, Args)]
pub struct Start {
    /// Follow the run until it ends, showing each state and its time; exit non-zero if it fails.
    #[arg(long)]
    pub watch: bool,
    /// Print the workflow input and start nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// The execution name (default: the workflow and the resource, with a timestamp).
    #[arg(long)]
    pub name: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SourceAction {
    Keep,
    Stop,
    Terminate,
}

#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// The instance to move (i-…).
    #[arg(long)]
    pub instance_id: String,
    /// The Availability Zone to move to; the one subnet of the instance's VPC there is used.
    #[arg(long = "az", required_unless_present = "subnet_id")]
    pub availability_zone: Option<String>,
    /// The subnet to launch into (in the instance's VPC).
    #[arg(long = "subnet-id")]
    pub subnet_id: Option<String>,
    /// Instance type of the new instance (default: the source's).
    #[arg(long)]
    pub instance_type: Option<String>,
    /// Make the AMI without rebooting the source (file systems may be inconsistent).
    #[arg(long)]
    pub no_reboot: bool,
    /// What to do with the source once the new instance is verified.
    #[arg(long, value_enum, default_value_t = SourceAction::Keep)]
    pub source_action: SourceAction,
    /// Keep the AMI and its snapshots after the run.
    #[arg(long)]
    pub keep_image: bool,
}

#[derive(Debug, Args)]
pub struct EvacuateArgs {
    /// An instance to move (i-…); repeat for several.
    #[arg(long = "instance-id", value_name = "INSTANCE_ID")]
    pub instance_ids: Vec<String>,
    /// Only instances with this tag (KEY=VALUE); repeat, and give one key several values for any of them.
    #[arg(long = "tag", value_name = "KEY=VALUE")]
    pub tags: Vec<String>,
    /// Every instance of this AZ: a name (us-east-1a) or an AZ ID (use1-az1).
    #[arg(long = "from-az", value_name = "AZ")]
    pub source_az: Option<String>,
    /// The AZ to move to: a name or an AZ ID.
    #[arg(long = "az", value_name = "AZ")]
    pub target_az: String,
    /// An instance to leave where it is; repeat for several.
    #[arg(long = "exclude", value_name = "INSTANCE_ID")]
    pub exclude: Vec<String>,
    /// Move instances sharing this tag's value together, wave after wave in the order of the values.
    #[arg(long)]
    pub wave_tag: Option<String>,
    /// How many instances move at once (1 to 40; default 5, RunInstances' burst).
    #[arg(long)]
    pub max_concurrency: Option<u32>,
    /// How many instances may fail before no further one is started (default 0).
    #[arg(long, conflicts_with = "tolerated_failure_percent")]
    pub tolerated_failures: Option<u32>,
    /// The same, as a percentage of the instances that move.
    #[arg(long)]
    pub tolerated_failure_percent: Option<f64>,
    /// What to do with each source once its new instance is verified.
    #[arg(long, value_enum, default_value_t = SourceAction::Keep)]
    pub source_action: SourceAction,
    /// Make the AMIs without rebooting the sources.
    #[arg(long)]
    pub no_reboot: bool,
    /// Keep each AMI and its snapshots after its run.
    #[arg(long)]
    pub keep_image: bool,
}

#[derive(Debug, Args)]
pub struct ReceiverArgs {
    /// The image (ami-…).
    #[arg(long)]
    pub image_id: String,
    /// An account to share with (12 digits); repeat for several.
    #[arg(long = "account", value_name = "ACCOUNT_ID")]
    pub accounts: Vec<String>,
    /// An organization ARN to share with; repeat for several.
    #[arg(long = "organization", value_name = "ORGANIZATION_ARN")]
    pub organizations: Vec<String>,
    /// An organizational unit ARN to share with; repeat for several.
    #[arg(long = "ou", value_name = "OU_ARN")]
    pub ous: Vec<String>,
    /// Leave the snapshots' createVolumePermission alone.
    #[arg(long)]
    pub no_snapshots: bool,
    /// Every AWS account (unencrypted images only): deliberate, and risky.
    #[arg(long)]
    pub public: bool,
}

#[derive(Debug, Args)]
pub struct ShareArgs {
    #[command(flatten)]
    pub receivers: ReceiverArgs,
    /// A customer managed key to re-encrypt an image under an AWS managed key with, before sharing.
    #[arg(long)]
    pub reencrypt_kms_key_id: Option<String>,
}

#[derive(Debug, Args)]
pub struct CopyArgs {
    /// The image to copy (ami-…), owned by this account.
    #[arg(long)]
    pub source_image_id: String,
    /// The image's region (default: the region of the command).
    #[arg(long)]
    pub source_region: Option<String>,
    /// The account that will own the copy.
    #[arg(long)]
    pub target_account: String,
    /// The role target-account.yaml made there.
    #[arg(long)]
    pub target_role_arn: String,
    /// The external id that role demands.
    #[arg(long)]
    pub external_id: String,
    /// The target account's key the copy is encrypted with.
    #[arg(long)]
    pub target_kms_key_id: String,
    /// The copy's name.
    #[arg(long = "copy-name")]
    pub copy_name: String,
    /// Do not re-apply the source image's tags on the copy.
    #[arg(long)]
    pub no_copy_tags: bool,
    /// Keep the sharing with the target account after the copy.
    #[arg(long)]
    pub keep_sharing: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Move an instance to another Availability Zone (MigrateInstance).
    Migrate {
        #[command(flatten)]
        args: MigrateArgs,
        #[command(flatten)]
        start: Start,
    },
    /// Share an image, its snapshots and its KMS keys with accounts, organizations or OUs (ShareImage).
    Share {
        #[command(flatten)]
        args: ShareArgs,
        #[command(flatten)]
        start: Start,
    },
    /// Take back what a share gave those receivers (UnshareImage).
    Unshare {
        #[command(flatten)]
        args: ReceiverArgs,
        #[command(flatten)]
        start: Start,
    },
    /// Copy an image into another account, re-encrypted with its key (CopyImage).
    Copy {
        #[command(flatten)]
        args: CopyArgs,
        #[command(flatten)]
        start: Start,
    },
    /// Move many instances (a tier, a list, or a whole AZ) to another AZ, in waves (EvacuateZone).
    Evacuate {
        #[command(flatten)]
        args: EvacuateArgs,
        /// Follow the fleet, one line per instance, and end with a table of every instance; exit
        /// non-zero if the fleet fails.
        #[arg(long)]
        watch: bool,
        /// Preview: run the plan and each instance's checks (validateOnly), change nothing, and
        /// print what would happen.
        #[arg(long)]
        dry_run: bool,
        /// The execution name (default: evacuatezone-<target AZ>-<timestamp>).
        #[arg(long)]
        name: Option<String>,
    },
    /// Approve a MigrateInstance run that waits for it ("cutover": "approve"): the Elastic IP moves
    /// to the copy and sourceAction is applied.
    Approve {
        /// The execution's name (as printed when it started) or ARN.
        execution: String,
        /// Follow the run to its end.
        #[arg(long)]
        watch: bool,
    },
    /// Discard the copy of a MigrateInstance run that waits for approval: the copy and its image
    /// are removed and the source is left as it was.
    Discard {
        /// The execution's name (as printed when it started) or ARN.
        execution: String,
        /// Follow the run to its end.
        #[arg(long)]
        watch: bool,
    },
    /// Follow a run by its execution name or ARN until it ends.
    Watch {
        /// The execution's name (as printed when it started) or ARN.
        execution: String,
    },
    /// List running and recent runs of every amiflow workflow, or show one run: its state and the
    /// comparison of its source and copy.
    Status {
        /// One run's execution name or ARN.
        execution: Option<String>,
        /// How many runs per workflow.
        #[arg(long, default_value_t = 10)]
        limit: i32,
    },
    /// Check, without changing anything, what a run would need: prints pass / fail / unknown per check.
    Preflight {
        #[command(subcommand)]
        workflow: Preflight,
    },
}

#[derive(Debug, Subcommand)]
pub enum Preflight {
    /// Before MigrateInstance.
    Migrate(MigrateArgs),
    /// Before ShareImage.
    Share(ShareArgs),
    /// Before CopyImage.
    Copy(CopyArgs),
}

fn source_action(a: SourceAction) -> &'static str {
    match a {
        SourceAction::Keep => "keep",
        SourceAction::Stop => "stop",
        SourceAction::Terminate => "terminate",
    }
}

impl MigrateArgs {
    pub fn input(&self) -> Value {
        let mut v = json!({"instanceId": self.instance_id, "noReboot": self.no_reboot,
                           "sourceAction": source_action(self.source_action), "keepImage": self.keep_image});
        if let Some(az) = &self.availability_zone {
            v["targetAvailabilityZone"] = json!(az);
        }
        if let Some(s) = &self.subnet_id {
            v["targetSubnetId"] = json!(s);
        }
        if let Some(t) = &self.instance_type {
            v["instanceType"] = json!(t);
        }
        v
    }
}

impl EvacuateArgs {
    /// The EvacuateZone input; a --tag without `=` is refused, naming it.
    pub fn input(&self, validate_only: bool) -> Result<Value, String> {
        let mut tags = serde_json::Map::new();
        for (n, tag) in self.tags.iter().enumerate() {
            let Some((key, value)) = tag.split_once('=') else {
                return Err(format!("--tag (value {}): {tag:?} is not KEY=VALUE", n + 1));
            };
            let values = tags.entry(key.to_string()).or_insert_with(|| json!([]));
            if let Some(list) = values.as_array_mut() {
                list.push(json!(value));
            }
        }
        let mut v = json!({"targetAvailabilityZone": self.target_az,
                           "sourceAction": source_action(self.source_action)});
        let mut set = |key: &str, value: Value, keep: bool| {
            if keep {
                v[key] = value;
            }
        };
        set(
            "instanceIds",
            json!(self.instance_ids),
            !self.instance_ids.is_empty(),
        );
        set("tagFilters", Value::Object(tags.clone()), !tags.is_empty());
        set(
            "sourceAvailabilityZone",
            json!(self.source_az),
            self.source_az.is_some(),
        );
        set("exclude", json!(self.exclude), !self.exclude.is_empty());
        set("waveTag", json!(self.wave_tag), self.wave_tag.is_some());
        set(
            "maxConcurrency",
            json!(self.max_concurrency),
            self.max_concurrency.is_some(),
        );
        set(
            "toleratedFailures",
            json!(self.tolerated_failures),
            self.tolerated_failures.is_some(),
        );
        set(
            "toleratedFailurePercent",
            json!(self.tolerated_failure_percent),
            self.tolerated_failure_percent.is_some(),
        );
        set("noReboot", json!(true), self.no_reboot);
        set("keepImage", json!(true), self.keep_image);
        set("validateOnly", json!(true), validate_only);
        Ok(v)
    }
}

impl ReceiverArgs {
    pub fn input(&self) -> Value {
        json!({"imageId": self.image_id, "accountIds": self.accounts, "organizationArns": self.organizations,
               "organizationalUnitArns": self.ous, "shareSnapshots": !self.no_snapshots, "public": self.public})
    }
}

impl ShareArgs {
    pub fn input(&self) -> Value {
        let mut v = self.receivers.input();
        v["reencryptKmsKeyId"] = json!(self.reencrypt_kms_key_id);
        v
    }
}

impl CopyArgs {
    pub fn input(&self, region: &str) -> Value {
        json!({"sourceImageId": self.source_image_id, "sourceRegion": self.source_region.as_deref().unwrap_or(region),
               "targetAccountId": self.target_account, "targetRoleArn": self.target_role_arn, "externalId": self.external_id,
               "targetKmsKeyId": self.target_kms_key_id, "name": self.copy_name, "copyTags": !self.no_copy_tags,
               "keepSharing": self.keep_sharing})
    }
}

/// The flag that sets a workflow input field, for error messages that name what the user typed.
pub fn flag_for(field: &str) -> String {
    let base = field.split('[').next().unwrap_or(field);
    let flag = match base {
        "instanceId" | "instanceIds" => "--instance-id",
        "tagFilters" => "--tag",
        "sourceAvailabilityZone" => "--from-az",
        "exclude" => "--exclude",
        "waveTag" => "--wave-tag",
        "maxConcurrency" => "--max-concurrency",
        "toleratedFailures" => "--tolerated-failures",
        "toleratedFailurePercent" => "--tolerated-failure-percent",
        "targetAvailabilityZone" => "--az",
        "targetSubnetId" => "--subnet-id",
        "instanceType" => "--instance-type",
        "sourceAction" => "--source-action",
        "imageId" => "--image-id",
        "accountIds" => "--account",
        "organizationArns" => "--organization",
        "organizationalUnitArns" => "--ou",
        "public" => "--public",
        "reencryptKmsKeyId" => "--reencrypt-kms-key-id",
        "sourceImageId" => "--source-image-id",
        "sourceRegion" => "--source-region",
        "targetAccountId" => "--target-account",
        "targetRoleArn" => "--target-role-arn",
        "externalId" => "--external-id",
        "targetKmsKeyId" => "--target-kms-key-id",
        "name" => "--copy-name",
        other => return other.to_string(),
    };
    let index = field.strip_prefix(base).unwrap_or_default();
    if index.is_empty() {
        flag.to_string()
    } else {
        format!(
            "{flag} (value {})",
            index
                .trim_matches(|c| c == '[' || c == ']')
                .parse::<usize>()
                .map(|i| i + 1)
                .unwrap_or(1)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed_and_every_flag_has_help() {
        Cli::command().debug_assert();
        fn check(cmd: &clap::Command, path: &str) {
            for arg in cmd.get_arguments() {
                if arg.get_id() == "help" || arg.get_id() == "version" {
                    continue;
                }
                assert!(
                    arg.get_help().is_some(),
                    "{path} {} has no help text",
                    arg.get_id()
                );
            }
            for sub in cmd.get_subcommands() {
                assert!(
                    sub.get_about().is_some(),
                    "{path} {} has no help text",
                    sub.get_name()
                );
                check(sub, &format!("{path} {}", sub.get_name()));
            }
        }
        check(&Cli::command(), "amiflow");
    }

    #[test]
    fn flags_build_the_workflow_input() {
        let cli = Cli::try_parse_from([
            "amiflow",
            "migrate",
            "--instance-id",
            "i-0123456789abcdef0",
            "--az",
            "us-east-1b",
            "--source-action",
            "stop",
        ])
        .unwrap();
        let Command::Migrate { args, .. } = cli.command else {
            panic!()
        };
        assert_eq!(
            args.input(),
            json!({"instanceId": "i-0123456789abcdef0", "targetAvailabilityZone": "us-east-1b", "noReboot": false, "sourceAction": "stop", "keepImage": false})
        );
    }

    #[test]
    fn evacuate_flags_build_the_fleet_input() {
        let cli = Cli::try_parse_from([
            "amiflow",
            "evacuate",
            "--from-az",
            "use1-az1",
            "--az",
            "use1-az2",
            "--tag",
            "tier=web",
            "--tag",
            "tier=api",
            "--wave-tag",
            "amiflow:wave",
            "--max-concurrency",
            "4",
            "--tolerated-failure-percent",
            "10",
            "--exclude",
            "i-0123456789abcdef0",
        ])
        .unwrap();
        let Command::Evacuate { args, dry_run, .. } = cli.command else {
            panic!()
        };
        assert_eq!(
            args.input(dry_run).unwrap(),
            json!({"sourceAvailabilityZone": "use1-az1", "targetAvailabilityZone": "use1-az2",
                   "tagFilters": {"tier": ["web", "api"]}, "waveTag": "amiflow:wave", "maxConcurrency": 4,
                   "toleratedFailurePercent": 10.0, "exclude": ["i-0123456789abcdef0"], "sourceAction": "keep"})
        );
        let bad =
            Cli::try_parse_from(["amiflow", "evacuate", "--az", "us-east-1b", "--tag", "tier"])
                .unwrap();
        let Command::Evacuate { args, .. } = bad.command else {
            panic!()
        };
        assert_eq!(
            args.input(false).unwrap_err(),
            "--tag (value 1): \"tier\" is not KEY=VALUE"
        );
    }

    #[test]
    fn fields_map_to_the_flags_that_set_them() {
        assert_eq!(flag_for("instanceId"), "--instance-id");
        assert_eq!(flag_for("accountIds[1]"), "--account (value 2)");
        assert_eq!(flag_for("name"), "--copy-name");
    }

    #[test]
    fn either_az_or_subnet_is_required() {
        let e = Cli::try_parse_from(["amiflow", "migrate", "--instance-id", "i-0123456789abcdef0"])
            .unwrap_err();
        assert!(e.to_string().contains("--az"), "{e}");
    }
}
