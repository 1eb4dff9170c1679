"""sdn-egress: fixed egress IPs for Kubernetes pods, programmed into Open vSwitch by os-ken."""
__version__ = "0.1.0"
