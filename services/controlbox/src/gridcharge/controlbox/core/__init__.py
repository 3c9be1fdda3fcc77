"""Pure core of the control-box service: the dimming state machine and the statutory minimum."""
