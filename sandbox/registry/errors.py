"""RegistryError: one line and the exit status `pysandbox image pull/push` ends with (docs/images.md)."""
from __future__ import annotations

BAD_INPUT = 2         # an invalid reference, an unknown local image, an image the store refuses
UNAUTHORIZED = 3      # 401/403: no or wrong credentials, or no access to the repository
NOT_FOUND = 4         # 404: no such repository, tag, manifest or blob
INTEGRITY = 5         # a digest that does not match, a size or count beyond a bound, malformed metadata
NETWORK = 6           # cannot connect, TLS verification failed, timeout, an unexpected reply


class RegistryError(Exception):
    def __init__(self, message: str, code: int = NETWORK):
        super().__init__(message)
        self.code = code
