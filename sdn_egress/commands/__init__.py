"""The user-facing commands that are neither agent nor controller: validate, move, demo (``sdn-egress CMD``)."""
