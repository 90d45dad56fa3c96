//! Shared pieces of the unit tests: error metadata and SDK outputs the mocked clients answer with.

use aws_sdk_ec2::types::{
    Image, ImageState, Instance, InstanceState, InstanceStateName, Reservation,
};
use aws_smithy_types::error::ErrorMetadata;

/// An AWS error with this code, as a service would answer it.
pub fn meta(code: &str) -> ErrorMetadata {
    ErrorMetadata::builder()
        .code(code)
        .message(format!("{code} from the mock"))
        .build()
}

pub fn reservation(
    instances: Vec<Instance>,
) -> aws_sdk_ec2::operation::describe_instances::DescribeInstancesOutput {
    aws_sdk_ec2::operation::describe_instances::DescribeInstancesOutput::builder()
        .reservations(
            Reservation::builder()
                .set_instances(Some(instances))
                .build(),
        )
        .build()
}

pub fn no_instances() -> aws_sdk_ec2::operation::describe_instances::DescribeInstancesOutput {
    aws_sdk_ec2::operation::describe_instances::DescribeInstancesOutput::builder().build()
}

pub fn instance_in(id: &str, state: InstanceStateName) -> Instance {
    Instance::builder()
        .instance_id(id)
        .state(InstanceState::builder().name(state).build())
        .build()
}

pub fn image(id: &str, state: ImageState, snapshots: &[(&str, &str)]) -> Image {
    let mut image = Image::builder().image_id(id).state(state);
    for (device, snapshot) in snapshots {
        image = image.block_device_mappings(
            aws_sdk_ec2::types::BlockDeviceMapping::builder()
                .device_name(*device)
                .ebs(
                    aws_sdk_ec2::types::EbsBlockDevice::builder()
                        .snapshot_id(*snapshot)
                        .volume_size(8)
                        .build(),
                )
                .build(),
        );
    }
    image.build()
}

pub fn images(list: Vec<Image>) -> aws_sdk_ec2::operation::describe_images::DescribeImagesOutput {
    aws_sdk_ec2::operation::describe_images::DescribeImagesOutput::builder()
        .set_images(Some(list))
        .build()
}

/// An Auto Scaling client that finds every instance outside any group.
pub fn no_groups() -> aws_sdk_autoscaling::Client {
    use aws_sdk_autoscaling::operation::describe_auto_scaling_instances::DescribeAutoScalingInstancesOutput;
    use aws_smithy_mocks::{mock, mock_client, RuleMode};
    let none = mock!(aws_sdk_autoscaling::Client::describe_auto_scaling_instances)
        .then_output(|| DescribeAutoScalingInstancesOutput::builder().build());
    mock_client!(aws_sdk_autoscaling, RuleMode::MatchAny, [&none])
}
