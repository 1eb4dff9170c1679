"""The per-node agent: an os-ken app that keeps its node's OVS and kernel
steering in line with the cluster state."""
