"""HeadSculpt engine: text-to-3D head avatars on a head prior.

Importing this package is cheap: torch, diffusers and the other heavy libraries are imported only by
the modules that use them, so that `headsculpt --help` and the server's startup stay fast.
"""

__version__ = "0.1.0"
# Version of the HTTP API under /v1; the Blender extension refuses an engine with another one.
API_VERSION = 1
