"""OVSDB provisioning of the sdn-egress bridges through ovsdbapp."""
