//! The source and its copy, setting by setting: what was carried, what changed, what an AMI
//! cannot carry, and what waits for the cutover. verify-instance makes it once the copy is
//! verified; the approval event, `amiflow status <run>` and the run's output show it.

use serde::{Deserialize, Serialize};

use crate::capture::{Capture, VolumeSpec};
use crate::tags;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    /// The copy has it as the source does.
    Carried,
    /// The copy differs: asked for (the AZ, the subnet, `instanceType`) or not.
    Changed,
    /// An AMI cannot take it to another AZ.
    NotCarried,
    /// Applied when the run is approved (or at once with `"cutover": "auto"`).
    AtCutover,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Compared {
    pub setting: String,
    pub status: Status,
    pub source: String,
    pub copy: String,
}

fn or_none<T: ToString>(value: Option<T>) -> String {
    value
        .map(|v| v.to_string())
        .unwrap_or_else(|| "none".into())
}

fn yes_no(on: bool) -> String {
    if on { "on" } else { "off" }.into()
}

fn volume(v: &VolumeSpec) -> String {
    let own = carried_tags(&v.tags);
    format!(
        "{} GiB {}{}{}, {}{}",
        v.size_gib,
        v.volume_type.as_deref().unwrap_or("?"),
        v.iops.map(|i| format!(" {i} IOPS")).unwrap_or_default(),
        v.throughput
            .map(|t| format!(" {t} MiB/s"))
            .unwrap_or_default(),
        if v.encrypted {
            format!(
                "encrypted ({})",
                v.kms_key_id.as_deref().unwrap_or("default key")
            )
        } else {
            "unencrypted".into()
        },
        if own.is_empty() {
            String::new()
        } else {
            format!(", tags {}", own.join(" "))
        }
    )
}

/// The tags a copy carries (not `aws:` nor `amiflow:` ones), as `key=value`, sorted.
fn carried_tags(all: &[tags::Tag]) -> Vec<String> {
    let mut own: Vec<String> = all
        .iter()
        .filter(|t| tags::is_carried(&t.key))
        .map(|t| format!("{}={}", t.key, t.value))
        .collect();
    own.sort();
    own
}

/// How one setting is read from an instance's capture.
type Reader = dyn Fn(&Capture) -> String;

/// The rows as they are made.
struct Rows(Vec<Compared>);

impl Rows {
    fn row(&mut self, setting: &str, status: Status, source: String, copy: String) {
        self.0.push(Compared {
            setting: setting.into(),
            status,
            source,
            copy,
        });
    }

    /// One setting read the same way from both instances.
    fn same_by(
        &mut self,
        setting: &str,
        source: &Capture,
        copy: &Capture,
        read: impl Fn(&Capture) -> String,
    ) {
        self.same(setting, read(source), read(copy));
    }

    /// Carried when the two are the same, changed when not.
    fn same(&mut self, setting: &str, a: String, b: String) {
        let status = if a == b {
            Status::Carried
        } else {
            Status::Changed
        };
        self.row(setting, status, a, b);
    }
}

