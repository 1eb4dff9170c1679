"""The OpenFlow pipeline of sdn-egress as pure code (no I/O, no os-ken connection)."""
