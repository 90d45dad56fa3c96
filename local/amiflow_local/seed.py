"""Seeds the local stack with a source instance worth migrating: a VPC with subnets in three AZs,
a security group, a key pair, two tagged EBS volumes and an Elastic IP. Used by `make demo` and
the end-to-end tests."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class World:
    vpc_id: str
    subnets: dict[str, str]  # AZ -> subnet id
    security_group_id: str
    key_name: str
    instance_id: str
    allocation_id: str
    public_ip: str
    source_az: str


def base_image(ec2) -> str:
    """An image moto ships, to launch the source from."""
    images = ec2.describe_images(Owners=["amazon"])["Images"]
    return sorted(i["ImageId"] for i in images)[0]


def seed(ec2, region: str, name: str = "web-1", instance_type: str = "t3.micro") -> World:
    azs = [f"{region}a", f"{region}b", f"{region}c"]
    vpc_id = ec2.create_vpc(CidrBlock="10.20.0.0/16")["Vpc"]["VpcId"]
    subnets = {}
    for index, az in enumerate(azs):
        subnets[az] = ec2.create_subnet(VpcId=vpc_id, CidrBlock=f"10.20.{index}.0/24", AvailabilityZone=az)["Subnet"]["SubnetId"]
    sg = ec2.create_security_group(GroupName=f"{name}-sg", Description="amiflow demo web tier", VpcId=vpc_id)["GroupId"]
    key_name = f"{name}-key"
    ec2.create_key_pair(KeyName=key_name, KeyType="ed25519")  # quicker to make than RSA
    reservation = ec2.run_instances(
        ImageId=base_image(ec2),
        InstanceType=instance_type,
        MinCount=1,
        MaxCount=1,
        SubnetId=subnets[azs[0]],
        SecurityGroupIds=[sg],
        KeyName=key_name,
        UserData="#!/bin/sh\necho amiflow demo > /etc/motd\n",
        BlockDeviceMappings=[
            {"DeviceName": "/dev/xvda", "Ebs": {"VolumeSize": 8, "VolumeType": "gp3", "DeleteOnTermination": True}},
            {"DeviceName": "/dev/sdf", "Ebs": {"VolumeSize": 20, "VolumeType": "gp3", "DeleteOnTermination": False}},
        ],
        MetadataOptions={"HttpTokens": "required", "HttpPutResponseHopLimit": 2},
        TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": "Name", "Value": name}, {"Key": "team", "Value": "web"}]}],
    )
    instance = reservation["Instances"][0]
    instance_id = instance["InstanceId"]
    described = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]
    for mapping in described["BlockDeviceMappings"]:
        role = "root" if mapping["DeviceName"] == "/dev/xvda" else "data"
        ec2.create_tags(Resources=[mapping["Ebs"]["VolumeId"]], Tags=[{"Key": "role", "Value": role}])
    address = ec2.allocate_address(Domain="vpc")
    ec2.associate_address(AllocationId=address["AllocationId"], InstanceId=instance_id)
    return World(
        vpc_id=vpc_id,
        subnets=subnets,
        security_group_id=sg,
        key_name=key_name,
        instance_id=instance_id,
        allocation_id=address["AllocationId"],
        public_ip=address["PublicIp"],
        source_az=azs[0],
    )


def organization_root(org) -> str:
    """The root of the caller's organization in AWS Organizations, made first if there is none."""
    try:
        org.describe_organization()
    except org.exceptions.AWSOrganizationsNotInUseException:
        org.create_organization(FeatureSet="ALL")
    return org.list_roots()["Roots"][0]["Id"]


@dataclass
class Fleet:
    world: World
    tag: dict[str, str]  # the tag every instance of the fleet carries
    instance_ids: list[str]  # in launch order
    waves: dict[str, str]  # instance id -> its amiflow:wave value


def seed_fleet(ec2, region: str, name: str, waves: list[int], wave_tag: str = "amiflow:wave") -> Fleet:
    """A tier to evacuate: instances in the source AZ of one VPC (the first is seed()'s, with its
    volumes and Elastic IP), each tagged `fleet=<name>`; `waves[n]` of them carry `wave_tag` =
    n + 1."""
    count = sum(waves)
    world = seed(ec2, region, name=f"{name}-0")
    tag = {"fleet": name}
    ids = [world.instance_id]
    if count > 1:
        reservation = ec2.run_instances(
            ImageId=base_image(ec2), InstanceType="t3.micro", MinCount=count - 1, MaxCount=count - 1,
            SubnetId=world.subnets[world.source_az], SecurityGroupIds=[world.security_group_id], KeyName=world.key_name,
            BlockDeviceMappings=[{"DeviceName": "/dev/xvda", "Ebs": {"VolumeSize": 8, "VolumeType": "gp3", "DeleteOnTermination": True}}],
        )
        ids += [i["InstanceId"] for i in reservation["Instances"]]
    labels = [str(n + 1) for n, size in enumerate(waves) for _ in range(size)]
    assigned = dict(zip(ids, labels))
    for index, instance_id in enumerate(ids):
        ec2.create_tags(Resources=[instance_id], Tags=[
            {"Key": "Name", "Value": f"{name}-{index}"}, {"Key": "fleet", "Value": name},
            {"Key": wave_tag, "Value": assigned[instance_id]}])
    return Fleet(world=world, tag=tag, instance_ids=ids, waves=assigned)
