"""The netns lab: a multi-node sdn-egress cluster on one machine."""
from sdn_egress.lab.lab import Lab, LabError  # noqa: F401
