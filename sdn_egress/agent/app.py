"""The os-ken shell of the agent: event handlers find the bridge and hand the
message to :mod:`sdn_egress.agent.core`; no flow is decided here."""
from __future__ import annotations

import functools
import logging

from os_ken.base import app_manager
from os_ken.controller import ofp_event
from os_ken.controller.handler import (CONFIG_DISPATCHER, DEAD_DISPATCHER, MAIN_DISPATCHER,
                                       set_ev_cls)
from os_ken.lib import hub
from os_ken.ofproto import ofproto_v1_4

from sdn_egress.agent.switch import Switch

LOG = logging.getLogger(__name__)


def guarded(handler):
    """An event handler that never lets an exception out.  With os-ken's
    native-threads hub ``hub.TaskExit`` is ``Exception``, so the app's event
    loop re-raises whatever a handler raises and dies without a word: every
    later reply, packet-in and port event would be lost (the agent then
    waits for flow dumps that never come)."""
    @functools.wraps(handler)
    def run(self, ev):
        try:
            handler(self, ev)
        except Exception:  # noqa: BLE001 - see above
            LOG.exception("%s failed on %s; the agent goes on", handler.__name__, type(ev).__name__)
    return run


class EgressAgentApp(app_manager.OSKenApp):
    OFP_VERSIONS = [ofproto_v1_4.OFP_VERSION]

    def __init__(self, *args, agent_core=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.core = agent_core
        self._switches: dict[int, Switch] = {}

    def start(self):
        thread = super().start()
        self.threads.append(hub.spawn(self.core.run))
        return thread

    @set_ev_cls(ofp_event.EventOFPStateChange, [MAIN_DISPATCHER, DEAD_DISPATCHER])
    @guarded
    def _state_change(self, ev):
        dp = ev.datapath
        if dp.id is None:
            return
        if ev.state == MAIN_DISPATCHER:
            bridge = self.core.bridge_of(dp.id)
            if bridge is None:
                LOG.warning("switch with unknown dpid %016x connected; ignored", dp.id)
                return
            switch = Switch(bridge, dp)
            self._switches[dp.id] = switch
            self.core.switch_up(switch)
        elif ev.state == DEAD_DISPATCHER:
            switch = self._switches.pop(dp.id, None)
            if switch is not None:
                self.core.switch_down(switch.bridge)

    def _deliver(self, ev, more=False):
        switch = self._switches.get(ev.msg.datapath.id)
        if switch is not None:
            switch.on_reply(ev.msg, more=more)

    @set_ev_cls(ofp_event.EventOFPFlowStatsReply, MAIN_DISPATCHER)
    @guarded
    def _flow_stats(self, ev):
        self._deliver(ev, more=bool(ev.msg.flags & ev.msg.datapath.ofproto.OFPMPF_REPLY_MORE))

    @set_ev_cls(ofp_event.EventOFPBundleCtrlMsg, MAIN_DISPATCHER)
    @guarded
    def _bundle(self, ev):
        self._deliver(ev)

    @set_ev_cls(ofp_event.EventOFPPacketIn, MAIN_DISPATCHER)
    @guarded
    def _packet_in(self, ev):
        switch = self._switches.get(ev.msg.datapath.id)
        if switch is not None:
            match = ev.msg.match
            self.core.packet_in(switch, ev.msg.cookie, bytes(ev.msg.data),
                                tunnel_src=match.get("tun_ipv4_src") or match.get("tun_ipv6_src"))

    @set_ev_cls(ofp_event.EventOFPErrorMsg, [CONFIG_DISPATCHER, MAIN_DISPATCHER])
    @guarded
    def _error(self, ev):
        msg = ev.msg
        switch = self._switches.get(msg.datapath.id)
        LOG.error("switch %s: error type %s code %s for xid %s",
                  switch.bridge if switch else msg.datapath.id, msg.type, msg.code, msg.xid)
        if switch is not None:
            switch.on_error(msg)
