"""Grid-operator signals: an OpenADR 3 VEN that turns a utility's capacity-limit events into ExternalLimits."""
