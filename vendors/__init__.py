"""imshift.vendors: signed async clients for four IM vendors' server APIs, and
a sandbox (an in-memory ASGI simulator) of each. Imports nothing else of imshift."""

from .vocabulary import FieldRule, Group, Message, Operation, Outcome, Profile, Result, Unsupported, VendorRules
from .client import VendorClient

__all__ = ["FieldRule", "Group", "Message", "Operation", "Outcome", "Profile", "Result",
           "Unsupported", "VendorClient", "VendorRules"]
