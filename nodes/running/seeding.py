"""What ``idres up`` writes through the nodes' own APIs: delegations, hosted prefixes and demo identifiers.

Records are created only when absent, so running it again stores nothing new and never undoes what an
operator changed since; only a delegation's HS_SITE values are brought in line with the topology.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from resolver.client import HandleClient, basic_auth
from resolver.config import NodeSpec, Topology
from resolver.errors import HandleError
from resolver.names import prefix_handle
from resolver.sites import is_site_type, site_data

__all__ = ["DEMO_CAR", "DEMO_PACK", "Seeded", "demo_records", "register_topology"]

DEMO_CAR = "88.118.8/VIN-LFV3A23C5K3000417"
DEMO_PACK = "88.119.6/PACK-YB-2026-000123"
DEMO_HOSTED = ("88.118.9/SEAT-2026-0001", "88.118.9/SEAT-2026-0002", "88.118.9/HARNESS-2026-0042")


@dataclass(frozen=True, slots=True)
class Seeded:
    node: str
    handle: str
    what: str


def _v(index: int, vtype: str, value: str) -> dict[str, Any]:
    return {"index": index, "type": vtype, "data": {"format": "string", "value": value}}


def _admin(prefix: str) -> dict[str, Any]:
    # pyhandle's default owner: the admin group at 200 of the prefix handle.
    return {
        "index": 100,
        "type": "HS_ADMIN",
        "data": {
            "format": "admin",
            "value": {"handle": prefix_handle(prefix), "index": 200, "permissions": "011111110011"},
        },
    }


def delegation_values(topology: Topology, child: NodeSpec, parent: NodeSpec) -> list[dict[str, Any]]:
    """The parent's record for ``0.NA/<child prefix>``: one HS_SITE per site of the child, and the
    parent's operator group as its admin."""
    assert parent.prefix is not None
    sites = [
        {
            "index": i,
            "type": "HS_SITE",
            "data": {
                "format": "site",
                "value": site_data(
                    s.host,
                    s.port,
                    primary=not s.is_mirror,
                    description=s.description or s.name,
                    protocol=s.scheme.upper(),
                ),
            },
        }
        for i, s in enumerate(topology.sites_of(child.name), start=1)
    ]
    return [*sites, _admin(parent.prefix)]


def hosted_values(host: NodeSpec, prefix: str) -> list[dict[str, Any]]:
    """A hosted prefix's handle on its secondary: no sites (so it is served there), administered by the
    prefix's own group at 200, which starts with the secondary's operator in it."""
    assert host.prefix is not None
    return [
        _admin(prefix),
        {
            "index": 200,
            "type": "HS_VLIST",
            "data": {"format": "vlist", "value": [{"handle": prefix_handle(host.prefix), "index": 300}]},
        },
    ]


def demo_records() -> list[tuple[str, list[dict[str, Any]]]]:
    """The demo identifiers: a Chongqing-built car whose COMPONENT is a Sichuan-made battery pack, and a
    supplier's parts hosted by the automotive secondary node."""
    car = [
        _v(1, "URL", "https://automaker.example.cn/vehicles/LFV3A23C5K3000417"),
        _v(2, "MODEL", "CQ-EV7 electric SUV"),
        _v(3, "MANUFACTURER", "Chongqing automaker (demo), Liangjiang New Area"),
        _v(4, "BATCH", "2026-11-CQ-0417"),
        _v(5, "PRODUCTION_DATE", "2026-11-02"),
        _v(6, "COMPONENT", DEMO_PACK),
        _admin("88.118.8"),
    ]
    pack = [
        _v(1, "URL", "https://batterymaker.example.cn/packs/YB-2026-000123"),
        _v(2, "MODEL", "LFP traction pack 78 kWh"),
        _v(3, "MANUFACTURER", "Yibin battery maker (demo), Sichuan"),
        _v(4, "BATCH", "YB-2026-W44"),
        _v(5, "CELLS", "108 x LFP 3.2 V 230 Ah"),
        _admin("88.119.6"),
    ]
    hosted = [
        (
            handle,
            [
                _v(1, "MODEL", model),
                _v(2, "MANUFACTURER", "Seat and harness supplier (demo), Chongqing"),
                _v(3, "BATCH", "2026-11-S"),
                _admin("88.118.9"),
            ],
        )
        for handle, model in zip(
            DEMO_HOSTED, ("Driver seat, heated", "Passenger seat, heated", "Main wiring harness"), strict=True
        )
    ]
    return [(DEMO_CAR, car), (DEMO_PACK, pack), *hosted]


async def _put(
    client: HandleClient,
    node: NodeSpec,
    secret: str,
    handle: str,
    values: list[dict[str, Any]],
    *,
    refresh: tuple[int, ...] = (),
) -> None:
    """Create the record if it is absent. An existing one is left as its administrators made it,
    except the values at ``refresh`` (a delegation's sites), which follow the topology."""
    assert node.prefix is not None
    auth = basic_auth(f"300:{prefix_handle(node.prefix)}", secret)
    reply = await client.put(node.url, handle, values, authorization=auth, params=[("overwrite", "false")])
    if reply.status == 409 and refresh:
        wanted = [v for v in values if v["index"] in refresh]
        params = [("overwrite", "true"), *(("index", str(i)) for i in refresh)]
        reply = await client.put(node.url, handle, wanted, authorization=auth, params=params)
    if reply.status == 401:
        raise HandleError(
            f"{node.name} refused the secret of its operator 300:{prefix_handle(node.prefix)} (HTTP 401): "
            "it was started with another one"
        )
    if reply.status not in (200, 201, 409):
        raise HandleError(f"{node.name} refused {handle}: HTTP {reply.status} {reply.body.get('message', '')}")


def _owner(topology: Topology, handle: str) -> NodeSpec:
    prefix = handle.split("/", 1)[0]
    for node in topology.primaries():
        if prefix == node.prefix or prefix in node.hosts:
            return node
    raise HandleError(f"no node of the topology serves {handle}")


async def register_topology(
    client: HandleClient, topology: Topology, secrets: dict[str, str], *, demo: bool = True
) -> list[Seeded]:
    """Register every delegation and hosted prefix with the operators' credentials, then the demo data."""
    done: list[Seeded] = []
    for child in topology.primaries():
        parent = topology.parent_of(child)
        if parent is not None and child.prefix is not None:
            handle = prefix_handle(child.prefix)
            values = delegation_values(topology, child, parent)
            sites = tuple(v["index"] for v in values if is_site_type(v["type"]))
            await _put(client, parent, secrets[parent.name], handle, values, refresh=sites)
            done.append(Seeded(parent.name, handle, f"delegation to {child.name}"))
        for hosted in child.hosts:
            handle = prefix_handle(hosted)
            await _put(client, child, secrets[child.name], handle, hosted_values(child, hosted))
            done.append(Seeded(child.name, handle, "hosted prefix"))
    if demo:
        for handle, values in demo_records():
            try:
                owner = _owner(topology, handle)
            except HandleError:
                continue  # a custom topology without that enterprise: skip its demo data
            await _put(client, owner, secrets[owner.name], handle, values)
            done.append(Seeded(owner.name, handle, "demo identifier"))
    return done
