"""Which pixelfeed servers a Ray actor talks to: location lists, DNS expansion, node affinity.

Pure functions, no Ray calls: :func:`parse_locations` normalises the
``locations`` argument or ``$PIXELFEED_LOCATIONS``, :func:`expand_locations`
turns a name resolving to several addresses (a Kubernetes headless Service)
into one location per address, and :func:`choose_locations` orders them for
one actor (same-node servers first, round-robin by actor index).
"""

from __future__ import annotations

import os
import socket
from typing import Callable, List, Mapping, Optional, Sequence, Union
from urllib.parse import urlparse

__all__ = ["LOCATIONS_ENV", "parse_locations", "expand_locations", "choose_locations"]

#: Environment variable read when no ``locations`` argument is given.
LOCATIONS_ENV = "PIXELFEED_LOCATIONS"

_LOOPBACK = {"127.0.0.1", "::1", "localhost"}


def parse_locations(
    value: Union[None, str, Sequence[str]] = None, env: Optional[Mapping[str, str]] = None
) -> List[str]:
    """Normalise a location list: ``None`` reads ``$PIXELFEED_LOCATIONS``.

    A string is split on commas and whitespace; ``host:port`` becomes
    ``grpc://host:port``. Order is kept and duplicates removed. Raises
    ``ValueError`` when nothing is left, naming where it looked.
    """
    source = "the locations argument"
    if value is None:
        value = (env if env is not None else os.environ).get(LOCATIONS_ENV, "")
        source = f"${LOCATIONS_ENV}"
    items = value.replace(",", " ").split() if isinstance(value, str) else [str(v).strip() for v in value]
    out: List[str] = []
    for item in items:
        if not item:
            continue
        loc = item if "://" in item else "grpc://" + item
        if loc not in out:
            out.append(loc)
    if not out:
        raise ValueError(f"no pixelfeed server locations in {source} (e.g. grpc://10.0.0.5:8815)")
    return out


def _split(location: str) -> "tuple[str, str, int]":
    """``(scheme, host, port)`` of a ``grpc[+tls|+tcp]://host:port`` location."""
    u = urlparse(location)
    if not u.hostname or not u.port:
        raise ValueError(f"location {location!r} needs a host and a port")
    return u.scheme, u.hostname, u.port


def _resolve(host: str) -> List[str]:
    """Every address ``host`` resolves to (sorted, so all actors agree on the order)."""
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except socket.gaierror:
        return []
    return sorted({info[4][0] for info in infos})


def expand_locations(
    locations: Sequence[str], resolve: Callable[[str], List[str]] = _resolve
) -> List["tuple[str, Optional[str]]"]:
    """Expand names into one location per address: ``[(location, tls_hostname)]``.

    A headless Service name resolves to every ready pod, so this is the
    client-side round robin over them. For ``grpc+tls`` the original name is
    kept as the TLS host name to verify (the certificate names the Service,
    not the pod IP). IP literals and names that do not resolve stay as given.
    """
    out: List["tuple[str, Optional[str]]"] = []
    for loc in locations:
        scheme, host, port = _split(loc)
        addrs = [] if _is_ip(host) else resolve(host)
        if not addrs:
            out.append((loc, None))
            continue
        for a in addrs:
            shown = f"[{a}]" if ":" in a else a
            out.append((f"{scheme}://{shown}:{port}", host if "tls" in scheme else None))
    return out


def _is_ip(host: str) -> bool:
    """Whether ``host`` is an IPv4/IPv6 literal."""
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
            return True
        except OSError:
            pass
    return False


def choose_locations(locations: Sequence[str], node_ip: str, index: int) -> List[str]:
    """Order ``locations`` for the actor with round-robin ``index`` on ``node_ip``.

    The first entry is the actor's server: among the locations on the same
    node (host equal to ``node_ip``, or loopback) if any, else among all,
    picked by ``index`` modulo their count. The others follow (same-node ones
    first, each group rotated by ``index``) as fail-over targets.
    """
    if not locations:
        raise ValueError("no locations to choose from")

    def local(loc: str) -> bool:
        """Whether ``loc`` is served from this actor's node."""
        host = _split(loc)[1]
        return host == node_ip or host in _LOOPBACK or host.startswith("127.")

    near = [loc for loc in locations if local(loc)]
    far = [loc for loc in locations if not local(loc)]

    def rotated(group: List[str]) -> List[str]:
        """``group`` starting at ``index``."""
        if not group:
            return []
        k = index % len(group)
        return group[k:] + group[:k]

    return rotated(near) + rotated(far)

