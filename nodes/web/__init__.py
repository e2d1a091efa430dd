"""The front door: the Handle proxy's redirects, the record pages, QR codes and CORS on the API."""

from nodes.web.cors import no_such_route, setup_cors
from nodes.web.front import FrontDoor, add_front_door
from nodes.web.lookup import Looked, Lookup, ServerState, Step, TopologyView

__all__ = [
    "FrontDoor",
    "Looked",
    "Lookup",
    "ServerState",
    "Step",
    "TopologyView",
    "add_front_door",
    "no_such_route",
    "setup_cors",
]
