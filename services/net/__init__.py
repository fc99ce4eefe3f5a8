"""Fetching URLs on a caller's behalf (workflow_url, input images, model downloads) safely.

target   parse a URL once into a typed `Target`; every request is built from it
policy   which addresses a fetch may reach (`FETCH_ALLOW_HOSTS`, `FETCH_ALLOW_PRIVATE`)
aio      aiohttp glue: a resolver that applies the policy and pins the checked addresses
pinned   requests/urllib3 glue: connections that connect to the checked address

The rule the pieces share: the host that is checked is the host that is connected to. A URL is
parsed by one parser (`target.parse_target`), the policy resolves its host once and refuses any
forbidden address, and the connection goes to exactly the addresses that were checked (no
second lookup, so DNS rebinding cannot swap them), while TLS and the Host header keep the name.
"""
