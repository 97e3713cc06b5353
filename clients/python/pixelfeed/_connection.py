"""How to reach a pixelfeed server: location, token, TLS settings, call options.

A :class:`Connection` holds settings only, no open socket, so it can be
copied, pickled (into Ray tasks, DataLoader workers) and used to open a
Flight client to *any* location with the same credentials: the server it
was made for, or a peer named in a shard endpoint. :class:`pixelfeed.Client`
and :mod:`pixelfeed.datasets` both build on it.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple, Union

import pyarrow.flight as flight

__all__ = ["Connection", "TRANSIENT_ERRORS", "location_uri", "normalize_location", "unix_socket_options"]

#: Flight errors after which the same request is worth sending to another
#: server: the server is gone or overloaded, not the request wrong.
TRANSIENT_ERRORS = (flight.FlightUnavailableError, flight.FlightTimedOutError, flight.FlightCancelledError)

LocationLike = Union[str, flight.Location]


def normalize_location(location: LocationLike) -> LocationLike:
    """Accept what ``pixelfeed serve`` prints as ``pixelfeed listening on ADDR``.

    ``host:port`` becomes ``grpc://host:port``; a Unix socket,
    ``unix:///path`` (gRPC's name for it), becomes ``grpc+unix:///path``,
    the scheme pyarrow dials. Anything else is passed through.
    """
    if isinstance(location, str):
        if location.startswith("unix://"):
            return "grpc+" + location
        if "://" not in location:
            return "grpc://" + location
    return location


#: The HTTP/2 ``:authority`` sent over a Unix socket. gRPC's C core sends
#: the socket's path there, which is not a valid authority (RFC 9113 8.3.1);
#: the server's HTTP/2 layer (h2, under tonic) refuses such a request with
#: ``RST_STREAM PROTOCOL_ERROR`` (hyperium/h2 PR 487). ``localhost`` is what
#: grpc-go and tonic's own clients send for Unix sockets.
UNIX_SOCKET_AUTHORITY = "localhost"


def location_uri(location: Any) -> str:
    """A location (``str``, ``flight.Location``) as its URI text."""
    uri = getattr(location, "uri", location)
    return uri.decode() if isinstance(uri, bytes) else str(uri)


def unix_socket_options(location: LocationLike, flight_kwargs: Dict[str, Any]) -> Dict[str, Any]:
    """``flight_kwargs``, plus ``grpc.default_authority=localhost`` for a ``grpc+unix://`` location.

    A caller's own ``grpc.default_authority`` in ``generic_options`` wins.
    """
    if not location_uri(location).startswith("grpc+unix://"):
        return flight_kwargs
    generic = list(flight_kwargs.get("generic_options") or [])
    if not any(key == "grpc.default_authority" for key, _ in generic):
        generic.append(("grpc.default_authority", UNIX_SOCKET_AUTHORITY))
    return {**flight_kwargs, "generic_options": generic}


class Connection:
    """Where a server is and how to talk to it; opens Flight clients with those settings.

    Settings (all optional but ``location``):

    - ``timeout``: default deadline of every call, in seconds (``None``: none);
    - ``token``: sent as ``authorization: Bearer <token>`` on every call (the
      server's ``--auth-token-file``);
    - ``ca_file``: a PEM file of CA certificates to trust for ``grpc+tls://``,
      read once into ``tls_root_certs``;
    - ``tls_root_certs``, ``cert_chain`` and ``private_key`` (mutual TLS),
      ``override_hostname``, ``disable_server_verification``, and any other
      keyword of ``pyarrow.flight.FlightClient`` (``middleware``,
      ``generic_options``, ...): given to every client :meth:`open` makes.

    :meth:`open` applies every one of them to whatever location it is given,
    ``override_hostname`` included (the name a shared certificate carries,
    e.g. a Kubernetes Service's).
    """

    def __init__(
        self,
        location: LocationLike,
        *,
        timeout: Optional[float] = None,
        token: Optional[str] = None,
        ca_file: Optional[str] = None,
        **flight_kwargs: Any,
    ) -> None:
        """Remember the settings; nothing is opened until :meth:`open`."""
        self.location = normalize_location(location)
        self.timeout = timeout
        self._headers: List[Tuple[bytes, bytes]] = (
            [(b"authorization", b"Bearer " + token.encode())] if token else []
        )
        if ca_file is not None:
            with open(ca_file, "rb") as f:
                flight_kwargs["tls_root_certs"] = f.read()
        self._flight_kwargs: Dict[str, Any] = flight_kwargs

    def __repr__(self) -> str:
        """Show the location and which credentials are set (never their values)."""
        shown = [repr(self.location)]
        if self._headers:
            shown.append("token=...")
        shown += [f"{k}=..." for k in sorted(self._flight_kwargs)]
        return f"pixelfeed.Connection({', '.join(shown)})"

    @property
    def headers(self) -> List[Tuple[bytes, bytes]]:
        """The headers sent on every call (the bearer token, if any)."""
        return list(self._headers)

    @property
    def flight_kwargs(self) -> Dict[str, Any]:
        """The keyword arguments every ``FlightClient`` is opened with (TLS settings, ...)."""
        return dict(self._flight_kwargs)

    def options(self, timeout: Optional[float] = None) -> flight.FlightCallOptions:
        """Call options: the given deadline (else the default ``timeout``) and the token header."""
        t = self.timeout if timeout is None else timeout
        return flight.FlightCallOptions(timeout=t, headers=self._headers)

    def open(self, location: Optional[LocationLike] = None) -> flight.FlightClient:
        """A new ``FlightClient`` to ``location`` (default: this connection's) with these TLS settings.

        The caller closes it. Calls on it need :meth:`options` for the token.
        """
        target = self.location if location is None else normalize_location(location)
        return flight.FlightClient(target, **unix_socket_options(target, self._flight_kwargs))
