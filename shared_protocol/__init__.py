"""Splatsmith's wire contract, importable without torch or bpy (msgpack + numpy + pyzmq).

- :mod:`shared_protocol.messages`: message types, error codes and their validation;
- :mod:`shared_protocol.codec`: multipart framing (msgpack header + raw array frames);
- :mod:`shared_protocol.client`: the non-blocking DEALER client;
- :mod:`shared_protocol.views`: several reference images' views (named views, angle ranges, the
  ``PATH@VIEW`` syntax), read by the CLI, the add-on and the backend's specifications.
"""
from .codec import DEFAULT_LIMITS, DTYPE_WHITELIST, PROTOCOL_VERSION, Limits, ProtocolError, decode, encode

__all__ = ["DEFAULT_LIMITS", "DTYPE_WHITELIST", "PROTOCOL_VERSION", "Limits", "ProtocolError", "decode", "encode"]
__version__ = "0.1.0"
