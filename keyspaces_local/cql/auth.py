"""Cassandra's PasswordAuthenticator as the wire server offers it.

The driver's `PlainTextAuthProvider` answers AUTHENTICATE with one SASL PLAIN
token, `\\0user\\0password`; a match against the configured credentials ends
the exchange with AUTH_SUCCESS, anything else is a bad-credentials error.
"""

from __future__ import annotations

import hmac
from typing import Final

from keyspaces_local.cql.api import BadCredentials

AUTHENTICATOR_CLASS: Final = "org.apache.cassandra.auth.PasswordAuthenticator"


class PasswordAuthenticator:
    """Checks SASL PLAIN tokens against a fixed map of user name → password."""

    name: Final = AUTHENTICATOR_CLASS

    def __init__(self, credentials: dict[str, str]) -> None:
        self._credentials = dict(credentials)

    def authenticate(self, token: bytes | None) -> str:
        """The user name the token proves, or `BadCredentials`."""
        user, password = _split_plain_token(token)
        expected = self._credentials.get(user)
        # compare even for unknown users, so timing does not tell which names exist
        ok = hmac.compare_digest(password.encode("utf-8"), (expected or "").encode("utf-8"))
        if expected is None or not ok:
            raise BadCredentials(f"Provided username {user} and/or password are incorrect")
        return user


def _split_plain_token(token: bytes | None) -> tuple[str, str]:
    # SASL PLAIN: [authzid] \0 authcid \0 password; the driver leaves authzid empty
    parts = (token or b"").split(b"\x00")
    if len(parts) != 3:
        raise BadCredentials("Authentication token is not a SASL PLAIN \\0user\\0password token")
    try:
        return parts[1].decode("utf-8"), parts[2].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadCredentials("Authentication token is not valid UTF-8") from exc
