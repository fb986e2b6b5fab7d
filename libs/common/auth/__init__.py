"""Who is calling: API keys, JWT bearer tokens and signed SSE stream tokens, resolved to a `Principal`.

The gateway and the progress service both authenticate (the progress service can be reached directly, as
docker-compose's nginx does for SSE), so the checks live here, once.
"""

from libs.common.auth.apikeys import NewApiKey, generate_api_key, hash_api_key, parse_api_key
from libs.common.auth.authenticator import Authenticator
from libs.common.auth.principal import ANONYMOUS, Principal, Scope
from libs.common.auth.tokens import StreamClaims, StreamTokens

__all__ = [
    "ANONYMOUS",
    "Authenticator",
    "NewApiKey",
    "Principal",
    "Scope",
    "StreamClaims",
    "StreamTokens",
    "generate_api_key",
    "hash_api_key",
    "parse_api_key",
]