/// Every setting of the source beside the copy's. `cut_over`: the Elastic IP has moved and the
/// settings deferred to success are applied. Pure.
pub fn compare(source: &Capture, copy: &Capture, cut_over: bool) -> Vec<Compared> {
    let mut rows = Rows(Vec::new());
    let groups = |c: &Capture| {
        let mut g = c.security_group_ids.clone();
        g.sort();
        g.join(" ")
    };
    let user_data = |c: &Capture| {
        or_none(
            c.user_data
                .as_ref()
                .map(|u| format!("sha256 {}", &u.sha256[..12.min(u.sha256.len())])),
        )
    };
    let readers: [(&str, &Reader); 7] = [
        ("Availability Zone", &|c| c.availability_zone.clone()),
        ("subnet", &|c| c.subnet_id.clone()),
        ("instance type", &|c| c.instance_type.clone()),
        ("security groups", &groups),
        ("key pair", &|c| or_none(c.key_name.as_ref())),
        ("instance profile", &|c| {
            or_none(c.iam_instance_profile_arn.as_ref())
        }),
        ("user data", &user_data),
    ];
    for (setting, read) in readers {
        rows.same_by(setting, source, copy, read);
    }
    for v in &source.volumes {
        let theirs = copy.volumes.iter().find(|c| c.device_name == v.device_name);
        rows.same(
            &format!("EBS volume {}", v.device_name),
            volume(v),
            theirs.map(volume).unwrap_or_else(|| "missing".into()),
        );
    }
    let readers: [(&str, &Reader); 6] = [
        ("instance metadata options", &|c| {
            format!("{:?}", c.metadata)
        }),
        ("detailed monitoring", &|c| yes_no(c.detailed_monitoring)),
        ("EBS optimisation", &|c| yes_no(c.ebs_optimized)),
        ("tenancy", &|c| {
            c.tenancy.clone().unwrap_or_else(|| "default".into())
        }),
        ("shutdown behaviour", &|c| {
            or_none(c.shutdown_behavior.as_ref())
        }),
        ("credit specification", &|c| or_none(c.cpu_credits.as_ref())),
    ];
    for (setting, read) in readers {
        rows.same_by(setting, source, copy, read);
    }
    let (mine, theirs) = (carried_tags(&source.tags), carried_tags(&copy.tags));
    let tags_status = if mine.iter().all(|t| theirs.contains(t)) {
        Status::Carried
    } else {
        Status::Changed
    };
    rows.row(
        "instance tags",
        tags_status,
        mine.join(" "),
        theirs.join(" "),
    );
    rows.same(
        "source/dest check",
        yes_no(source.source_dest_check),
        yes_no(copy.source_dest_check),
    );
    let deferred = |setting: &str, a: bool, b: bool| {
        let status = if a == b {
            Status::Carried
        } else if !cut_over {
            Status::AtCutover
        } else {
            Status::Changed
        };
        (setting.to_string(), status, yes_no(a), yes_no(b))
    };
    for (setting, status, a, b) in [
        deferred(
            "termination protection",
            source.disable_api_termination,
            copy.disable_api_termination,
        ),
        deferred(
            "stop protection",
            source.disable_api_stop,
            copy.disable_api_stop,
        ),
    ] {
        rows.row(&setting, status, a, b);
    }
    if let Some(eip) = &source.elastic_ip {
        let on_copy = copy.elastic_ip.as_ref() == Some(eip);
        let status = match (on_copy, cut_over) {
            (true, _) => Status::Carried,
            (false, false) => Status::AtCutover,
            (false, true) => Status::Changed,
        };
        rows.row(
            "Elastic IP",
            status,
            eip.public_ip.clone(),
            or_none(copy.elastic_ip.as_ref().map(|e| e.public_ip.clone())),
        );
    }
    for note in &source.not_carried {
        let (setting, detail) = note.split_once(" (").unwrap_or((note.as_str(), ""));
        rows.row(
            setting,
            Status::NotCarried,
            setting.to_string(),
            detail.trim_end_matches(')').to_string(),
        );
    }
    rows.0
}

