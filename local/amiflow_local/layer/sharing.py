"""Which images an account can see and launch: its own, and other accounts' images whose launch
permissions name it, its organization or one of its OUs, or everyone.

AWS: https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/sharingamis-explicit.html and
https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/share-amis-with-organizations-and-OUs.html.
moto 5.2.5 looks images up in the caller's own account only.
"""

from __future__ import annotations

from typing import Any

from moto.ec2.models import ec2_backends

from .organizations import in_organization, in_ou


def may_launch(ami: Any, account: str) -> bool:
    if ami.owner_id == account:
        return True
    return any(p.get("Group") == "all" for p in in_force(ami)) or named_in_permissions(ami, account)


def in_force(ami: Any) -> list[dict[str, str]]:
    """The image's launch permissions that are in force (eventual consistency: consistency.py)."""
    from .consistency import young
    from .images import permission_key

    made = getattr(ami, "amiflow_permission_at", {})
    return [p for p in ami.launch_permissions if not young(made.get(permission_key(p)))]


def named_in_permissions(ami: Any, account: str) -> bool:
    """Whether a launch permission names the account, its organization or one of its OUs."""
    for permission in in_force(ami):
        if permission.get("UserId") == account:
            return True
        if permission.get("OrganizationArn") and in_organization(account, permission["OrganizationArn"]):
            return True
        if permission.get("OrganizationalUnitArn") and in_ou(account, permission["OrganizationalUnitArn"]):
            return True
    return False


def find_image(region: str, image_id: str) -> Any | None:
    """The image with this id in any account of the region."""
    for account, regions in list(ec2_backends.items()):
        backend = regions.get(region) if hasattr(regions, "get") else None
        if backend is None:
            continue
        ami = backend.amis.get(image_id)
        if ami is not None:
            return ami
    return None


def visible_image(account: str, region: str, image_id: str) -> Any | None:
    own = ec2_backends[account][region].amis.get(image_id)
    if own is not None:
        return own
    ami = find_image(region, image_id)
    return ami if ami is not None and may_launch(ami, account) else None


def backend_of(ami: Any) -> Any:
    return ami.ec2_backend


def find_image_anywhere(image_id: str) -> Any | None:
    for regions in list(ec2_backends.values()):
        for backend in list(regions.values()):
            ami = backend.amis.get(image_id)
            if ami is not None:
                return ami
    return None
