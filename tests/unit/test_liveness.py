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


def test_a_gateway_that_sees_every_peer_dead_is_cut_off_until_a_session_is_up_again():
    clock = Clock()
    live = Liveness(grace=3, clock=clock)
    assert live.judge({"a": UP, "b": UP}, gateway=True) == frozenset()
    clock.t = 1.0
    assert live.judge({"a": DOWN, "b": UP}, gateway=True) == {"a"}
    assert not live.cut_off  # one peer dead: a failover, not a cut
    assert live.judge({"a": DOWN, "b": DOWN}, gateway=True) == {"a", "b"}
    assert live.cut_off
    clock.t = 60.0  # long after every grace: still cut off, never back by a timer
    live.judge({"a": DOWN, "b": DOWN}, gateway=True)
    assert live.cut_off
    # The link heals: b's session is up first; a's, slower, gets a fresh grace.
    assert live.judge({"a": DOWN, "b": UP}, gateway=True) == frozenset()
    assert not live.cut_off
    clock.t = 63.0
    assert live.judge({"a": DOWN, "b": UP}, gateway=True) == {"a"}


def test_a_worker_whose_gateways_all_died_is_not_cut_off_and_keeps_seeing_them_dead():
    clock = Clock()
    live = Liveness(grace=3, clock=clock)
    live.judge({"a": UP, "b": UP}, gateway=False)
    clock.t = 1.0
    assert live.judge({"a": DOWN, "b": DOWN}, gateway=False) == {"a", "b"}
    assert not live.cut_off
    clock.t = 30.0
    assert live.judge({"a": DOWN, "b": DOWN}, gateway=False) == {"a", "b"}


def test_ports_without_bfd_never_make_a_node_cut_off():
    live = Liveness(grace=0, clock=Clock())
    assert live.judge({"a": {}, "b": {}}, gateway=True) == frozenset()
    assert live.judge({}, gateway=True) == frozenset()
    assert not live.cut_off


def test_a_gateways_port_to_a_worker_that_keeps_none_back_is_idle_not_dead():
    """A gateway node keeps a port to every node, a worker one back only
    while its pods use that gateway: the worker's session never comes up.
    That is no dead peer and no reason to think the gateway cut off (it would
    drop its EIPs, and its own pods' traffic with them)."""
    clock = Clock()
    live = Liveness(grace=3, clock=clock)
    gateways = {"alpha"}  # the one gateway node (this node): no other gateway to hear from
    assert live.judge({"bravo": DOWN, "charlie": DOWN}, gateway=True, expected=gateways) == frozenset()
    clock.t = 60.0
    assert live.judge({"bravo": DOWN, "charlie": DOWN}, gateway=True, expected=gateways) == frozenset()
    assert not live.cut_off
    # bravo's pods start to use the gateway: its session comes up, and when it
    # goes down again that worker is dead; being the only one, the gateway is cut off.
    assert live.judge({"bravo": UP, "charlie": DOWN}, gateway=True, expected=gateways) == frozenset()
    clock.t = 61.0
    assert live.judge({"bravo": DOWN, "charlie": DOWN}, gateway=True, expected=gateways) == {"bravo"}
    assert live.cut_off


def test_a_gateway_still_judges_the_other_gateway_nodes_that_never_came_up():
    """Gateway nodes keep ports to one another, so their sessions must come
    up: one that never does is dead after the grace, and a gateway that hears
    from none of them (started cut off) holds nothing."""
    clock = Clock()
    live = Liveness(grace=3, clock=clock)
    expected = {"alpha", "bravo"}
    assert live.judge({"bravo": DOWN, "charlie": DOWN}, gateway=True, expected=expected) == frozenset()
    clock.t = 3.0
    assert live.judge({"bravo": DOWN, "charlie": DOWN}, gateway=True, expected=expected) == {"bravo"}
    assert live.cut_off


def test_the_same_unchanged_states_are_judged_again_when_a_grace_runs_out():
    """The 50 ms poll hands the same states object while OVSDB is unchanged
    (a gateway: thousands of ports); the answer is reused, but a peer that
    never came up still turns dead when its grace ends."""
    clock = Clock()
    live = Liveness(grace=3, clock=clock)
    states = {"a": UP, "b": DOWN, "c": DOWN}
    live.dead(states)
    clock.t = 1.0
    assert live.dead(states) == frozenset()
    clock.t = 3.0
    assert live.dead(states) == {"b", "c"}
    assert live.dead(states, expected=frozenset({"b"})) == {"b"}
    assert live.dead({**states, "a": DOWN}) == {"a", "b", "c"}


def test_the_node_reader_hands_out_the_same_states_while_ovsdb_is_unchanged():
    from sdn_egress.agent.facts import NodeReader

    class Db:
        def __init__(self):
            self.read = {"gnv-a": UP}

        def bfd_status(self, bridge):
            return self.read

        def sync_tunnels(self, bridge, peers, bfd):
            pass

    db = Db()
    reader = NodeReader("n0", db, bfd={"enable": "true"})
    reader.peers, reader.port_names = {"a": "192.0.2.11"}, {"a": "gnv-a"}
    first = reader.bfd_states()
    assert reader.bfd_states() is first and first == {"a": UP}
    db.read = {"gnv-a": DOWN}
    assert reader.bfd_states() == {"a": DOWN}