/// The comparison once the cutover has been made: what waited for it is carried now. Pure.
pub fn after_cutover(rows: &[Compared]) -> Vec<Compared> {
    rows.iter()
        .map(|r| match r.status {
            Status::AtCutover => Compared {
                status: Status::Carried,
                copy: r.source.clone(),
                ..r.clone()
            },
            _ => r.clone(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::{ElasticIp, UserDataRef};
    use crate::tags::Tag;

    fn source() -> Capture {
        Capture {
            instance_id: "i-0source".into(),
            state: "running".into(),
            instance_type: "t3.micro".into(),
            vpc_id: "vpc-1".into(),
            subnet_id: "subnet-a".into(),
            availability_zone: "us-east-1a".into(),
            security_group_ids: vec!["sg-2".into(), "sg-1".into()],
            key_name: Some("web".into()),
            iam_instance_profile_arn: None,
            user_data: Some(UserDataRef::of("IyEvYmluL3NoCg==")),
            tags: vec![
                Tag::new("Name", "web-1"),
                Tag::new("aws:cloudformation:stack-name", "x"),
            ],
            root_device_name: Some("/dev/xvda".into()),
            volumes: vec![VolumeSpec {
                device_name: "/dev/xvda".into(),
                volume_id: "vol-1".into(),
                size_gib: 8,
                volume_type: Some("gp3".into()),
                iops: Some(3000),
                throughput: Some(125),
                encrypted: false,
                kms_key_id: None,
                delete_on_termination: true,
                tags: vec![Tag::new("role", "root")],
            }],
            metadata: None,
            detailed_monitoring: false,
            ebs_optimized: false,
            cpu_credits: Some("unlimited".into()),
            tenancy: None,
            source_dest_check: true,
            disable_api_termination: true,
            disable_api_stop: false,
            shutdown_behavior: Some("stop".into()),
            elastic_ip: Some(ElasticIp {
                allocation_id: "eipalloc-1".into(),
                public_ip: "198.51.100.7".into(),
            }),
            not_carried: vec![
                "private IP address 10.0.0.4 (the new instance gets one from the target subnet)"
                    .into(),
            ],
            platform: "Linux/UNIX".into(),
        }
    }

    fn copy() -> Capture {
        let mut c = source();
        c.instance_id = "i-0copy".into();
        c.subnet_id = "subnet-b".into();
        c.availability_zone = "us-east-1b".into();
        c.security_group_ids = vec!["sg-1".into(), "sg-2".into()];
        c.tags = vec![
            Tag::new("Name", "web-1"),
            Tag::new("amiflow:execution", "run-1"),
        ];
        c.disable_api_termination = false;
        c.elastic_ip = None;
        c.not_carried = vec![];
        c
    }

    fn statuses(rows: &[Compared]) -> Vec<(&str, Status)> {
        rows.iter()
            .map(|r| (r.setting.as_str(), r.status))
            .collect()
    }

    #[test]
    fn before_the_cutover_the_address_and_the_protection_wait_for_it() {
        let rows = compare(&source(), &copy(), false);
        let got = statuses(&rows);
        for (setting, status) in [
            ("Availability Zone", Status::Changed),
            ("subnet", Status::Changed),
            ("instance type", Status::Carried),
            ("security groups", Status::Carried),
            ("user data", Status::Carried),
            ("EBS volume /dev/xvda", Status::Carried),
            ("instance tags", Status::Carried),
            ("termination protection", Status::AtCutover),
            ("stop protection", Status::Carried),
            ("Elastic IP", Status::AtCutover),
            ("private IP address 10.0.0.4", Status::NotCarried),
        ] {
            assert!(got.contains(&(setting, status)), "{setting}: {got:?}");
        }
        let ip = rows
            .iter()
            .find(|r| r.setting.starts_with("private IP"))
            .unwrap();
        assert_eq!(ip.copy, "the new instance gets one from the target subnet");
    }

    #[test]
    fn the_cutover_carries_what_waited_for_it() {
        let rows = after_cutover(&compare(&source(), &copy(), false));
        let eip = rows.iter().find(|r| r.setting == "Elastic IP").unwrap();
        assert_eq!(
            (eip.status, eip.copy.as_str()),
            (Status::Carried, "198.51.100.7")
        );
        assert!(rows.iter().all(|r| r.status != Status::AtCutover));
    }

    #[test]
    fn after_the_cutover_the_address_is_carried_and_a_difference_is_a_change() {
        let mut moved = copy();
        moved.elastic_ip = source().elastic_ip;
        moved.disable_api_termination = true;
        moved.instance_type = "t3.small".into();
        moved.volumes[0].size_gib = 10;
        let got = compare(&source(), &moved, true);
        let got = statuses(&got);
        for (setting, status) in [
            ("Elastic IP", Status::Carried),
            ("termination protection", Status::Carried),
            ("instance type", Status::Changed),
            ("EBS volume /dev/xvda", Status::Changed),
        ] {
            assert!(got.contains(&(setting, status)), "{setting}: {got:?}");
        }
    }
}
