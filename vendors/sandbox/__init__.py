"""In-memory simulators of the vendors' server APIs."""

import importlib.util
import sys

# httpx's ASGI transport, which talks to a sandbox in-process, imports
# sniffio twice a request to tell trio from asyncio. Where sniffio is not
# installed each failed import searches sys.path again (about 50 µs each);
# marked absent, it fails at once. An installed sniffio is left alone.
if "sniffio" not in sys.modules and importlib.util.find_spec("sniffio") is None:
    sys.modules["sniffio"] = None  # type: ignore[assignment]  # None in sys.modules is how an import is marked absent
