"""What the tests share: waiting (:mod:`.waiting`), the lab's address plan as
test objects (:mod:`.objects`), and the API server emulator with its test-only
controls (:mod:`.kubeemu`)."""
