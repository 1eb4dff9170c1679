from sdn_egress.agent.liveness import Liveness

UP = {"state": "up", "forwarding": "true"}
DOWN = {"state": "down", "forwarding": "false"}


class Clock:
    t = 0.0

    def __call__(self):
        return self.t


def test_a_peer_that_was_up_and_goes_down_is_dead_at_once():
    clock = Clock()
    live = Liveness(grace=3, clock=clock)
    assert live.dead({"a": UP, "b": UP}) == frozenset()
    clock.t = 0.3
    assert live.dead({"a": DOWN, "b": UP}) == {"a"}
    assert live.dead({"a": UP, "b": UP}) == frozenset()


def test_a_session_still_coming_up_is_not_dead_within_the_grace():
    clock = Clock()
    live = Liveness(grace=3, clock=clock)
    assert live.dead({"a": {"state": "init", "forwarding": "false"}}) == frozenset()
    clock.t = 2.9
    assert live.dead({"a": DOWN}) == frozenset()
    clock.t = 3.0
    assert live.dead({"a": DOWN}) == {"a"}  # already dead when we started


def test_ports_without_bfd_are_never_judged_and_forgotten_peers_start_over():
    clock = Clock()
    live = Liveness(grace=1, clock=clock)
    assert live.dead({"a": {}}) == frozenset()
    live.dead({"b": UP})
    live.dead({})
    clock.t = 0.5
    assert live.dead({"b": DOWN}) == frozenset()  # b was forgotten: within its new grace


def test_after_a_reset_slow_sessions_get_a_fresh_grace():
    clock = Clock()
    live = Liveness(grace=3, clock=clock)
    live.dead({"a": UP})
    clock.t = 100.0
    live.reset()  # e.g. this node was cut off
    assert live.dead({"a": DOWN}) == frozenset()  # was never seen up since: within its grace
    clock.t = 103.0
    assert live.dead({"a": DOWN}) == {"a"}
