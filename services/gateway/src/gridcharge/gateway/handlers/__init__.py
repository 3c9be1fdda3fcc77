"""OCPP `ChargePoint` subclasses per protocol version; `@on(Action)` handlers translate to bus events."""
