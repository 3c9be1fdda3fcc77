"""Pure gateway logic: OCPP-J framing and error rules, OCPP ⇄ domain mapping, profile validation.

Nothing here does I/O, so it is unit-tested without sockets, bus or store.
"""
