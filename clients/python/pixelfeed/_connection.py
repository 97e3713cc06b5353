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

__all__ = ["Connection", "TRANSIENT_ERRORS", "normalize_location"]

#: Flight errors after which the same request is worth sending to another
#: server: the server is gone or overloaded, not the request wrong.
TRANSIENT_ERRORS = (flight.FlightUnavailableError, flight.FlightTimedOutError, flight.FlightCancelledError)

LocationLike = Union[str, flight.Location]


def normalize_location(location: LocationLike) -> LocationLike:
    """Accept ``host:port`` as shorthand for ``grpc://host:port``."""
    if isinstance(location, str) and "://" not in location:
        return "grpc://" + location
    return location


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
        return flight.FlightClient(target, **self._flight_kwargs)
